"""Splitting a rendered prompt into template text and client text.

The template is rendered twice: with the client's strings (the real prompt) and with a placeholder in place
of each (the marked prompt). The marked prompt, cut at its placeholders, gives the template's own text
pieces T0, T1, ... Tn. The split is accepted only if the real prompt is exactly T0 c1 T1 c2 ... Tn, where
each c is the client string the placeholder stood for, or that string as the template may have transformed
it: trimmed at either end (`trim`, `strip()`) or JSON-escaped (`tojson`). The template pieces then contain
no client text by construction, so no client text can become a control token.

When that fails (a template that slices, splits, upper-cases or measures content, or whose control flow
depends on it), the fallback renders the prompt as one trusted piece, and is sound only under two checks:
no client string contains control-token text, and the real prompt holds exactly the same sequence of
control tokens as the marked one (so the template did not assemble one out of client text). A request that
fails either check, or whose placeholders the template refuses outright, is rejected with InvalidArgument
rather than tokenized unsafely.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from service.errors import InvalidArgument
from service.templates.inputs import PLACEHOLDER_CLOSE, PLACEHOLDER_OPEN, ClientText
from service.templates.types import Segment

_PLACEHOLDER = re.compile(f"{PLACEHOLDER_OPEN}([0-9]+){PLACEHOLDER_CLOSE}")


def _renderings(value: str) -> list[str]:
    """The forms a template may print a client string in, most likely first, without repeats."""
    forms = [
        value,
        value.strip(),
        value.lstrip(),
        value.rstrip(),
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value, ensure_ascii=True)[1:-1],
    ]
    return list(dict.fromkeys(forms))


def _match(real: str, pieces: Sequence[str], options: Sequence[Sequence[str]]) -> list[str] | None:
    """Find c_k in options[k] with real == pieces[0] + c_0 + pieces[1] + c_1 + ... + pieces[-1].

    Depth-first with backtracking over (occurrence, position) states; a state found dead is never retried,
    so the search is linear in states, of which there are few (options differ only in edge whitespace or
    escaping).
    """
    if not real.startswith(pieces[0]):
        return None
    count = len(options)
    dead: set[tuple[int, int]] = set()
    path: list[tuple[int, int]] = []  # for each matched occurrence: (option index, position before it)
    k, pos, first_option = 0, len(pieces[0]), 0
    while True:
        if k == count:
            if pos == len(real):
                return [options[i][choice] for i, (choice, _) in enumerate(path)]
            found = None
        else:
            found = None
            if (k, pos) not in dead:
                for choice in range(first_option, len(options[k])):
                    end = pos + len(options[k][choice])
                    if real.startswith(options[k][choice], pos) and real.startswith(pieces[k + 1], end):
                        found = choice
                        break
        if found is not None:
            path.append((found, pos))
            pos += len(options[k][found]) + len(pieces[k + 1])
            k, first_option = k + 1, 0
            continue
        dead.add((k, pos))  # every option from this state has now been tried
        if not path:
            return None
        choice, pos = path.pop()
        k, first_option = k - 1, choice + 1


def split_rendering(marked: str, real: str, texts: Sequence[ClientText]) -> list[Segment] | None:
    """Segments of `real` (template text trusted, client text untrusted), or None if the marked rendering
    cannot be aligned with the real one."""
    parts = _PLACEHOLDER.split(marked)
    pieces = parts[0::2]
    if any(PLACEHOLDER_OPEN in piece or PLACEHOLDER_CLOSE in piece for piece in pieces):
        return None  # the template cut a placeholder apart (slicing, split())
    occurrences = [int(index) for index in parts[1::2]]
    if any(index >= len(texts) for index in occurrences):
        return None
    chosen = _match(real, pieces, [_renderings(texts[index].value) for index in occurrences])
    if chosen is None:
        return None
    segments = [Segment(pieces[0])]
    for index, client_text, piece in zip(occurrences, chosen, pieces[1:], strict=True):
        segments += [Segment(client_text, field=texts[index].field), Segment(piece)]
    return [segment for segment in segments if segment.text]


def control_token_pattern(control_texts: Iterable[str]) -> re.Pattern[str] | None:
    """Leftmost-longest matching of control-token texts, as the tokenizer's added-token matcher does."""
    texts = sorted(set(control_texts), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


def whole_rendering(
    marked: str | None, real: str, texts: Sequence[ClientText], control: re.Pattern[str] | None
) -> list[Segment]:
    """The fallback: the real rendering as one trusted segment, after the checks in the module docstring.
    `marked` is None when the template refused the placeholders; with control tokens to protect, the
    conversation is then refused too."""
    if control is not None:
        for text in texts:
            found = control.search(text.value)
            if found is not None:
                raise InvalidArgument(
                    text.field,
                    f"contains {found.group()!r}, a control token of this model, and this chat template "
                    "transforms message text in a way that keeps Parley from telling it apart from the "
                    "template's own control tokens; remove that text",
                )
        if marked is None:
            raise InvalidArgument(
                "messages",
                "the chat template inspects message text in a way that keeps Parley from checking where its "
                "control tokens come from, so this conversation cannot be rendered safely",
            )
        if control.findall(real) != control.findall(marked):
            raise InvalidArgument(
                "messages",
                "the chat template builds control tokens out of message text, so this conversation cannot "
                "be rendered safely",
            )
    return [Segment(real)] if real else []


CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for the end of the continued message


def continuation_cut(real: str, final_content: str, field: str) -> int:
    """Where transformers cuts a rendering to continue the final message: at the tag appended to it, or,
    when the template trimmed the tag's trailing space, at the message's end without trailing whitespace."""
    tag = CONTINUE_TAG.strip()
    if final_content.strip() not in real or tag not in real:
        raise InvalidArgument(
            field, "the chat template drops part of the final assistant message, so it cannot be continued"
        )
    location = real.rindex(tag)
    if real[location : location + len(CONTINUE_TAG)] == CONTINUE_TAG:
        return location
    return len(real[:location].rstrip())


def cut_segments(segments: Sequence[Segment], end: int) -> list[Segment]:
    """The segments covering text[:end]."""
    kept: list[Segment] = []
    position = 0
    for segment in segments:
        if position >= end:
            break
        room = end - position
        kept.append(segment if len(segment.text) <= room else Segment(segment.text[:room], segment.field))
        position += len(segment.text)
    return kept
