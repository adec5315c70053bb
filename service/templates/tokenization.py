"""From segments to token ids, with no way for client text to become a control token.

The ids are those of transformers 5's `apply_chat_template(..., tokenize=True, sanitize_control_tokens=True)`:

- Client text with no control-token text in it is not treated apart from the template text around it: the
  prompt is encoded whole with special tokens recognised, so the BPE merges at a join such as
  `"user\\n" + content` are the ones the model saw in training, and the ids equal a plain
  `tokenizer(rendered, add_special_tokens=False)`.
- Control-token text inside client text (`<|im_end|>` typed by a user) is encoded as plain text, on its own;
  the prompt is cut around it and each later piece is encoded after a "\\n" that is then dropped, so a
  SentencePiece tokenizer adds no prefix space mid-prompt (transformers' `encode_marked_chat`).
- One guard transformers lacks: every control token in an encoded piece must lie inside template text. Client
  text that only forms a control token together with its neighbour (`<|im_` + `end|>`) fails the guard, and
  that piece is encoded with the template's own control tokens cut out and everything else as plain text.

Control tokens placed by id (Meta's Llama-2 BOS/EOS) split the prompt into stretches encoded on their own,
as Meta's reference encodes each turn; a template whose control tokens all come by id (`control_by_id`)
has every stretch encoded as plain text, as SentencePiece does.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

from service.templates.splitting import control_token_pattern
from service.templates.types import Segment


class _TextPiece:
    """Prompt text between two pieces of client control-token text, with where the template wrote it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.template_spans: list[tuple[int, int]] = []

    def add(self, text: str, *, template: bool) -> None:
        if template and text:
            if self.template_spans and self.template_spans[-1][1] == self.length:
                self.template_spans[-1] = (self.template_spans[-1][0], self.length + len(text))
            else:
                self.template_spans.append((self.length, self.length + len(text)))
        self.parts.append(text)
        self.length += len(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def in_template_text(self, start: int, end: int) -> bool:
        """Whether [start, end), less whitespace an lstrip/rstrip token swallowed, is template text."""
        text = self.text
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        return any(lo <= start and end <= hi for lo, hi in self.template_spans)


class PromptTokenizer:
    """A tokenizer held in two fixed modes. Two copies, not one with `encode_special_tokens` toggled per
    call: that flag is shared state, and the server tokenizes from more than one thread."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        serialized = tokenizer.to_str()
        self._special = Tokenizer.from_str(serialized)  # control-token text becomes control tokens
        self._special.encode_special_tokens = False
        self._plain = Tokenizer.from_str(serialized)  # control-token text stays text
        self._plain.encode_special_tokens = True
        added = self._special.get_added_tokens_decoder()
        self.control_tokens: dict[str, int] = {
            token.content: i for i, token in added.items() if token.special
        }
        self._control_ids = frozenset(self.control_tokens.values())
        self._control_text = control_token_pattern(self.control_tokens)
        self._newline = list(self._special.encode("\n", add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._special.decode(list(ids), skip_special_tokens=False))

    def encode_plain(self, text: str) -> list[int]:
        """Text with any control-token text in it encoded as ordinary text."""
        return list(self._plain.encode(text, add_special_tokens=False).ids) if text else []

    def encode(self, segments: Sequence[Segment], *, control_by_id: bool = False) -> list[int]:
        """Token ids of the segments; nothing is added beyond what the segments hold (no automatic BOS).
        With `control_by_id` only segments with a token id become control tokens: each stretch of text
        between them is encoded whole as plain text (Meta's formats)."""
        if control_by_id:
            return self._encode_by_id(segments)
        ids: list[int] = []
        stretch: list[Segment] = []
        for segment in segments:
            if segment.token_id is None:
                stretch.append(segment)
                continue
            ids += self._encode_stretch(stretch)
            ids.append(segment.token_id)
            stretch = []
        return ids + self._encode_stretch(stretch)

    def _encode_by_id(self, segments: Sequence[Segment]) -> list[int]:
        ids: list[int] = []
        stretch: list[str] = []
        for segment in segments:
            if segment.token_id is None:
                stretch.append(segment.text)
            else:
                ids += [*self.encode_plain("".join(stretch)), segment.token_id]
                stretch = []
        return ids + self.encode_plain("".join(stretch))

    def _encode_stretch(self, segments: Sequence[Segment]) -> list[int]:
        texts = [_TextPiece()]
        marked: list[str] = []  # control-token text found in client text, between texts[i] and texts[i+1]
        for segment in segments:
            if segment.trusted or self._control_text is None:
                texts[-1].add(segment.text, template=segment.trusted)
                continue
            position = 0
            for found in self._control_text.finditer(segment.text):
                texts[-1].add(segment.text[position : found.start()], template=False)
                marked.append(found.group())
                texts.append(_TextPiece())
                position = found.end()
            texts[-1].add(segment.text[position:], template=False)
        ids = self._encode_text(texts[0], continued=False)
        for control_text, piece in zip(marked, texts[1:], strict=True):
            ids += self._continued_plain(control_text)
            if piece.length:
                ids += self._encode_text(piece, continued=True)
        return ids

    def _continued_plain(self, text: str) -> list[int]:
        """Plain text from the middle of a prompt: encoded after a newline that is then dropped, unless the
        newline merges into the text's first token (then the text alone)."""
        ids = list(self._plain.encode("\n" + text, add_special_tokens=False).ids)
        if ids[: len(self._newline)] == self._newline:
            return ids[len(self._newline) :]
        return self.encode_plain(text)

    def _encode_text(self, piece: _TextPiece, *, continued: bool) -> list[int]:
        text = piece.text
        if not text:
            return []
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        if continued:  # as in _continued_plain, keeping offsets (shifted by the newline) for the guard
            prefixed = self._special.encode("\n" + text, add_special_tokens=False)
            if list(prefixed.ids[: len(self._newline)]) == self._newline:
                ids = list(prefixed.ids[len(self._newline) :])
                offsets = [(start - 1, end - 1) for start, end in prefixed.offsets[len(self._newline) :]]
        if not ids:
            encoding = self._special.encode(text, add_special_tokens=False)
            ids, offsets = list(encoding.ids), list(encoding.offsets)
        for token_id, (start, end) in zip(ids, offsets, strict=True):
            if token_id in self._control_ids and not piece.in_template_text(start, end):
                return self._encode_safely(piece)
        return ids

    def _encode_safely(self, piece: _TextPiece) -> list[int]:
        """The template's control tokens by id, all other text (template's and client's) as plain text."""
        text = piece.text
        ids: list[int] = []
        position = 0
        for lo, hi in piece.template_spans:
            encoding = self._special.encode(text[lo:hi], add_special_tokens=False)
            for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
                if token_id in self._control_ids:
                    ids += self.encode_plain(text[position : lo + start])
                    ids.append(token_id)
                    position = lo + end
        return ids + self.encode_plain(text[position:])
