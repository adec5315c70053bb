"""Build a Hugging Face `tokenizers` tokenizer.json from a GGUF's vocabulary, merges and token types,
reproducing llama.cpp's pre-tokenizer for the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from service.errors import ModelError

TOKEN_TYPE_CONTROL = 3


@dataclass(frozen=True)
class TokenizerBuild:
    tokenizer: Tokenizer
    control_tokens: dict[str, int]  # every token_type 3 token: text -> id


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    entry = reader.fields.get(key)
    return None if entry is None else entry.contents()


def build_tokenizer(reader: gguf.GGUFReader) -> TokenizerBuild:
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    if model != "gpt2" or pre != "smollm":
        raise ModelError(f"tokenizer {model!r}/{pre!r} is not supported (supported: gpt2/smollm)")
    merges_raw: list[str] = _field(reader, "tokenizer.ggml.merges")
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    vocab = {text: i for i, text in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = {tokens[i]: i for i, kind in enumerate(types) if kind == TOKEN_TYPE_CONTROL}
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in control])
    return TokenizerBuild(tokenizer=tok, control_tokens=control)
