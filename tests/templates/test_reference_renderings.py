"""Renderings and token ids against references recorded from other implementations.

- llama_cpp_cases.json: llama.cpp's tests/test-chat-template.cpp cases (real templates of 32 models and
  llama.cpp's expected output), kept where transformers renders the same string.
- hf_reference.json: transformers 5's `apply_chat_template` on the default model's GGUF template, on hub
  templates (Qwen2.5 and Llama-3.1 with tools) and on vendor templates of the built-ins; token ids with the
  default model's tokenizer (`sanitize_control_tokens=True` for the injection case).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.templates import JinjaChatTemplate, ModelTokens, PromptTokenizer, Segment, builtin_template
from service.templates.jinja_env import CompiledTemplate
from tests.templates.conftest import FIXED_NOW
from tests.templates.references import load_json, message, template_source, tool

LLAMA_CPP_CASES: list[dict[str, Any]] = load_json("llama_cpp_cases.json")
HF_REFERENCE: dict[str, Any] = load_json("hf_reference.json")
HF_CASES: list[dict[str, Any]] = HF_REFERENCE["cases"]
JINJA_CASES = [case for case in HF_CASES if case["builtin"] is None]


def _text(segments: list[Segment]) -> str:
    return "".join(segment.text for segment in segments)


def _forms(value: str) -> set[str]:
    """How a template may print a string: as is, trimmed, or JSON-escaped (`tojson`)."""
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    return {value, value.strip(), value.lstrip(), value.rstrip(), escaped}


def _client_text_is_attributed(segments: list[Segment], case_messages: list[dict[str, Any]]) -> None:
    """Every client segment of message content holds that content as the template printed it (for a
    continued final message: a prefix of it, the message having been cut after its text)."""
    for segment in segments:
        assert segment.trusted or segment.field is not None
        if segment.field is None or not segment.field.endswith(".content"):
            continue
        index = int(segment.field.removeprefix("messages[").split("]")[0])
        content = case_messages[index].get("content", "")
        forms = _forms(content) | {f.rstrip() for f in _forms(content + "CONTINUE_FINAL_MESSAGE_TAG ")}
        assert segment.text in forms or any(f.startswith(segment.text) and segment.text for f in forms)


def test_fixtures_are_not_empty() -> None:
    assert len(LLAMA_CPP_CASES) >= 30
    assert len(HF_CASES) >= 30
    assert str(HF_REFERENCE["transformers"]).startswith("5.")


@pytest.mark.parametrize("case", LLAMA_CPP_CASES, ids=[case["name"] for case in LLAMA_CPP_CASES])
def test_llama_cpp_template_cases(case: dict[str, Any]) -> None:
    tokens = ModelTokens(bos=case["bos_token"], eos=case["eos_token"])
    template = JinjaChatTemplate(CompiledTemplate(case["template"], case["name"]), tokens, name=case["name"])
    segments = template.render([message(m) for m in case["messages"]], add_generation_prompt=True)
    assert _text(segments) == case["expected"]
    assert len(segments) > 1, "expected the placeholder split, not the whole-rendering fallback"
    _client_text_is_attributed(segments, case["messages"])


@pytest.mark.parametrize("case", JINJA_CASES, ids=[case["id"] for case in JINJA_CASES])
def test_transformers_renderings(
    case: dict[str, Any], smollm_source: str, smollm_tokens: ModelTokens, prompt_tokenizer: PromptTokenizer
) -> None:
    tokens = ModelTokens(
        bos=case["tokens"].get("bos_token"),
        eos=case["tokens"].get("eos_token"),
        pad=case["tokens"].get("pad_token"),
        control=smollm_tokens.control,
    )
    compiled = CompiledTemplate(template_source(case["template"], smollm_source), case["template"])
    template = JinjaChatTemplate(compiled, tokens, name=case["id"], now=lambda: FIXED_NOW)
    segments = template.render(
        [message(m) for m in case["messages"]],
        tools=[tool(t) for t in case["tools"] or []],
        add_generation_prompt=case["add_generation_prompt"],
        continue_final_message=case["continue_final_message"],
    )
    assert _text(segments) == case["text"]
    _client_text_is_attributed(segments, case["messages"])
    if case["token_ids"] is not None:
        ids = prompt_tokenizer.encode(segments)
        assert ids == case["token_ids"]
        assert prompt_tokenizer.decode(ids) == case["text"]


BUILTIN_CASES = [case for case in HF_CASES if case["builtin"] is not None]
# Vendor control tokens the default tokenizer lacks: built-ins check the model has them, so lend fake ids.
VENDOR_CONTROL = {"<|end|>": 90001, "<start_of_turn>": 90002, "<end_of_turn>": 90003}


@pytest.mark.parametrize("case", BUILTIN_CASES, ids=[case["id"] for case in BUILTIN_CASES])
def test_builtins_render_like_their_vendor_templates(
    case: dict[str, Any], smollm_tokens: ModelTokens
) -> None:
    tokens = ModelTokens(
        bos=case["tokens"].get("bos_token"),
        eos=case["tokens"].get("eos_token"),
        control={**smollm_tokens.control, **VENDOR_CONTROL},
    )
    template = builtin_template(case["builtin"], tokens)
    segments = template.render(
        [message(m) for m in case["messages"]],
        add_generation_prompt=case["add_generation_prompt"],
        continue_final_message=case["continue_final_message"],
    )
    assert _text(segments) == case["text"]


LLAMA_CPP_BUILTINS = {
    "chatml": "teknium/OpenHermes-2.5-Mistral-7B",
    "llama-3": "Llama-3",
    "mistral": "mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)",
    "phi-3": "Phi-3-small",
    "gemma": "google/gemma-7b-it",
}
LLAMA3_CONTROL = {"<|start_header_id|>": 1, "<|end_header_id|>": 2, "<|eot_id|>": 3}


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_BUILTINS))
def test_builtins_match_llama_cpp_expected_output(name: str) -> None:
    case = next(c for c in LLAMA_CPP_CASES if c["name"] == LLAMA_CPP_BUILTINS[name])
    control = {"<|im_start|>": 1, "<|im_end|>": 2, **LLAMA3_CONTROL, **VENDOR_CONTROL}
    template = builtin_template(
        name, ModelTokens(bos=case["bos_token"], eos=case["eos_token"], control=control)
    )
    segments = template.render([message(m) for m in case["messages"]], add_generation_prompt=True)
    assert _text(segments) == case["expected"]
