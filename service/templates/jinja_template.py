"""A chat template written in Jinja (a model card's `chat_template`, a .jinja file, or a built-in), rendered
exactly as transformers' `apply_chat_template` renders it, then split into template and client segments."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from service.errors import InvalidArgument
from service.requests import Message, Role, ToolSpec
from service.templates.inputs import Marker, TextHook, as_is, template_messages, template_tools
from service.templates.jinja_env import CompiledTemplate
from service.templates.splitting import (
    CONTINUE_TAG,
    continuation_cut,
    control_token_pattern,
    cut_segments,
    split_rendering,
    whole_rendering,
)
from service.templates.types import (
    ChatTemplate,
    ModelTokens,
    Segment,
    TemplateRules,
    resolve_continuation,
)
from service.templates.validation import developer_as_system, validate_conversation, validate_tools

logger = logging.getLogger(__name__)

# Control tokens that end a turn in the common chat formats; a template that writes one of them (and whose
# model has it as a control token) stops generation on it.
KNOWN_TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>")


def default_rules(compiled: CompiledTemplate) -> TemplateRules:
    """Rules for a template Parley knows nothing else about: the template enforces its own orderings."""
    roles = {Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL}
    if "developer" in compiled.source:
        roles.add(Role.DEVELOPER)
    return TemplateRules(roles=frozenset(roles), tools="tools" in compiled.variables)


class JinjaChatTemplate(ChatTemplate):
    def __init__(
        self,
        compiled: CompiledTemplate,
        tokens: ModelTokens,
        *,
        name: str,
        rules: TemplateRules | None = None,
        stop_strings: tuple[str, ...] | None = None,
        end_of_turn_tokens: tuple[str, ...] | None = None,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.name = name
        self.rules = rules if rules is not None else default_rules(compiled)
        if end_of_turn_tokens is None:
            ends = [tokens.eos] if tokens.eos is not None else []
            ends += [text for text in KNOWN_TURN_ENDS if text in compiled.source and text in tokens.control]
            end_of_turn_tokens = tuple(dict.fromkeys(ends))
        self.end_of_turn_tokens = end_of_turn_tokens
        self.stop_strings = stop_strings if stop_strings is not None else ()
        self.compiled = compiled
        self._variables = tokens.template_variables()
        self._control = control_token_pattern(tokens.control)
        self._now = now
        # A template that never mentions `developer` gets developer messages as system messages (OpenAI's
        # meaning); one that does (gpt-oss) gets them as they are.
        self._developer_as_system = Role.DEVELOPER not in self.rules.roles

    def _context(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        text: TextHook,
        *,
        add_generation_prompt: bool,
        final_suffix: str,
    ) -> dict[str, Any]:
        return {
            **self._variables,
            "messages": template_messages(
                messages,
                text,
                developer_as_system=self._developer_as_system,
                final_content_suffix=final_suffix,
            ),
            "tools": template_tools(tools, text),
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        add_generation_prompt: bool = True,
        continue_final_message: bool | None = None,
    ) -> list[Segment]:
        if self._developer_as_system:
            messages = developer_as_system(messages)
        continuing = resolve_continuation(messages, continue_final_message)
        validate_tools(tools, self.rules, self.name)
        validate_conversation(messages, self.rules, self.name, continue_final=continuing)
        prompt = add_generation_prompt and not continuing  # transformers refuses both at once
        suffix = CONTINUE_TAG if continuing else ""
        instant = self._now()
        real = self.compiled.render(
            self._context(messages, tools, as_is, add_generation_prompt=prompt, final_suffix=suffix),
            instant=instant,
        )
        marker = Marker()
        try:
            marked: str | None = self.compiled.render(
                self._context(messages, tools, marker, add_generation_prompt=prompt, final_suffix=suffix),
                instant=instant,
            )
        except InvalidArgument:
            marked = None  # the template rejects placeholders it accepts real text for (it measures content)
        segments = None if marked is None else split_rendering(marked, real, marker.texts)
        if segments is None:
            logger.debug("template %s: placeholder split failed, checking the whole rendering", self.name)
            segments = whole_rendering(marked, real, marker.texts, self._control)
        if continuing:
            final = f"messages[{len(messages) - 1}].content"
            segments = cut_segments(segments, continuation_cut(real, messages[-1].content, final))
        return segments
