"""The Jinja environment behaves as transformers' does: filters, globals, whitespace control, sandbox."""

from __future__ import annotations

from datetime import datetime

import pytest

from service.errors import InvalidArgument, ModelError
from service.requests import Message, Role, ToolSpec
from service.templates import JinjaChatTemplate, ModelTokens
from service.templates.jinja_env import CompiledTemplate

NOW = datetime(2025, 3, 4, 5, 6, 7)
TOKENS = ModelTokens(bos="<s>", eos="</s>")
HELLO = [Message(Role.USER, "Hello")]


def render(source: str, messages: list[Message] | None = None, **options: object) -> str:
    template = JinjaChatTemplate(CompiledTemplate(source, "test.jinja"), TOKENS, name="test", now=lambda: NOW)
    segments = template.render(messages or HELLO, **options)  # type: ignore[arg-type]
    return "".join(segment.text for segment in segments)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{'a': '<b>&</b>'} | tojson", '{"a": "<b>&</b>"}'),
        ("'é ✓' | tojson", '"é ✓"'),
        ("'é' | tojson(ensure_ascii=true)", '"\\u00e9"'),
        ("{'a': [1, 2]} | tojson(indent=2)", '{\n  "a": [\n    1,\n    2\n  ]\n}'),
        ("{'a': 1, 'b': 2} | tojson(separators=(',', ':'))", '{"a":1,"b":2}'),
        ("{'b': 1, 'a': 2} | tojson(sort_keys=true)", '{"a": 2, "b": 1}'),
    ],
    ids=["no-html-escaping", "unicode-kept", "ascii-on-request", "indent", "separators", "sort-keys"],
)
def test_tojson_is_json_dumps(expression: str, expected: str) -> None:
    assert render("{{ " + expression + " }}") == expected


def test_strftime_now_reads_the_request_clock() -> None:
    assert render("{{ strftime_now('%d %b %Y %H:%M') }}") == "04 Mar 2025 05:06"


def test_special_tokens_are_variables_and_unset_ones_undefined() -> None:
    assert render("{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}") == "<s>|</s>|False"


def test_trim_and_lstrip_blocks() -> None:
    source = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    assert render(source) == "Hello\n"


def test_loop_controls() -> None:
    messages = [Message(Role.USER, "a"), Message(Role.ASSISTANT, "b"), Message(Role.USER, "c")]
    skip = "{% if m.role == 'assistant' %}{% continue %}{% endif %}"
    source = "{% for m in messages %}" + skip + "{{ m.content }}{% endfor %}"
    assert render(source, messages) == "ac"
    assert render("{% for m in messages %}{{ m.content }}{% break %}{% endfor %}", messages) == "a"


def test_generation_prompt_and_tools_variables() -> None:
    source = "{{ add_generation_prompt }} {{ tools }} {{ documents }}"
    assert render(source, add_generation_prompt=False) == "False None None"
    tools = [ToolSpec("f", "", '{"type": "object"}')]
    assert render("{{ tools | tojson }}", tools=tools) == (
        '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]'
    )


def test_messages_leave_out_unset_fields() -> None:
    assert render("{{ messages[0] | tojson }}") == '{"role": "user", "content": "Hello"}'


def test_raise_exception_becomes_invalid_argument_with_its_message() -> None:
    with pytest.raises(
        InvalidArgument, match="rejected the conversation: Only one user turn, please"
    ) as raised:
        render("{{ raise_exception('Only one user turn, please') }}")
    assert raised.value.field == "messages"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "{{ messages[0].content.__class__.__mro__ }}",
            "rejected the conversation: access to attribute '__class__'",
        ),
        ("{{ messages.append(1) }}", "rejected the conversation: access to attribute 'append'"),
        ("{{ undefined_thing.attribute }}", "'undefined_thing' is undefined"),
        ("{{ messages[0].content + 1 }}", "failed on this conversation: TypeError"),
    ],
    ids=["sandbox", "immutable", "undefined", "type-error"],
)
def test_template_failures_are_invalid_argument(source: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        render(source)


def test_syntax_error_names_origin_and_line() -> None:
    with pytest.raises(ModelError, match=r"^test\.jinja:3: chat template syntax error: .*'endfor'"):
        CompiledTemplate("{% for m in messages %}\n{{ m.content }}\n{% endif %}", "test.jinja")


def test_trailing_newline_of_a_template_file_is_dropped() -> None:
    assert render("{{ messages[0].content }}\n") == "Hello"
