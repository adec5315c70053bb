"""Incremental detokenization and the text stream of one sequence.

`IncrementalDetokenizer` turns token ids into text as they arrive with `tokenizers.decoders.DecodeStream`:
a character split across byte-level tokens is released only once complete, so no delta ever holds half
a character (no U+FFFD from a split). The stream is warmed on the prompt's last tokens, so the first
generated token decodes as it would inside the whole text (decoders such as Metaspace drop a leading
space when a token is decoded alone).

`TextStream` adds stop strings: each pushed token yields the text that is safe to show, never any part of
a stop string, holding back only a tail that could still begin one (service/text/stops.py); the tail is
released when the sequence ends without a stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from service.text.stops import find_stop, held_back_length

WARMUP_TOKENS = 8  # prompt tokens the decode stream is primed with


class IncrementalDetokenizer:
    """Token ids in, text out, one token at a time. `skip_special_tokens` leaves control tokens
    (<|im_end|> ...) out of the text."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._context = list(prompt_ids[-WARMUP_TOKENS:])
        self._stream = DecodeStream(ids=self._context, skip_special_tokens=skip_special_tokens)
        self._pending: list[int] = []  # ids pushed since the last text came out

    def push(self, token_id: int) -> str:
        """The text this token completes ('' while a character or a special token yields none)."""
        chunk = self._stream.step(self._tokenizer, token_id)
        if chunk is None:
            self._pending.append(token_id)
            return ""
        self._context = [*self._pending, token_id]
        self._pending = []
        return str(chunk)

    def flush(self) -> str:
        """At the end of the sequence: the text of tokens still held (an unfinished character decodes
        as U+FFFD, as a full decode would show it)."""
        if not self._pending:
            return ""
        before = self._decode(self._context)
        after = self._decode([*self._context, *self._pending])
        self._context, self._pending = [*self._context, *self._pending], []
        return after[len(before) :] if after.startswith(before) else after

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=self._skip_special))


@dataclass(frozen=True)
class TextDelta:
    """Text that is safe to emit now, and the stop string that ended the text (None: not stopped).
    The text never contains any part of the stop string."""

    text: str
    stop: str | None = None


class TextStream:
    """Detokenizer plus stop strings for one sequence.

    A stop string that completes within the text of the first `min_tokens` - 1 tokens is ignored (the
    sequence may not end before min_tokens, as vLLM does). After a stop, the stream is closed.
    """

    def __init__(
        self, detokenizer: IncrementalDetokenizer, stops: Sequence[str] = (), *, min_tokens: int = 0
    ) -> None:
        self._detokenizer = detokenizer
        self._stops = tuple(stops)
        self._min_tokens = min_tokens
        self._tokens = 0
        self._pending = ""  # decoded, not yet emitted: the held-back tail plus the newest text
        self.stop: str | None = None
        self.closed = False

    def push(self, token_id: int) -> TextDelta:
        if self.closed:
            raise RuntimeError("push after the text stream closed (stop found or finish called)")
        self._tokens += 1
        return self._advance(self._detokenizer.push(token_id), final=False)

    def finish(self) -> TextDelta:
        """The sequence ended (eos, length, cancel): release the held-back text and any unfinished
        character. A stop may still complete in that last text."""
        if self.closed:
            return TextDelta("", self.stop)
        return self._advance(self._detokenizer.flush(), final=True)

    def _advance(self, chunk: str, *, final: bool) -> TextDelta:
        searched = len(self._pending)
        self._pending += chunk
        if self._stops and self._tokens >= self._min_tokens:
            match = find_stop(self._pending, searched, self._stops)
            if match is not None:
                index, self.stop = match
                self.closed = True
                return TextDelta(self._pending[:index], self.stop)
        held = 0 if final else held_back_length(self._pending, self._stops)
        cut = len(self._pending) - held
        text, self._pending = self._pending[:cut], self._pending[cut:]
        self.closed = final
        return TextDelta(text)
