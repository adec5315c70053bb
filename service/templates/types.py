"""The shapes every chat template shares: segments, rendered prompts, the model's tokens and the rules a
template places on a conversation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.requests import Message, Role, ToolSpec


@dataclass(frozen=True)
class Segment:
    """One piece of a rendered prompt.

    `field` is None for text the template wrote (trusted: control-token text in it becomes control tokens);
    otherwise it names the request field the text came from, e.g. `messages[1].content`, and the text is
    tokenized with special-token parsing off. `token_id` is set for a control token a token-level format
    places by id (Meta's Llama-2 BOS/EOS); `text` is then that token's spelling.
    """

    text: str
    field: str | None = None
    token_id: int | None = None

    @property
    def trusted(self) -> bool:
        return self.field is None


@dataclass(frozen=True)
class RenderedPrompt:
    """Exactly what generation is fed: `text` is what `token_ids` decode to."""

    text: str
    token_ids: tuple[int, ...]
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class ModelTokens:
    """The model's special tokens as templates see them (transformers passes the named ones as variables)."""

    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pad: str | None = None
    # Every control token, text -> id. Complete, please: the safety check of templates that transform
    # content (splitting.whole_rendering) looks for exactly these.
    control: Mapping[str, int] = field(default_factory=dict)
    add_bos: bool = False  # the model expects BOS first (only `plain` consults this: the others write it)

    def template_variables(self) -> dict[str, str]:
        named = {"bos_token": self.bos, "eos_token": self.eos, "unk_token": self.unk, "pad_token": self.pad}
        return {name: text for name, text in named.items() if text is not None}

    def id_of(self, text: str | None) -> int | None:
        return None if text is None else self.control.get(text)


ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class TemplateRules:
    """What a template accepts, checked before rendering so that errors name the field (as MLC LLM does)."""

    roles: frozenset[Role] = frozenset({Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL})
    alternate: bool = False  # after an optional system message: user, assistant, user, ... strictly
    final_roles: frozenset[Role] = frozenset({Role.USER, Role.ASSISTANT, Role.TOOL})
    tools: bool = False  # renders tool specs and assistant tool calls


class ChatTemplate(ABC):
    """Turns a conversation into prompt segments.

    `end_of_turn_tokens` are the texts of the control tokens that end the model's turn (generation stops on
    them); `stop_strings` are texts that end it when they appear in the output; `reserved_strings` are extra
    texts that strict mode rejects in message content besides the tokenizer's control tokens. A template
    with `control_by_id` (Meta's token-level formats) places every control token by id, so all of its text
    is encoded as plain text.
    """

    name: str
    rules: TemplateRules
    stop_strings: tuple[str, ...] = ()
    end_of_turn_tokens: tuple[str, ...] = ()
    reserved_strings: tuple[str, ...] = ()
    control_by_id: bool = False

    @abstractmethod
    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        add_generation_prompt: bool = True,
        continue_final_message: bool | None = None,
    ) -> list[Segment]:
        """Validate the conversation and render it.

        `continue_final_message` None means: continue (prefill) exactly when the last message is the
        assistant's; the generation prompt is then left out, as transformers requires.
        """


def resolve_continuation(messages: Sequence[Message], continue_final_message: bool | None) -> bool:
    if continue_final_message is None:
        return bool(messages) and messages[-1].role is Role.ASSISTANT
    return continue_final_message
