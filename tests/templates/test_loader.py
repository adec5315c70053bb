"""Choosing a template: built-in names, Jinja files and source, the model card's own."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from models.card import ModelCard, SourceInfo
from service.errors import ModelError
from service.requests import Message, Role
from service.templates import (
    JinjaChatTemplate,
    Llama2ChatTemplate,
    ModelTokens,
    load_template,
    model_tokens,
    template_for_card,
)

TOKENS = ModelTokens(bos="<|im_start|>", eos="<|im_end|>", control={"<|im_start|>": 1, "<|im_end|>": 2})
HELLO = [Message(Role.USER, "Hello")]


def text(template: object) -> str:
    assert isinstance(template, JinjaChatTemplate)
    return "".join(segment.text for segment in template.render(HELLO))


def make_card(smollm_source: str) -> ModelCard:
    return ModelCard(
        name="smollm2-135m-instruct",
        architecture="llama",
        n_layers=30,
        hidden_size=576,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        ffn_size=1536,
        vocab_size=49152,
        context_window=8192,
        train_context=8192,
        rope_theta=100000.0,
        rms_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        add_bos=False,
        special_tokens={"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
        stop_token_ids=[2],
        chat_template=smollm_source,
        builtin_template=None,
        precision="int4",
        source=SourceInfo("SmolLM2-135M-Instruct.Q4_1.gguf", "0" * 64, 1),
        converter_version="test",
    )


def test_builtin_by_name() -> None:
    assert (
        text(load_template("chatml", TOKENS)) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_jinja_source() -> None:
    assert text(load_template("{{ messages[0].content | upper }}", TOKENS)) == "HELLO"


def test_jinja_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text("[{{ messages[0].content }}]\n", encoding="utf-8")
    template = load_template(str(path), TOKENS)
    assert template.name == "mine"
    assert text(template) == "[Hello]"


def test_jinja_file_with_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}", encoding="utf-8")
    with pytest.raises(ModelError, match=rf"^{path}:2: chat template syntax error"):
        load_template(str(path), TOKENS)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(
        ModelError, match=r"'chatml2' is neither a built-in \(chatml, llama-2, .*\) nor a readable"
    ):
        load_template("chatml2", TOKENS)


def test_card_tokens(smollm_source: str) -> None:
    tokens = model_tokens(make_card(smollm_source))
    assert (tokens.bos, tokens.eos, tokens.pad, tokens.unk) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        None,
    )
    assert tokens.control["<|endoftext|>"] == 0


def test_card_jinja_template(smollm_source: str) -> None:
    template = template_for_card(make_card(smollm_source))
    assert template.name == "smollm2-135m-instruct"
    assert template.end_of_turn_tokens == ("<|im_end|>",)
    assert text(template).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_card_builtin_and_override(smollm_source: str) -> None:
    card = replace(make_card(smollm_source), chat_template=None, builtin_template="llama-2")
    assert isinstance(template_for_card(card), Llama2ChatTemplate)
    assert template_for_card(card, override="chatml").name == "chatml"


def test_templates_do_not_import_grpc() -> None:
    code = "import sys, service.templates; sys.exit(any(m.split('.')[0] == 'grpc' for m in sys.modules))"
    repo = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, check=False).returncode == 0
