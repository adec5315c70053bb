"""The GGUF tokenizer builder against llama.cpp's own token ids.

llamacpp_ids.json holds llama.cpp's ids for a corpus, for the default GGUF and for tiny synthetic GGUFs
(tests/fixtures/tokenizer/synthetic.py), recorded once by tests/fixtures/tokenizer/record_llamacpp.py.
"Special" mode is llama.cpp's `special=True` (control-token text becomes the control token), "plain" mode
`special=False`, here `Tokenizer.encode_special_tokens = True`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gguf
import pytest
from tokenizers import Tokenizer

from models.tokenizer_builder import TokenizerBuild, build_tokenizer
from service.errors import ModelError
from tests.fixtures.tokenizer import synthetic

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer" / "llamacpp_ids.json"
RECORDED: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
CORPUS: list[str] = RECORDED["corpus"]
MODES = ["special", "plain"]


def encode(tokenizer: Tokenizer, text: str, mode: str) -> list[int]:
    """Token ids without BOS; `plain` treats control-token text as text (llama.cpp special=False)."""
    previous = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = mode == "plain"
    try:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    finally:
        tokenizer.encode_special_tokens = previous


def mismatches(tokenizer: Tokenizer, recorded: list[list[int]], mode: str) -> list[str]:
    found = []
    for text, expected in zip(CORPUS, recorded, strict=True):
        ours = encode(tokenizer, text, mode)
        if ours != expected:
            found.append(f"{text!r}: llama.cpp {expected}, ours {ours}")
    return found


def saved(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer as the service loads it: through tokenizer.json."""
    return Tokenizer.from_str(tokenizer.to_str())


@pytest.fixture(scope="module")
def synthetic_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TokenizerBuild]:
    folder = tmp_path_factory.mktemp("synthetic-gguf")
    return {
        name: build_tokenizer(gguf.GGUFReader(write(folder / f"{name}.gguf")))
        for name, write in synthetic.SYNTHETIC.items()
    }


@pytest.fixture(scope="module")
def default_saved(default_tokenizer: Tokenizer) -> Tokenizer:
    return saved(default_tokenizer)


# --- equality with llama.cpp --------------------------------------------------------------------------


def test_fixture_was_recorded_from_the_default_gguf(default_gguf: Path) -> None:
    digest = hashlib.sha256(default_gguf.read_bytes()).hexdigest()
    assert digest == RECORDED["vocabularies"]["default"]["sha256"], "re-record: python -m " + (
        "tests.fixtures.tokenizer.record_llamacpp"
    )


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_default_gguf_tokenizes_like_llamacpp(default_tokenizer: Tokenizer, mode: str) -> None:
    found = mismatches(default_tokenizer, RECORDED["vocabularies"]["default"][mode], mode)
    assert not found, f"{len(found)} of {len(CORPUS)} texts differ:\n" + "\n".join(found[:10])


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_default_tokenizer_json_tokenizes_like_llamacpp(default_saved: Tokenizer, mode: str) -> None:
    found = mismatches(default_saved, RECORDED["vocabularies"]["default"][mode], mode)
    assert not found, f"{len(found)} of {len(CORPUS)} texts differ:\n" + "\n".join(found[:10])


SYNTHETIC_CASES = [(name, mode) for name in synthetic.SYNTHETIC for mode in MODES]


@pytest.mark.parametrize(("name", "mode"), SYNTHETIC_CASES, ids=[f"{n}-{m}" for n, m in SYNTHETIC_CASES])
def test_synthetic_gguf_tokenizes_like_llamacpp(
    synthetic_builds: dict[str, TokenizerBuild], name: str, mode: str
) -> None:
    tokenizer = saved(synthetic_builds[name].tokenizer)
    found = mismatches(tokenizer, RECORDED["vocabularies"][name][mode], mode)
    assert not found, f"{len(found)} of {len(CORPUS)} texts differ:\n" + "\n".join(found[:10])


# --- pre-tokenizers, one behaviour each -------------------------------------------------------------

PRE_TOKENIZER_CASES = [
    ("bpe-smollm", "12345", ["1", "2", "3", "4", "5"]),  # every digit alone
    ("bpe-llama-bpe", "12345", ["123", "45"]),  # \p{N}{1,3}
    ("bpe-gpt-2", "12345", ["12345"]),  # the whole run, then merges
    ("bpe-default", "12345", ["123", "45"]),  # \p{N}+, then groups of three ASCII digits
    ("bpe-llama-bpe", " zebra", ["Ġzebra"]),  # a whole pre-token in the vocabulary wins (ignore_merges)
    ("bpe-gpt-2", " zebra", ["Ġ", "z", "e", "b", "r", "a"]),  # only merges, and none builds it
    ("bpe-llama-bpe", "IT'S", ["I", "T", "'S"]),  # contractions in any case
    ("bpe-gpt-2", "IT'S", ["I", "T", "'", "S"]),  # lower-case contractions only
    ("bpe-gpt-2", "hi !!", ["h", "i", "Ġ!!"]),  # a space joins the punctuation after it
    ("bpe-default", "hi !!", ["h", "i", "Ġ", "!!"]),  # punctuation runs are cut out first
    ("spm", "Hello world", ["▁Hello", "▁world"]),  # a space prefix, ▁ for spaces
    ("spm-no-space-prefix", "Hello world", ["H", "ell", "o", "▁world"]),
    ("spm", "你好", ["▁", "你", "<0xE5>", "<0xA5>", "<0xBD>"]),  # 好 is no piece: its UTF-8 bytes
    ("spm", "<|im_start|>hi", ["<|im_start|>", "▁h", "i"]),  # text after a special token: prefix again
    ("spm", "12345", ["▁", "123", "4", "5"]),  # highest-scored pair first: 12 before ▁1
]


@pytest.mark.parametrize(
    ("name", "text", "expected"), PRE_TOKENIZER_CASES, ids=[f"{n}:{t!r}" for n, t, _ in PRE_TOKENIZER_CASES]
)
def test_pre_tokenizer_behaviour(
    synthetic_builds: dict[str, TokenizerBuild], name: str, text: str, expected: list[str]
) -> None:
    assert synthetic_builds[name].tokenizer.encode(text).tokens == expected


def test_default_gguf_splits_digits_one_by_one(default_tokenizer: Tokenizer) -> None:
    assert default_tokenizer.encode("2024").tokens == ["2", "0", "2", "4"]


# --- special tokens -----------------------------------------------------------------------------------


def test_control_token_text_is_a_control_token_only_with_special_parsing(
    default_tokenizer: Tokenizer,
) -> None:
    chatml = "<|im_start|>user\nhi<|im_end|>"
    assert encode(default_tokenizer, chatml, "special") == [1, 4093, 198, 6004, 2]
    plain_ids = encode(default_tokenizer, chatml, "plain")
    assert 1 not in plain_ids
    assert 2 not in plain_ids
    assert default_tokenizer.decode(plain_ids, skip_special_tokens=False) == chatml


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_user_defined_tokens_are_cut_out_in_both_modes(
    synthetic_builds: dict[str, TokenizerBuild], mode: str
) -> None:
    build = synthetic_builds["bpe-gpt-2"]
    tool_call = build.user_defined_tokens["<tool_call>"]
    assert encode(build.tokenizer, "a<tool_call>b", mode) == [
        build.tokenizer.token_to_id("a"),
        tool_call,
        build.tokenizer.token_to_id("b"),
    ]


def test_control_tokens_include_the_texts_llamacpp_promotes(
    synthetic_builds: dict[str, TokenizerBuild],
) -> None:
    # <|eot_id|> is written as a normal token; llama.cpp treats it as control (end of generation).
    build = synthetic_builds["bpe-smollm"]
    assert build.control_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|eot_id|>": 4}
    assert encode(build.tokenizer, "<|eot_id|>", "special") == [4]
    assert 4 not in encode(build.tokenizer, "<|eot_id|>", "plain")


def test_sentencepiece_unknown_token_is_special(synthetic_builds: dict[str, TokenizerBuild]) -> None:
    tokenizer = synthetic_builds["spm"].tokenizer
    assert encode(tokenizer, "<unk>", "special") == [0]
    assert 0 not in encode(tokenizer, "<unk>", "plain")


# --- decoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, ids=MODES)
def test_default_gguf_round_trips_every_text(default_tokenizer: Tokenizer, mode: str) -> None:
    for text in CORPUS:
        ids = encode(default_tokenizer, text, mode)
        assert default_tokenizer.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("name", list(synthetic.SYNTHETIC), ids=list(synthetic.SYNTHETIC))
def test_synthetic_round_trips_plain_text(synthetic_builds: dict[str, TokenizerBuild], name: str) -> None:
    build = synthetic_builds[name]
    # Like llama.cpp, SentencePiece vocabularies write spaces as ▁ (a literal ▁ decodes as a space) and
    # give text after a cut-out token a space prefix of its own: such texts cannot round-trip.
    cut_out = list(build.user_defined_tokens)
    texts = [
        t for t in CORPUS if build.model == "gpt2" or ("▁" not in t and not any(c in t for c in cut_out))
    ]
    for text in texts:
        ids = encode(build.tokenizer, text, "plain")
        assert build.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_are_skipped_when_decoding(default_tokenizer: Tokenizer) -> None:
    ids = encode(default_tokenizer, "<|im_start|>assistant\nHello<|im_end|>", "special")
    assert default_tokenizer.decode(ids) == "assistant\nHello"


# --- what is refused ----------------------------------------------------------------------------------


def write_vocabulary(
    path: Path, *, model: str, pre: str | None = None, tokens: list[str] | None = None
) -> gguf.GGUFReader:
    tokens = tokens or ["a", "b", "ab"]
    writer = synthetic.start_writer(path, model=model, tokens=tokens, types=[synthetic.NORMAL] * len(tokens))
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_merges(["a b"])
    writer.add_token_scores([0.0] * len(tokens))
    return gguf.GGUFReader(synthetic.finish(writer, path))


REFUSED = [
    ("bert", None, None, r"^tokenizer 'bert' is not supported \(supported: gpt2 with pre-tokenizer smollm, "),
    ("gpt2", "qwen2", None, r"^tokenizer 'gpt2' with pre-tokenizer 'qwen2' is not supported \(supported: "),
    ("gpt2", "gpt-2", ["a", "b", "ab", "a"], r"^GGUF vocabulary repeats token 'a' \(ids 0 and 3\)$"),
    (
        "llama",
        None,
        None,
        r"^GGUF SentencePiece vocabulary lacks 256 byte-fallback tokens \(first: <0x00>\)$",
    ),
]


@pytest.mark.parametrize(
    ("model", "pre", "tokens", "message"), REFUSED, ids=["bert", "qwen2", "duplicate", "no-byte-tokens"]
)
def test_unsupported_or_broken_tokenizers_are_refused(
    tmp_path: Path, model: str, pre: str | None, tokens: list[str] | None, message: str
) -> None:
    reader = write_vocabulary(tmp_path / "vocab.gguf", model=model, pre=pre, tokens=tokens)
    with pytest.raises(ModelError, match=message):
        build_tokenizer(reader)


def test_a_gguf_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "bare.gguf", "llama")
    reader = gguf.GGUFReader(synthetic.finish(writer, tmp_path / "bare.gguf"))
    with pytest.raises(ModelError, match=r"^GGUF has no tokenizer \(no tokenizer.ggml.model\)$"):
        build_tokenizer(reader)
