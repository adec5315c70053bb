"""Continuing a final assistant message (prefill), as transformers' `continue_final_message` does."""

from __future__ import annotations

import pytest

from service.errors import InvalidArgument
from service.requests import Message, Role
from service.templates import JinjaChatTemplate, ModelTokens, PromptTokenizer, render_prompt
from service.templates.jinja_env import CompiledTemplate

ASK = Message(Role.USER, "Name a colour.")


def test_final_assistant_message_is_continued(
    smollm_template: JinjaChatTemplate, prompt_tokenizer: PromptTokenizer
) -> None:
    prompt = render_prompt(smollm_template, [ASK, Message(Role.ASSISTANT, "The colour is")], prompt_tokenizer)
    assert prompt.text.endswith(
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nThe colour is"
    )
    assert prompt.segments[-1] == prompt.segments[-1].__class__("The colour is", field="messages[1].content")


def test_continuation_can_be_turned_off(
    smollm_template: JinjaChatTemplate, prompt_tokenizer: PromptTokenizer
) -> None:
    messages = [ASK, Message(Role.ASSISTANT, "Blue.")]
    closed = render_prompt(smollm_template, messages, prompt_tokenizer, continue_final_message=False)
    assert closed.text.endswith("Blue.<|im_end|>\n<|im_start|>assistant\n")
    history = render_prompt(
        smollm_template, messages, prompt_tokenizer, continue_final_message=False, add_generation_prompt=False
    )
    assert history.text.endswith("Blue.<|im_end|>\n")


def test_trailing_whitespace_trimmed_by_the_template_is_cut(smollm_tokens: ModelTokens) -> None:
    source = "{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}</s>{% endfor %}"
    template = JinjaChatTemplate(CompiledTemplate(source, "test"), smollm_tokens, name="trim")
    segments = template.render([ASK, Message(Role.ASSISTANT, "  Red and  ")])
    assert "".join(s.text for s in segments) == "[user] Name a colour.</s>[assistant] Red and"


def test_template_that_drops_the_final_message_cannot_continue(smollm_tokens: ModelTokens) -> None:
    source = "{% for m in messages if m.role == 'user' %}{{ m.content }}{% endfor %}"
    template = JinjaChatTemplate(CompiledTemplate(source, "test"), smollm_tokens, name="drop")
    with pytest.raises(InvalidArgument, match="drops part of the final assistant message") as raised:
        template.render([ASK, Message(Role.ASSISTANT, "Green")])
    assert raised.value.field == "messages[1].content"


def test_empty_final_assistant_message_is_refused(smollm_template: JinjaChatTemplate) -> None:
    with pytest.raises(InvalidArgument, match="needs content or tool calls") as raised:
        smollm_template.render([ASK, Message(Role.ASSISTANT, "")])
    assert raised.value.field == "messages[1].content"
