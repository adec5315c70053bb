"""The Jinja environment Hugging Face transformers renders chat templates in, reproduced: a sandbox that
cannot mutate its inputs, `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson`
without HTML escaping (json.dumps semantics with indent, separators and sort_keys), `raise_exception`
and `strftime_now`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.errors import InvalidArgument, ModelError


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers replaces Jinja's tojson, which HTML-escapes `<>&'` and defaults to ASCII output.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class CompiledTemplate:
    """A parsed chat template; `origin` names its source (a file, the model card) in error messages."""

    def __init__(self, source: str, origin: str) -> None:
        env = _environment()
        try:
            self._template = env.from_string(source)
            variables = jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise ModelError(f"{origin}:{exc.lineno}: chat template syntax error: {exc.message}") from None
        self.source = source
        self.origin = origin
        self.variables: frozenset[str] = frozenset(variables)  # names the template reads from its context

    def render(self, context: dict[str, Any], *, instant: datetime) -> str:
        """Render; a template that raises (`raise_exception`, an undefined name, a type error on the given
        conversation) becomes InvalidArgument carrying the template's own message. `strftime_now` reads
        `instant`, so the renders of one request agree to the second."""
        try:
            return self._template.render(**context, strftime_now=instant.strftime)
        except jinja2.TemplateError as exc:
            raise InvalidArgument("messages", f"the chat template rejected the conversation: {exc}") from None
        except Exception as exc:  # a template is code: any failure on this input is the input's to report
            raise InvalidArgument(
                "messages", f"the chat template failed on this conversation: {type(exc).__name__}: {exc}"
            ) from None
