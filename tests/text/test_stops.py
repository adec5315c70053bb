"""find_stop and held_back_length: the pure stop-string rules, with brute-force property checks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.text import find_stop, held_back_length

FIND_CASES = [
    pytest.param("hello world", 0, ["xyz"], None, id="no-match"),
    pytest.param("STOP and more", 0, ["STOP"], (0, "STOP"), id="at-the-very-start"),
    pytest.param("say STOP now", 6, ["STOP"], (4, "STOP"), id="straddles-the-searched-boundary"),
    pytest.param("say STOP now", 8, ["STOP"], None, id="ended-before-start-already-searched"),
    pytest.param("abcd", 0, ["abcd", "bc"], (1, "bc"), id="completes-first-wins"),
    pytest.param("xab", 0, ["b", "ab"], (1, "ab"), id="same-end-longest-wins"),
    pytest.param("one two three", 0, ["three", "two", "one"], (0, "one"), id="several-stops"),
    pytest.param("aaaa", 2, ["aaa"], (0, "aaa"), id="overlapping-self"),
    pytest.param("🙂 日本", 0, ["日本", "本"], (2, "日本"), id="multi-byte"),
]


@pytest.mark.parametrize(("text", "start", "stops", "expected"), FIND_CASES)
def test_find_stop(text: str, start: int, stops: list[str], expected: tuple[int, str] | None) -> None:
    assert find_stop(text, start, stops) == expected


HOLD_CASES = [
    pytest.param("hello", ["STOP"], 0, id="nothing-to-hold"),
    pytest.param("hello ST", ["STOP"], 2, id="partial-stop"),
    pytest.param("S", ["STOP"], 1, id="whole-text-is-a-prefix"),
    pytest.param("xaa", ["aaab"], 2, id="repeated-characters"),
    pytest.param("abab", ["ababc"], 4, id="self-overlap"),
    pytest.param("hello ST", ["TOPS", "T"], 1, id="longest-over-several"),
    pytest.param("end", ["end"], 0, id="a-whole-stop-is-not-partial"),
    pytest.param("", ["a"], 0, id="empty-text"),
    pytest.param("go 日", ["日本"], 1, id="multi-byte"),
]


@pytest.mark.parametrize(("text", "stops", "expected"), HOLD_CASES)
def test_held_back_length(text: str, stops: list[str], expected: int) -> None:
    assert held_back_length(text, stops) == expected


def _first_stop_brute_force(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Scan end positions left to right; at the first end where any stop completes, the longest."""
    for end in range(1, len(text) + 1):
        matches = [stop for stop in stops if text[:end].endswith(stop)]
        if matches:
            stop = max(matches, key=len)
            return end - len(stop), stop
    return None


ALPHABET = "ab c日🙂"
texts = st.text(alphabet=ALPHABET, max_size=30)
stop_lists = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4)


@settings(max_examples=300, derandomize=True)
@given(text=texts, stops=stop_lists)
def test_find_stop_matches_brute_force(text: str, stops: list[str]) -> None:
    assert find_stop(text, 0, stops) == _first_stop_brute_force(text, stops)


@settings(max_examples=300, derandomize=True)
@given(text=texts, stops=stop_lists)
def test_held_back_length_matches_brute_force(text: str, stops: list[str]) -> None:
    expected = max(
        (k for stop in stops for k in range(1, min(len(stop) - 1, len(text)) + 1) if text.endswith(stop[:k])),
        default=0,
    )
    assert held_back_length(text, stops) == expected


@settings(max_examples=300, derandomize=True)
@given(text=texts, stops=stop_lists, cuts=st.lists(st.integers(0, 30), max_size=8))
def test_streaming_in_any_chunks_finds_the_whole_text_answer(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    """Feeding the text in arbitrary pieces with search-the-tail and hold-back emits exactly the text
    before the first stop, and only text that can no longer start one."""
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    emitted, pending, stopped = "", "", None
    for left, right in itertools.pairwise(bounds):
        searched = len(pending)
        pending += text[left:right]
        match = find_stop(pending, searched, stops)
        if match is not None:
            emitted += pending[: match[0]]
            stopped = match[1]
            break
        keep = held_back_length(pending, stops)
        emitted, pending = emitted + pending[: len(pending) - keep], pending[len(pending) - keep :]
    else:
        emitted += pending
    expected = _first_stop_brute_force(text, stops)
    if expected is None:
        assert (emitted, stopped) == (text, None)
    else:
        assert (emitted, stopped) == (text[: expected[0]], expected[1])
