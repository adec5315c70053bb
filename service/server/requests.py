"""What the server's handlers work with: requests as plain dataclasses, converted from protobuf in convert/.

Sampling parameters arrive as `SamplingOverrides`: only the fields the client set, by SamplingParams field
name, so that a session can layer a turn's overrides over its defaults over the server's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from service.requests import Message, ToolSpec
from service.sampling import SamplingParams

SamplingOverrides = Mapping[str, Any]  # SamplingParams field name -> value the client set
NO_OVERRIDES: SamplingOverrides = MappingProxyType({})


def sampling_with(*layers: SamplingOverrides, base: SamplingParams | None = None) -> SamplingParams:
    """SamplingParams with each layer's fields set over the previous ones (later layers win)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return replace(base or SamplingParams(), **merged)


@dataclass(frozen=True)
class PromptOptions:
    """How a conversation becomes a prompt (ChatTemplateOptions, tools and truncation)."""

    tools: tuple[ToolSpec, ...] = ()
    truncate: bool = False  # TRUNCATION_DROP_OLDEST
    add_generation_prompt: bool | None = None  # None: unless the last message is the assistant's
    continue_final_message: bool | None = None  # None: when the last message is the assistant's


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    sampling: SamplingOverrides
    n: int = 1
    prompt: PromptOptions = PromptOptions()
    user: str = ""


@dataclass(frozen=True)
class RenderRequest:
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    prompt: PromptOptions = PromptOptions()


@dataclass(frozen=True)
class CompletionRequest:
    """A raw prompt: text (tokenized per `parse_special_tokens`, BOS per `add_bos`) or token ids."""

    model: str
    text: str
    token_ids: tuple[int, ...]
    sampling: SamplingOverrides
    n: int = 1
    parse_special_tokens: bool = True
    add_bos: bool | None = None  # None: the tokenizer's default
    user: str = ""


@dataclass(frozen=True)
class TokenizeRequest:
    model: str
    text: str
    parse_special_tokens: bool
    add_special_tokens: bool


@dataclass(frozen=True)
class DetokenizeRequest:
    model: str
    token_ids: tuple[int, ...]
    skip_special_tokens: bool


@dataclass(frozen=True)
class SessionOpening:
    """A session's `start`: everything a turn inherits."""

    model: str = ""
    history: tuple[Message, ...] = ()  # system_prompt (as a system message) first, then `history`
    defaults: SamplingOverrides = field(default_factory=lambda: NO_OVERRIDES)
    prompt: PromptOptions = PromptOptions()


@dataclass(frozen=True)
class SessionTurn:
    request_id: str  # empty: the server names the turn
    messages: tuple[Message, ...]
    overrides: SamplingOverrides = field(default_factory=lambda: NO_OVERRIDES)


@dataclass(frozen=True)
class SessionCancel:
    request_id: str  # empty: the running turn
