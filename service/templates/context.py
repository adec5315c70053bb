"""Fitting a conversation into the context window: refuse with both counts, or drop the oldest turns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.errors import InvalidArgument
from service.requests import Message, Role
from service.templates.types import RenderedPrompt


@dataclass(frozen=True)
class FittedPrompt:
    prompt: RenderedPrompt
    messages: tuple[Message, ...]  # the conversation that was rendered
    dropped_messages: int  # oldest messages left out to make it fit (0 when it fit as sent)


def check_budget(prompt_tokens: int, *, context_window: int, reserved_tokens: int) -> None:
    """InvalidArgument unless the prompt plus `reserved_tokens` (the request's max_tokens) fit the window."""
    if reserved_tokens >= context_window:
        raise InvalidArgument(
            "max_tokens",
            f"{reserved_tokens} leaves no room for the prompt in the {context_window}-token context window",
        )
    if prompt_tokens + reserved_tokens > context_window:
        raise InvalidArgument(
            "messages",
            f"the prompt is {prompt_tokens} tokens and {reserved_tokens} more are reserved for max_tokens, "
            f"but the context window is {context_window} tokens "
            f"({prompt_tokens + reserved_tokens - context_window} over)",
        )


def _turn_starts(messages: Sequence[Message]) -> list[int]:
    """Indices where a turn (a user message and the replies and tool results after it) begins."""
    return [i for i, message in enumerate(messages) if message.role is Role.USER]


def fit_to_context(
    messages: Sequence[Message],
    render: Callable[[Sequence[Message]], RenderedPrompt],
    *,
    context_window: int,
    reserved_tokens: int,
    truncate: bool,
) -> FittedPrompt:
    """Render `messages`; if the prompt does not fit, raise InvalidArgument with both counts, or, with
    `truncate`, drop the oldest whole turns (never a leading system message, never the last turn) until it
    fits. Dropping whole turns keeps user/assistant alternation and every tool result with its call.

    The number of turns to drop is found by bisection, which assumes the prompt does not grow when a turn
    is dropped (true of templates that render each message on its own); the result is always re-checked.
    """
    prompt = render(messages)
    if not truncate or len(prompt.token_ids) + reserved_tokens <= context_window:
        check_budget(len(prompt.token_ids), context_window=context_window, reserved_tokens=reserved_tokens)
        return FittedPrompt(prompt, tuple(messages), 0)
    check_budget(0, context_window=context_window, reserved_tokens=reserved_tokens)
    keep_head = list(messages[:1]) if messages and messages[0].role in (Role.SYSTEM, Role.DEVELOPER) else []
    # Each cut drops the messages between the kept head and a later turn's start.
    cuts = [i for i in _turn_starts(messages) if i > len(keep_head)]

    def attempt(cut: int) -> tuple[RenderedPrompt, list[Message]]:
        kept = keep_head + list(messages[cut:])
        return render(kept), kept

    low, high = 0, len(cuts) - 1
    best: tuple[RenderedPrompt, list[Message], int] | None = None
    while low <= high:
        middle = (low + high) // 2
        candidate, kept = attempt(cuts[middle])
        if len(candidate.token_ids) + reserved_tokens <= context_window:
            best, high = (candidate, kept, cuts[middle]), middle - 1
        else:
            low = middle + 1
    if best is None:
        smallest = attempt(cuts[-1])[0] if cuts else prompt
        raise InvalidArgument(
            "messages",
            f"the prompt is {len(smallest.token_ids)} tokens even with only the last turn kept, and "
            f"{reserved_tokens} more are reserved for max_tokens, but the context window is "
            f"{context_window} tokens",
        )
    candidate, kept, cut = best
    return FittedPrompt(candidate, tuple(kept), cut - len(keep_head))
