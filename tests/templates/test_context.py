"""Fitting the prompt into the context window: both counts in the error, or the oldest turns dropped."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from service.errors import InvalidArgument
from service.requests import Message, Role
from service.templates import (
    FittedPrompt,
    JinjaChatTemplate,
    PromptTokenizer,
    RenderedPrompt,
    check_budget,
    fit_to_context,
    render_prompt,
)

SYSTEM = Message(Role.SYSTEM, "You are terse.")


def conversation(turns: int) -> list[Message]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [
            Message(Role.USER, f"Question {i}: " + "word " * 20),
            Message(Role.ASSISTANT, f"Answer {i}."),
        ]
    return [*messages, Message(Role.USER, "Last question?")]


Fit = Callable[[list[Message], int, int, bool], FittedPrompt]  # (messages, window, reserved, truncate)


@pytest.fixture()
def fit(smollm_template: JinjaChatTemplate, prompt_tokenizer: PromptTokenizer) -> Fit:
    def render(messages: Sequence[Message]) -> RenderedPrompt:
        return render_prompt(smollm_template, messages, prompt_tokenizer)

    def run(messages: list[Message], window: int, reserved: int, truncate: bool) -> FittedPrompt:
        return fit_to_context(
            messages, render, context_window=window, reserved_tokens=reserved, truncate=truncate
        )

    return run


def test_check_budget_reports_both_counts() -> None:
    check_budget(8000, context_window=8192, reserved_tokens=192)
    message = (
        r"the prompt is 9000 tokens and 256 more are reserved for max_tokens, but the context window is 8192"
    )
    with pytest.raises(InvalidArgument, match=message) as raised:
        check_budget(9000, context_window=8192, reserved_tokens=256)
    assert raised.value.field == "messages"
    with pytest.raises(InvalidArgument, match="leaves no room for the prompt") as raised:
        check_budget(1, context_window=8192, reserved_tokens=8192)
    assert raised.value.field == "max_tokens"


def test_prompt_that_fits_is_untouched(fit: Fit) -> None:
    messages = conversation(3)
    fitted = fit(messages, 8192, 256, False)
    assert fitted.dropped_messages == 0
    assert fitted.messages == tuple(messages)


def test_too_long_prompt_is_refused_with_counts(fit: Fit) -> None:
    with pytest.raises(InvalidArgument, match=r"the prompt is \d+ tokens and 64 more are reserved") as raised:
        fit(conversation(10), 200, 64, False)
    assert raised.value.field == "messages"


def test_truncation_drops_the_oldest_whole_turns(fit: Fit) -> None:
    messages = conversation(10)
    full = fit(messages, 8192, 0, False).prompt
    fitted = fit(messages, 200, 64, True)
    assert len(fitted.prompt.token_ids) + 64 <= 200 < len(full.token_ids) + 64
    assert fitted.messages[0] == SYSTEM
    assert fitted.messages[-1] == messages[-1]
    assert fitted.messages[1:] == tuple(messages[1 + fitted.dropped_messages :])
    assert fitted.dropped_messages % 2 == 0  # user + assistant pairs: alternation is kept
    # The fewest turns were dropped: keeping one more turn would not fit.
    one_more = [SYSTEM, *messages[1 + fitted.dropped_messages - 2 :]]
    assert len(fit(one_more, 8192, 0, False).prompt.token_ids) + 64 > 200


def test_truncation_that_cannot_fit_reports_the_smallest_prompt(fit: Fit) -> None:
    messages = [SYSTEM, Message(Role.USER, "word " * 300)]
    with pytest.raises(InvalidArgument, match=r"even with only the last turn kept") as raised:
        fit(messages, 200, 64, True)
    assert raised.value.field == "messages"
