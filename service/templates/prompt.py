"""Rendering and tokenizing a conversation: the prompt generation is fed, and the strict-mode check."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import InvalidArgument
from service.requests import Message, ToolSpec
from service.templates.inputs import client_strings
from service.templates.splitting import control_token_pattern
from service.templates.tokenization import PromptTokenizer
from service.templates.types import ChatTemplate, RenderedPrompt


def reject_control_text(
    messages: Sequence[Message], tools: Sequence[ToolSpec], forbidden: Sequence[str], *, template: str
) -> None:
    """Strict mode: refuse client text that spells a control token or a format tag, as Meta's reference
    refuses `[INST]` and `<<SYS>>` in content."""
    pattern = control_token_pattern(forbidden)
    if pattern is None:
        return
    for text in client_strings(messages, tools):
        found = pattern.search(text.value)
        if found is not None:
            raise InvalidArgument(
                text.field,
                f"contains {found.group()!r}, a control token or tag of the '{template}' chat format; this "
                "server rejects such text instead of encoding it as plain text",
            )


def render_prompt(
    template: ChatTemplate,
    messages: Sequence[Message],
    tokenizer: PromptTokenizer,
    *,
    tools: Sequence[ToolSpec] = (),
    add_generation_prompt: bool = True,
    continue_final_message: bool | None = None,
    strict: bool = False,
) -> RenderedPrompt:
    """Render, tokenize and return the prompt generation is fed. `strict` rejects control-token text in
    client strings (InvalidArgument naming the field) instead of encoding it as plain text."""
    segments = template.render(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
    )
    if strict:  # after rendering, which has validated the JSON it reads
        forbidden = (*tokenizer.control_tokens, *template.reserved_strings)
        reject_control_text(messages, tools, forbidden, template=template.name)
    ids = tokenizer.encode(segments, control_by_id=template.control_by_id)
    return RenderedPrompt(text=tokenizer.decode(ids), token_ids=tuple(ids), segments=tuple(segments))
