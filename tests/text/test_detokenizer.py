"""Incremental detokenization and the text stream with stop strings, on the default model's tokenizer
(byte-level BPE: an emoji or a CJK character often spans several tokens)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models

from service.text import IncrementalDetokenizer, TextDelta, TextStream
from service.text.detokenizer import WARMUP_TOKENS

MIXED_TEXT = "Sure! 🙂 Here is 日本語 text, naïve café. STOP here 👍🏽 done"
CHAT_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _stream(tokenizer: Tokenizer, stops: list[str], **kwargs: int) -> TextStream:
    prompt = tokenizer.encode(CHAT_PROMPT).ids
    return TextStream(IncrementalDetokenizer(tokenizer, prompt_ids=prompt), stops, **kwargs)


def _run(stream: TextStream, ids: list[int]) -> tuple[list[str], str | None]:
    """Push every id until a stop; then finish. Returns the deltas and the matched stop."""
    deltas = []
    for token_id in ids:
        delta = stream.push(token_id)
        deltas.append(delta.text)
        if delta.stop is not None:
            return deltas, delta.stop
    final = stream.finish()
    deltas.append(final.text)
    return deltas, final.stop


def test_characters_split_across_tokens_come_out_whole(default_tokenizer: Tokenizer) -> None:
    ids = default_tokenizer.encode(MIXED_TEXT).ids
    detokenizer = IncrementalDetokenizer(default_tokenizer)
    deltas = [detokenizer.push(token_id) for token_id in ids]
    assert "" in deltas, "the text should contain characters that span tokens"
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) + detokenizer.flush() == MIXED_TEXT


def test_an_unfinished_character_at_the_end_is_flushed_as_a_full_decode_shows_it(
    default_tokenizer: Tokenizer,
) -> None:
    ids = default_tokenizer.encode("ok 日").ids
    cut = ids[:-1]  # the last byte of 日 missing
    detokenizer = IncrementalDetokenizer(default_tokenizer)
    text = "".join(detokenizer.push(token_id) for token_id in cut)
    assert "\ufffd" not in text
    assert text + detokenizer.flush() == default_tokenizer.decode(cut)
    assert detokenizer.flush() == ""


def test_warm_up_on_the_prompt_keeps_the_first_tokens_leading_space() -> None:
    """Metaspace decoders drop the leading space of a text's first token: decoding the generated
    tokens in the prompt's context must keep it."""
    tokenizer = Tokenizer(models.WordLevel(vocab={"▁Hello": 0, "▁world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.decoder = decoders.Metaspace()
    assert IncrementalDetokenizer(tokenizer).push(1) == "world"
    assert IncrementalDetokenizer(tokenizer, prompt_ids=[0]).push(1) == " world"


def test_warm_up_window_may_begin_inside_a_character(default_tokenizer: Tokenizer) -> None:
    """A warm-up window that begins inside a character (its decode starts with U+FFFD) still gives
    clean text."""
    cjk = default_tokenizer.encode("日本語のテキスト").ids
    prompt = next(  # a prompt ending on a whole character whose warm-up window begins inside one
        cjk[:end]
        for end in range(WARMUP_TOKENS, len(cjk) + 1)
        if not default_tokenizer.decode(cjk[:end]).endswith("\ufffd")
        and default_tokenizer.decode(cjk[end - WARMUP_TOKENS : end]).startswith("\ufffd")
    )
    detokenizer = IncrementalDetokenizer(default_tokenizer, prompt_ids=prompt)
    ids = default_tokenizer.encode(" 🙂 yes").ids
    assert "".join(detokenizer.push(token_id) for token_id in ids) == " 🙂 yes"


@pytest.mark.parametrize(("skip", "expected"), [(True, "hi"), (False, "hi<|im_end|>")], ids=["skip", "keep"])
def test_special_tokens_are_skipped_unless_asked(
    default_tokenizer: Tokenizer, skip: bool, expected: str
) -> None:
    ids = default_tokenizer.encode("hi<|im_end|>").ids
    detokenizer = IncrementalDetokenizer(default_tokenizer, skip_special_tokens=skip)
    assert "".join(detokenizer.push(token_id) for token_id in ids) + detokenizer.flush() == expected


def test_stop_spanning_tokens_is_never_emitted(default_tokenizer: Tokenizer) -> None:
    ids = default_tokenizer.encode(MIXED_TEXT).ids
    pieces = [default_tokenizer.decode([token_id]) for token_id in ids]
    assert "STOP" not in pieces and " ST" in pieces, "the stop should span tokens"
    deltas, stop = _run(_stream(default_tokenizer, ["STOP"]), ids)
    assert stop == "STOP"
    assert "".join(deltas) == MIXED_TEXT[: MIXED_TEXT.index("STOP")]


def test_stop_at_the_very_start(default_tokenizer: Tokenizer) -> None:
    deltas, stop = _run(_stream(default_tokenizer, ["Sure"]), default_tokenizer.encode(MIXED_TEXT).ids)
    assert (deltas, stop) == ([""], "Sure")


def test_stop_inside_a_multi_byte_character_sequence(default_tokenizer: Tokenizer) -> None:
    deltas, stop = _run(_stream(default_tokenizer, ["本語"]), default_tokenizer.encode(MIXED_TEXT).ids)
    assert stop == "本語"
    assert "".join(deltas) == MIXED_TEXT[: MIXED_TEXT.index("本語")]
    assert all("\ufffd" not in delta for delta in deltas)


def test_overlapping_and_several_stops_the_first_to_complete_wins(default_tokenizer: Tokenizer) -> None:
    ids = default_tokenizer.encode(MIXED_TEXT).ids
    stops = ["text, naïve café. STOP", "naïve", "ïve caf", "here"]
    deltas, stop = _run(_stream(default_tokenizer, stops), ids)
    assert stop == "naïve"
    assert "".join(deltas) == MIXED_TEXT[: MIXED_TEXT.index("naïve")]


def test_held_back_text_is_released_when_no_stop_completes(default_tokenizer: Tokenizer) -> None:
    text = "the end is STO"
    deltas, stop = _run(_stream(default_tokenizer, ["STOP"]), default_tokenizer.encode(text).ids)
    assert stop is None
    assert "".join(deltas[:-1]) == "the end is " and deltas[-1] == "STO"


def test_stops_completing_before_min_tokens_are_ignored(default_tokenizer: Tokenizer) -> None:
    ids = default_tokenizer.encode("ab ab ab").ids
    assert len(ids) == 3
    deltas, stop = _run(_stream(default_tokenizer, ["ab"], min_tokens=3), ids)
    assert (stop, "".join(deltas)) == ("ab", "ab ab ")


def test_a_closed_stream_refuses_more_tokens(default_tokenizer: Tokenizer) -> None:
    stream = _stream(default_tokenizer, ["Sure"])
    assert stream.push(default_tokenizer.encode("Sure").ids[0]) == TextDelta("", "Sure")
    assert stream.finish() == TextDelta("", "Sure")
    with pytest.raises(RuntimeError, match="push after the text stream closed"):
        stream.push(5)


PIECES = ["a", "b", " ", "é", "日", "本", "🙂", "\n", "ab", "Hello", "👍🏽"]


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pieces=st.lists(st.sampled_from(PIECES), max_size=25),
    stops=st.lists(st.text(alphabet="ab é日本🙂", min_size=1, max_size=3), max_size=3),
    drop_last=st.integers(0, 2),
)
def test_deltas_equal_the_full_decode_cut_at_the_first_stop(
    default_tokenizer: Tokenizer, pieces: list[str], stops: list[str], drop_last: int
) -> None:
    """Concatenated deltas (+ the stop) equal the whole decode truncated at the first stop to
    complete, token boundaries and unfinished characters notwithstanding."""
    ids = default_tokenizer.encode("".join(pieces)).ids
    ids = ids[: len(ids) - drop_last] if drop_last < len(ids) else ids  # may end inside a character
    full = default_tokenizer.decode(ids)
    deltas, stop = _run(_stream(default_tokenizer, stops), ids)
    ends = [(full.index(s) + len(s), -len(s), s) for s in stops if s in full]
    if not ends:
        assert (("".join(deltas)), stop) == (full, None)
    else:
        _, _, first = min(ends)
        assert ("".join(deltas), stop) == (full[: full.index(first)], first)
    assert all("\ufffd" not in delta for delta in deltas[:-1] if stop is None)
