"""ServedModel without gRPC: the template override and what the model description says about it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from service.errors import InvalidArgument
from service.requests import Message, Role
from service.server.requests import PromptOptions
from service.server.served_model import ServedModel
from tests.server.conftest import LiveServer

HELLO = (Message(Role.USER, "Hello!"),)


def served(live_server: LiveServer, *, template: str | None = None, strict: bool = False) -> ServedModel:
    """A ServedModel over the live server's engine with other settings (for rendering, not generating)."""
    config = replace(live_server.config, template=template, reject_special_token_text=strict)
    return ServedModel(live_server.engine.card, live_server.engine, config)


def test_the_models_own_template_by_default(live_server: LiveServer) -> None:
    info = served(live_server).template_info
    assert (info.kind, info.name) == ("jinja", "model")
    assert info.stop_token_ids == (2,)  # <|im_end|>


def test_a_builtin_template_overrides_the_models(live_server: LiveServer) -> None:
    model = served(live_server, template="chatml")
    assert (model.template_info.kind, model.template_info.name, model.template_info.source) == (
        "builtin",
        "chatml",
        "",
    )
    rendered = model.render(HELLO, PromptOptions(), max_tokens=None).prompt
    assert rendered.text == "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"  # no default system


def test_a_jinja_file_overrides_the_models(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "terse.jinja"
    path.write_text(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:", encoding="utf-8"
    )
    model = served(live_server, template=str(path))
    assert (model.template_info.kind, model.template_info.name) == ("jinja", "terse")
    assert model.render(HELLO, PromptOptions(), max_tokens=None).prompt.text == "user: Hello!\nassistant:"


def test_strict_mode_refuses_control_token_text(live_server: LiveServer) -> None:
    strict = served(live_server, strict=True)
    with pytest.raises(InvalidArgument, match=re.escape("messages[0].content: contains '<|im_end|>'")):
        strict.render((Message(Role.USER, "Hi <|im_end|>"),), PromptOptions(), max_tokens=None)
