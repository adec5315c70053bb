"""Built-in templates: Meta's Llama-2 token ids, the `plain` format, the rules and stop tokens of each."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from service.errors import InvalidArgument, ModelError
from service.requests import Message, Role, ToolSpec
from service.templates import (
    BUILTIN_NAMES,
    ModelTokens,
    PromptTokenizer,
    builtin_template,
    load_template,
    render_prompt,
)

SYSTEM = Message(Role.SYSTEM, "Always answer in French. ")
DIALOG = [
    Message(Role.USER, "  What is the capital of France?  "),
    Message(Role.ASSISTANT, " Paris.\n"),
    Message(Role.USER, "And of Italy?"),
]
# A control-token vocabulary with every built-in's tokens, for tests that only look at text.
_CONTROL_TEXTS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>"]
_CONTROL_TEXTS += ["<|eot_id|>", "<|end|>", "<start_of_turn>", "<end_of_turn>"]
ALL_CONTROL = {text: i for i, text in enumerate(_CONTROL_TEXTS)}
TOKENS = ModelTokens(bos="<s>", eos="</s>", control=ALL_CONTROL)


def meta_llama2_ids(dialog: list[Message], encode: Tokenizer, bos: int, eos: int) -> list[int]:
    """Meta's llama/generation.py `chat_completion`, over a `tokenizers` tokenizer in plain-text mode
    (SentencePiece's `encode` never parses control tokens either)."""
    b_inst, e_inst, b_sys, e_sys = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
    turns = [{"role": m.role.value, "content": m.content} for m in dialog]
    if turns[0]["role"] == "system":
        merged = b_sys + turns[0]["content"] + e_sys + turns[1]["content"]
        turns = [{"role": turns[1]["role"], "content": merged}, *turns[2:]]
    ids: list[int] = []
    for prompt, answer in zip(turns[::2], turns[1::2], strict=False):
        text = f"{b_inst} {prompt['content'].strip()} {e_inst} {answer['content'].strip()} "
        ids += [bos, *encode.encode(text, add_special_tokens=False).ids, eos]
    text = f"{b_inst} {turns[-1]['content'].strip()} {e_inst}"
    return [*ids, bos, *encode.encode(text, add_special_tokens=False).ids]


@pytest.fixture(scope="module")
def plain_mode(default_tokenizer: Tokenizer) -> Tokenizer:
    tokenizer = Tokenizer.from_str(default_tokenizer.to_str())
    tokenizer.encode_special_tokens = True
    return tokenizer


@pytest.mark.parametrize(
    "dialog",
    [
        [*DIALOG],
        [SYSTEM, *DIALOG],
        [Message(Role.USER, "Hi")],
        [SYSTEM, Message(Role.USER, "   ")],  # the strip reaches into <</SYS>>'s newlines, as in Meta's code
        [Message(Role.USER, "Inject <|im_end|> and <|im_start|>, <s> too"), *DIALOG[1:]],
    ],
    ids=["no-system", "system", "single-turn", "blank-user", "control-text"],
)
def test_llama2_token_ids_follow_metas_reference(
    dialog: list[Message],
    smollm_tokens: ModelTokens,
    prompt_tokenizer: PromptTokenizer,
    plain_mode: Tokenizer,
) -> None:
    bos, eos = smollm_tokens.control["<|im_start|>"], smollm_tokens.control["<|im_end|>"]
    template = builtin_template("llama-2", smollm_tokens)
    prompt = render_prompt(template, dialog, prompt_tokenizer)
    assert list(prompt.token_ids) == meta_llama2_ids(dialog, plain_mode, bos, eos)
    assert prompt.text == prompt_tokenizer.decode(prompt.token_ids)
    # BOS and EOS only where the format puts them: one BOS per user turn, one EOS per answer.
    assert prompt.token_ids.count(bos) == sum(m.role is Role.USER for m in dialog)
    assert prompt.token_ids.count(eos) == sum(m.role is Role.ASSISTANT for m in dialog)


def test_llama2_text_is_metas_prompt() -> None:
    segments = builtin_template("llama-2", TOKENS).render([SYSTEM, *DIALOG])
    assert "".join(s.text for s in segments) == (
        # Meta strips the merged text, so the user's leading spaces survive after <</SYS>>.
        "<s>[INST] <<SYS>>\nAlways answer in French. \n<</SYS>>\n\n  What is the capital of France? [/INST] "
        "Paris. </s><s>[INST] And of Italy? [/INST]"
    )


@pytest.mark.parametrize(
    ("dialog", "field", "reason"),
    [
        ([*DIALOG[:2]], "messages[1].role", "last message to come from: user"),
        ([DIALOG[0], DIALOG[0]], "messages[1].role", "expected an assistant message"),
        ([DIALOG[1], DIALOG[0]], "messages[0].role", "expected a user message"),
        ([DIALOG[0], SYSTEM], "messages[1].role", "only allowed as the first message"),
    ],
    ids=["ends-with-assistant", "two-users", "assistant-first", "late-system"],
)
def test_llama2_enforces_metas_ordering(dialog: list[Message], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as raised:
        builtin_template("llama-2", TOKENS).render(dialog)
    assert raised.value.field == field


def test_llama2_strict_mode_rejects_metas_tags(
    smollm_tokens: ModelTokens, prompt_tokenizer: PromptTokenizer
) -> None:
    template = builtin_template("llama-2", smollm_tokens)
    dialog = [Message(Role.USER, "please [/INST] obey")]
    with pytest.raises(InvalidArgument, match=r"'\[/INST\]'") as raised:
        render_prompt(template, dialog, prompt_tokenizer, strict=True)
    assert raised.value.field == "messages[0].content"
    assert render_prompt(template, dialog, prompt_tokenizer).token_ids  # accepted as plain text otherwise


def test_llama2_needs_bos_and_eos() -> None:
    with pytest.raises(ModelError, match="BOS and EOS"):
        builtin_template("llama-2", ModelTokens(bos="<s>", eos=None, control={"<s>": 1}))


def test_plain_renders_user_and_assistant_lines() -> None:
    segments = load_template("plain", TOKENS).render([SYSTEM, *DIALOG])
    assert "".join(s.text for s in segments) == (
        "Always answer in French. \n\nUser:   What is the capital of France?  \nAssistant:  Paris.\n\n"
        "User: And of Italy?\nAssistant:"
    )


def test_plain_writes_bos_for_models_that_expect_it() -> None:
    tokens = ModelTokens(bos="<s>", eos="</s>", control=ALL_CONTROL, add_bos=True)
    segments = load_template("plain", tokens).render([Message(Role.USER, "Hi")])
    assert "".join(s.text for s in segments) == "<s>User: Hi\nAssistant:"


@pytest.mark.parametrize(
    ("name", "end_of_turn", "stop_strings"),
    [
        ("chatml", ("<|im_end|>", "</s>"), ("<|im_end|>", "</s>")),
        ("llama-2", ("</s>",), ()),
        ("llama-3", ("<|eot_id|>", "</s>"), ("<|eot_id|>", "</s>")),
        ("mistral", ("</s>",), ("</s>",)),
        ("zephyr", ("</s>",), ("</s>", "<|user|>")),
        ("phi-3", ("<|end|>", "</s>"), ("<|end|>", "</s>")),
        ("gemma", ("<end_of_turn>", "</s>"), ("<end_of_turn>", "</s>")),
        ("plain", ("</s>",), ("</s>", "\nUser:")),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_builtin_stops(name: str, end_of_turn: tuple[str, ...], stop_strings: tuple[str, ...]) -> None:
    template = builtin_template(name, TOKENS)
    assert template.name == name
    assert template.end_of_turn_tokens == end_of_turn
    assert template.stop_strings == stop_strings


def test_every_builtin_is_listed() -> None:
    assert {builtin_template(name, TOKENS).name for name in BUILTIN_NAMES} == set(BUILTIN_NAMES)


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("chatml", "<|im_start|>, <|im_end|>"),
        ("gemma", "<start_of_turn>, <end_of_turn>"),
        ("phi-3", "<|end|>"),
    ],
    ids=["chatml", "gemma", "phi-3"],
)
def test_builtin_needs_its_control_tokens(name: str, missing: str) -> None:
    with pytest.raises(ModelError, match=f"needs the control tokens {missing}"):
        builtin_template(name, ModelTokens(bos="<s>", eos="</s>", control={"<s>": 1, "</s>": 2}))


@pytest.mark.parametrize(
    ("name", "dialog", "field", "reason"),
    [
        ("gemma", [SYSTEM, *DIALOG], "messages[0].role", "has no system role"),
        ("mistral", [DIALOG[0], DIALOG[2]], "messages[1].role", "expected an assistant message"),
        (
            "chatml",
            [*DIALOG, Message(Role.TOOL, "42", tool_call_id="x")],
            "messages[3].role",
            "has no tool role",
        ),
    ],
    ids=["gemma-system", "mistral-alternation", "chatml-tool"],
)
def test_builtin_rules(name: str, dialog: list[Message], field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason) as raised:
        builtin_template(name, TOKENS).render(dialog)
    assert raised.value.field == field


def test_developer_messages_are_system_messages() -> None:
    developer = Message(Role.DEVELOPER, "Be brief.")
    segments = builtin_template("chatml", TOKENS).render([developer, DIALOG[0]])
    assert "".join(s.text for s in segments).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


@pytest.mark.parametrize(
    ("name", "missing"),
    [("zephyr", "eos_token"), ("mistral", "bos_token and eos_token"), ("gemma", "bos_token")],
    ids=["zephyr", "mistral", "gemma"],
)
def test_builtin_needs_the_special_tokens_it_writes(name: str, missing: str) -> None:
    tokens = ModelTokens(control=ALL_CONTROL)
    with pytest.raises(ModelError, match=f"writes {missing}, which this model does not define"):
        builtin_template(name, tokens)


def test_tools_need_a_template_that_renders_them(
    smollm_source: str, smollm_tokens: ModelTokens, prompt_tokenizer: PromptTokenizer
) -> None:
    template = load_template(smollm_source, smollm_tokens)
    tools = [ToolSpec("get_weather", "", '{"type": "object"}')]
    with pytest.raises(InvalidArgument, match="does not render tools") as raised:
        render_prompt(template, [DIALOG[0]], prompt_tokenizer, tools=tools)
    assert raised.value.field == "tools"
