"""The default model's chat template and tokenizer, straight from its GGUF."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer

from service.templates import JinjaChatTemplate, ModelTokens, PromptTokenizer
from service.templates.jinja_env import CompiledTemplate

FIXED_NOW = datetime(2024, 7, 26, 9, 30, 0)


@pytest.fixture(scope="session")
def smollm_reader(default_gguf: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(default_gguf)


@pytest.fixture(scope="session")
def smollm_source(smollm_reader: gguf.GGUFReader) -> str:
    return str(smollm_reader.fields["tokenizer.chat_template"].contents())


@pytest.fixture(scope="session")
def smollm_tokens(smollm_reader: gguf.GGUFReader, default_tokenizer: Tokenizer) -> ModelTokens:
    added = default_tokenizer.get_added_tokens_decoder()
    control = {token.content: token_id for token_id, token in added.items() if token.special}
    spelling = {token_id: text for text, token_id in control.items()}
    bos = int(smollm_reader.fields["tokenizer.ggml.bos_token_id"].contents())
    eos = int(smollm_reader.fields["tokenizer.ggml.eos_token_id"].contents())
    pad = int(smollm_reader.fields["tokenizer.ggml.padding_token_id"].contents())
    return ModelTokens(bos=spelling[bos], eos=spelling[eos], pad=spelling[pad], control=control)


@pytest.fixture(scope="session")
def prompt_tokenizer(default_tokenizer: Tokenizer) -> PromptTokenizer:
    return PromptTokenizer(default_tokenizer)


@pytest.fixture(scope="session")
def smollm_template(smollm_source: str, smollm_tokens: ModelTokens) -> JinjaChatTemplate:
    compiled = CompiledTemplate(smollm_source, "SmolLM2 GGUF tokenizer.chat_template")
    return JinjaChatTemplate(compiled, smollm_tokens, name="smollm2", now=lambda: FIXED_NOW)
