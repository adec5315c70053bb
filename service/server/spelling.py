"""A token's exact bytes and display text, for logprobs (a token may hold part of a UTF-8 character).

Byte-level BPE vocabularies (GPT-2 style) spell each byte as one printable character; SentencePiece ones
spell bytes as `<0xNN>` and spaces as `▁`. Anything else falls back to the token's decoded text.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from tokenizers import Tokenizer

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SENTENCEPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable bytes stand for themselves, the others are shifted
    past 255 in order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = dict(zip(printable, printable, strict=True))
    shifted = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = 256 + shifted
            shifted += 1
    return {chr(code): byte for byte, code in chars.items()}


class TokenSpeller:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
        self._byte_level = "ByteLevel" in kinds
        special = tokenizer.get_added_tokens_decoder()
        self._special = {token_id for token_id, token in special.items() if token.special}
        self._cache: dict[int, bytes] = {}

    def token_bytes(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._spell(token_id)
        return cached

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def _spell(self, token_id: int) -> bytes:
        piece = self._tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._special:
            return piece.encode("utf-8")
        if self._byte_level:
            alphabet = _byte_level_alphabet()
            if all(char in alphabet for char in piece):
                return bytes(alphabet[char] for char in piece)
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte is not None:
            return bytes([int(byte.group(1), 16)])
        if _SENTENCEPIECE_SPACE in piece:
            return piece.replace(_SENTENCEPIECE_SPACE, " ").encode("utf-8")
        return str(self._tokenizer.decode([token_id], skip_special_tokens=False)).encode("utf-8")
