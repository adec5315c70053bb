"""Build a Hugging Face `tokenizers` Tokenizer from a GGUF's vocabulary that tokenizes as llama.cpp does.

Supported (`tokenizer.ggml.model` / `tokenizer.ggml.pre`):
- `gpt2` (byte-level BPE with merges) with the pre-tokenizers `smollm`, `llama-bpe` (alias `llama3`,
  `llama-v3`), `gpt-2`, and `default` (also used when the GGUF names none, as llama.cpp does);
- `llama` (SentencePiece BPE: pieces with scores, `<0xNN>` byte fallback, `▁` for spaces, add_space_prefix).

How llama.cpp treats token types (src/llama-vocab.cpp), and how each maps here:
- control (3) and unknown (2) tokens are cut out of the text only when special-token parsing is on
  (`special=True`): here they are special AddedTokens, so `Tokenizer.encode_special_tokens = True` turns
  them into plain text exactly like llama.cpp's `special=False`;
- user-defined (4) tokens are cut out of the text in both modes: non-special AddedTokens;
- every other type (normal, unused, byte) is only reachable through the BPE model.

- a few end-of-generation texts (`<|im_end|>`, `<|eot_id|>`, ...) are control whatever their type.

Checked equal to llama.cpp (llama-cpp-python 0.3.36) in both modes on the default GGUF, on llama.cpp's own
Llama 2 (SentencePiece), Llama 3 and GPT-2 vocabularies (tests/fixtures/tokenizer/compare_llamacpp.py)
and on the synthetic vocabularies of the tests.

Known divergences, on inputs real vocabularies do not produce: llama.cpp cuts special tokens out
longest-first over the whole text, `tokenizers` leftmost-longest (they differ only when two special
tokens overlap); for SentencePiece vocabularies llama.cpp breaks ties between merges of equal score by
position, here by token id. Not reproduced: llama.cpp's per-model token attributes chosen by model name
(rstrip for Phi-3's special tokens, lstrip for some BERT masks), for architectures Parley does not load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from service.errors import ModelError

SUPPORTED = (
    "gpt2 with pre-tokenizer smollm, llama-bpe (llama3, llama-v3), gpt-2 or default; llama (SentencePiece)"
)

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp, llm_tokenizer_bpe), applied one after another, each
# splitting every piece the previous one left into matches and the text between them.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEFAULT_PATTERNS = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")

LLAMA3_NAMES = frozenset({"llama-bpe", "llama3", "llama-v3"})
SPM_SPACE = "▁"

# Token texts llama.cpp promotes to control when a GGUF types them otherwise (its end-of-generation
# detection by text, llama-vocab.cpp `special_eog_ids`): they then tokenize as control tokens.
LLAMA_CPP_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<｜end▁of▁sentence｜>", "[e~[",
    }
)  # fmt: skip


@dataclass(frozen=True)
class TokenizerBuild:
    tokenizer: Tokenizer
    control_tokens: dict[str, int]  # text -> id of every token llama.cpp treats as control
    user_defined_tokens: dict[str, int]  # text -> id; always cut out of the text, never special
    model: str  # tokenizer.ggml.model: "gpt2" or "llama"
    pre: str  # the pre-tokenizer ("smollm", "llama-bpe", "gpt-2", "default"); "" for "llama"


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer part of a GGUF, with llama.cpp's fix-ups applied (empty names, promoted control)."""

    model: str
    pre: str
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    scores: list[float]  # SentencePiece piece scores; empty for gpt2
    merges: list[tuple[str, str]]  # gpt2 only, in rank order
    add_space_prefix: bool  # SentencePiece only


def build_tokenizer(reader: gguf.GGUFReader) -> TokenizerBuild:
    """The tokenizer of a GGUF; ModelError if its tokenizer is missing, inconsistent or unsupported."""
    return build_from_vocab(read_vocab(reader))


def build_from_vocab(vocab: GGUFVocab) -> TokenizerBuild:
    ids = _token_ids(vocab.tokens)
    tokenizer = _byte_level_bpe(vocab, ids) if vocab.model == "gpt2" else _sentencepiece_bpe(vocab, ids)
    control = _tokens_of_type(vocab, gguf.TokenType.CONTROL)
    unknown = _tokens_of_type(vocab, gguf.TokenType.UNKNOWN)
    user_defined = _tokens_of_type(vocab, gguf.TokenType.USER_DEFINED)
    tokenizer.add_tokens([_added(text, special=False) for text in user_defined])
    tokenizer.add_special_tokens([_added(text, special=True) for text in control | unknown])
    return TokenizerBuild(
        tokenizer=tokenizer,
        control_tokens=control,
        user_defined_tokens=user_defined,
        model=vocab.model,
        pre=vocab.pre,
    )


def read_vocab(reader: gguf.GGUFReader) -> GGUFVocab:
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise ModelError("GGUF has no tokenizer (no tokenizer.ggml.model)")
    pre = _field(reader, "tokenizer.ggml.pre")
    _check_supported(str(model), None if pre is None else str(pre))
    tokens = _required(reader, "tokenizer.ggml.tokens")
    # llama.cpp renames empty token texts so every id keeps a distinct, non-empty text.
    tokens = [text if text else f"[EMPTY_{i}]" for i, text in enumerate(tokens)]
    types_raw = _field(reader, "tokenizer.ggml.token_type")
    types = [int(t) for t in types_raw] if types_raw is not None else [gguf.TokenType.NORMAL] * len(tokens)
    if len(types) < len(tokens):
        raise ModelError(f"GGUF tokenizer has {len(types)} token types for {len(tokens)} tokens")
    types = [_llama_cpp_type(text, kind) for text, kind in zip(tokens, types, strict=False)]
    if model == "gpt2":
        merges_raw = _required(reader, "tokenizer.ggml.merges")
        return GGUFVocab(
            model="gpt2",
            pre="default" if pre is None else str(pre),
            tokens=tokens,
            types=types,
            scores=[],
            merges=_parse_merges(merges_raw),
            add_space_prefix=False,
        )
    scores = _field(reader, "tokenizer.ggml.scores")
    if scores is None or len(scores) < len(tokens):
        raise ModelError("GGUF SentencePiece tokenizer needs a score for every token (tokenizer.ggml.scores)")
    add_prefix = _field(reader, "tokenizer.ggml.add_space_prefix")
    return GGUFVocab(
        model="llama",
        pre="",
        tokens=tokens,
        types=types,
        scores=[float(s) for s in scores[: len(tokens)]],
        merges=[],
        add_space_prefix=True if add_prefix is None else bool(add_prefix),
    )


# --- gpt2: byte-level BPE ----------------------------------------------------------------------------


def _byte_level_bpe(vocab: GGUFVocab, ids: dict[str, int]) -> Tokenizer:
    for left, right in vocab.merges:
        for part in (left, right, left + right):
            if part not in ids:
                raise ModelError(
                    f"GGUF merge {left!r} {right!r} names {part!r}, which is not in the vocabulary"
                )
    llama3 = vocab.pre in LLAMA3_NAMES
    # llama.cpp's llama3 pre-type takes a whole pre-token from the vocabulary before trying merges.
    bpe = models.BPE(
        vocab=ids, merges=vocab.merges, fuse_unk=False, byte_fallback=False, ignore_merges=llama3
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(vocab.pre)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    # ByteLevel maps the bytes of every piece to the GPT-2 alphabet; `use_regex=True` also applies the GPT-2
    # regex first (the same pattern as GPT2_PATTERN).
    bytes_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in LLAMA3_NAMES:
        return pre_tokenizers.Sequence([_isolate(LLAMA3_PATTERN), bytes_only])
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([*(_isolate(p) for p in DEFAULT_PATTERNS), bytes_only])


def _isolate(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


def _parse_merges(merges_raw: Sequence[str]) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for line in merges_raw:
        left, sep, right = line.partition(" ")
        if not sep or not left or not right:
            raise ModelError(f"GGUF merge {line!r} is not two tokens separated by a space")
        # llama.cpp keeps a repeated merge at its first rank.
        if (left, right) not in seen:
            seen.add((left, right))
            merges.append((left, right))
    return merges


# --- llama: SentencePiece BPE ------------------------------------------------------------------------


def _sentencepiece_bpe(vocab: GGUFVocab, ids: dict[str, int]) -> Tokenizer:
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in ids]
    if missing:
        raise ModelError(
            f"GGUF SentencePiece vocabulary lacks {len(missing)} byte-fallback tokens (first: {missing[0]})"
        )
    unknown = next(iter(_tokens_of_type(vocab, gguf.TokenType.UNKNOWN)), None)
    bpe = models.BPE(
        vocab=ids,
        merges=_spm_merges(vocab.tokens, vocab.scores, ids),
        unk_token=unknown,
        fuse_unk=False,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(bpe)
    # llama.cpp prepends a space to every text fragment at the start or after a special token, then
    # writes spaces as ▁. Normalizers run on each fragment between added tokens, so Prepend does the same.
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", SPM_SPACE)]
    if vocab.add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPM_SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    decode: list[decoders.Decoder] = [
        decoders.Replace(SPM_SPACE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if vocab.add_space_prefix:
        decode.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


def _spm_merges(tokens: Sequence[str], scores: Sequence[float], ids: dict[str, int]) -> list[tuple[str, str]]:
    """Merges that replay llama.cpp's SentencePiece loop as BPE ranks.

    llama.cpp repeatedly joins the adjacent pair whose concatenation is a token of the highest score. So
    every split of a token into two tokens is a merge, ranked by the joined token's score (best first).
    """
    ranked: list[tuple[float, int, int, str, str]] = []
    for joined_id, text in enumerate(tokens):
        if ids.get(text) != joined_id:  # a text whose id llama.cpp's lookup never returns
            continue
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[joined_id], joined_id, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# --- shared ------------------------------------------------------------------------------------------


def _check_supported(model: str, pre: str | None) -> None:
    if model == "llama":
        return
    if model == "gpt2" and (pre is None or pre in {"smollm", "gpt-2", "default"} | LLAMA3_NAMES):
        return
    named = f"tokenizer {model!r}" + ("" if pre is None else f" with pre-tokenizer {pre!r}")
    raise ModelError(f"{named} is not supported (supported: {SUPPORTED})")


def _llama_cpp_type(text: str, kind: int) -> int:
    if text in LLAMA_CPP_EOG_TEXTS and kind != gguf.TokenType.CONTROL:
        return int(gguf.TokenType.CONTROL)
    return kind


def _token_ids(tokens: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if text in ids:
            raise ModelError(f"GGUF vocabulary repeats token {text!r} (ids {ids[text]} and {i})")
        ids[text] = i
    return ids


def _tokens_of_type(vocab: GGUFVocab, kind: int) -> dict[str, int]:
    return {text: i for i, (text, k) in enumerate(zip(vocab.tokens, vocab.types, strict=True)) if k == kind}


def _added(text: str, *, special: bool) -> AddedToken:
    # normalized=False: matched on the raw text, before the SentencePiece normalizer or byte-level mapping.
    return AddedToken(text, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    entry = reader.fields.get(key)
    return None if entry is None else entry.contents()


def _required(reader: gguf.GGUFReader, key: str) -> Any:
    value = _field(reader, key)
    if value is None:
        raise ModelError(f"GGUF tokenizer is incomplete: {key} is missing")
    return value
