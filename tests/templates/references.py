"""Loading the committed reference renderings (tests/fixtures/templates, see its README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.requests import Message, Role, ToolCall, ToolSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"


def load_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def message(entry: dict[str, Any]) -> Message:
    """An OpenAI-shaped message dict as Parley's request type."""
    calls = tuple(
        ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
        for call in entry.get("tool_calls", [])
    )
    return Message(
        Role(entry["role"]),
        entry.get("content", ""),
        name=entry.get("name"),
        tool_calls=calls,
        tool_call_id=entry.get("tool_call_id"),
    )


def tool(entry: dict[str, Any]) -> ToolSpec:
    function = entry["function"]
    return ToolSpec(function["name"], function.get("description", ""), json.dumps(function["parameters"]))


def template_source(origin: str, gguf_source: str) -> str:
    """The Jinja source a reference case was rendered from."""
    if origin == "gguf":
        return gguf_source
    if origin.startswith("hub:"):
        return (FIXTURES / "hub" / origin.removeprefix("hub:")).read_text(encoding="utf-8")
    if origin == "llama.cpp:OpenHermes":
        cases = load_json("llama_cpp_cases.json")
        return str(next(c["template"] for c in cases if c["name"] == "teknium/OpenHermes-2.5-Mistral-7B"))
    return (FIXTURES / origin).read_text(encoding="utf-8")
