"""Stop strings over streamed text: where the first one completes, and how much text to hold back.

Which stop wins: generation stops as soon as the text contains a stop string, so the match that
*completes* first (smallest end) wins; among matches ending at the same place, the longest (it begins
earliest). With stops "bc" and "abcd" in "abcd", "bc" wins: it was complete at "abc", before "abcd"
could be. This makes the result independent of how the text was cut into tokens: feeding it one
character at a time finds the same stop at the same place as searching the whole text at once.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, start: int, stops: Sequence[str]) -> tuple[int, str] | None:
    """The first stop string to complete in `text` among matches ending after index `start` (the text
    before `start` was searched already, so only the tail is read). Returns (index where the match
    begins, the stop string), or None."""
    best: tuple[int, int, int, str] | None = None  # (end, -length, index, stop)
    for stop in stops:
        index = text.find(stop, max(0, start - len(stop) + 1))
        if index >= 0:
            candidate = (index + len(stop), -len(stop), index, stop)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
    return None if best is None else (best[2], best[3])


def held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: text that may
    still turn into a stop and must not be emitted yet (0 when none)."""
    if not text:
        return 0
    last = text[-1]
    longest = 0
    for stop in stops:
        # a suffix ending in `last` that is a prefix of `stop` ends where `stop` holds `last`
        position = stop.rfind(last, 0, min(len(stop) - 1, len(text)))
        while position + 1 > longest:
            if text.endswith(stop[: position + 1]):
                longest = position + 1
                break
            position = stop.rfind(last, 0, position)
    return longest
