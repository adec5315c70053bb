"""Built-in named chat templates, each with the rules, control tokens and stop strings of its format.

The Jinja sources are Parley's own, written to render exactly what each vendor's template renders
(tests/templates compares them with reference renderings). `llama-2` is defined on tokens and lives in
llama2.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.errors import ModelError
from service.requests import Role
from service.templates.jinja_env import CompiledTemplate
from service.templates.jinja_template import JinjaChatTemplate
from service.templates.llama2 import Llama2ChatTemplate
from service.templates.types import ChatTemplate, ModelTokens, TemplateRules

_CHAT_ROLES = frozenset({Role.SYSTEM, Role.USER, Role.ASSISTANT})
_CHAT = TemplateRules(roles=_CHAT_ROLES, final_roles=frozenset({Role.USER, Role.ASSISTANT}))
_ALTERNATING = TemplateRules(
    roles=_CHAT_ROLES, alternate=True, final_roles=frozenset({Role.USER, Role.ASSISTANT})
)


@dataclass(frozen=True)
class Builtin:
    source: str
    rules: TemplateRules
    turn_ends: tuple[str, ...]  # control tokens that end the model's turn, besides the model's EOS
    required: tuple[str, ...]  # control tokens the model must have for the format to mean anything
    stop_strings: tuple[str, ...] = ()


def _lines(*lines: str) -> str:
    return "".join(lines)


CHATML = _lines(
    "{%- for message in messages -%}",
    "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}",
)

LLAMA3 = _lines(  # Meta-Llama-3-Instruct: BOS once, every content trimmed
    "{%- for message in messages -%}",
    "{%- if loop.first %}{{ bos_token }}{% endif -%}",
    "{{ '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n'",
    " + message.content | trim + '<|eot_id|>' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif -%}",
)

MISTRAL = _lines(  # Mistral-7B-Instruct v0.1/v0.2 ("v1"): the system message joins the first user turn
    "{%- set system = messages[0].content if messages[0].role == 'system' else none -%}",
    "{{ bos_token }}",
    "{%- for message in messages if message.role != 'system' -%}",
    "{%- if message.role == 'user' -%}",
    "{%- set prefix = system + '\\n\\n' if loop.first and system is not none else '' -%}",
    "{{ ' [INST] ' + prefix + message.content + ' [/INST]' }}",
    "{%- else %}{{ ' ' + message.content + eos_token }}{% endif -%}",
    "{%- endfor -%}",
)

ZEPHYR = _lines(  # HuggingFaceH4/zephyr-7b-beta: every turn closed by EOS and a newline
    "{%- for message in messages -%}",
    "{{ '<|' + message.role + '|>\\n' + message.content + eos_token + '\\n' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif -%}",
)

PHI3 = _lines(  # Phi-3 / Phi-3.5-mini: EOS closes a conversation that does not ask for a reply
    "{%- for message in messages -%}",
    "{{ '<|' + message.role + '|>\\n' + message.content + '<|end|>\\n' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif -%}",
)

GEMMA = _lines(  # Gemma instruct: no system role, the assistant is `model`, contents trimmed
    "{{ bos_token }}",
    "{%- for message in messages -%}",
    "{%- set role = 'model' if message.role == 'assistant' else message.role -%}",
    "{{ '<start_of_turn>' + role + '\\n' + message.content | trim + '<end_of_turn>\\n' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif -%}",
)

PLAIN = _lines(  # base models: a system text, then `User:` / `Assistant:` lines
    "{%- for message in messages -%}",
    "{%- if message.role == 'system' %}{{ message.content + '\\n\\n' }}",
    "{%- elif message.role == 'user' %}{{ 'User: ' + message.content + '\\n' }}",
    "{%- else %}{{ 'Assistant: ' + message.content + '\\n' }}{% endif -%}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt %}{{ 'Assistant:' }}{% endif -%}",
)

BUILTINS: dict[str, Builtin] = {
    "chatml": Builtin(CHATML, _CHAT, ("<|im_end|>",), ("<|im_start|>", "<|im_end|>")),
    "llama-3": Builtin(
        LLAMA3, _CHAT, ("<|eot_id|>",), ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    ),
    "mistral": Builtin(MISTRAL, _ALTERNATING, (), ()),
    "zephyr": Builtin(ZEPHYR, _CHAT, (), (), stop_strings=("<|user|>",)),
    "phi-3": Builtin(PHI3, _CHAT, ("<|end|>",), ("<|end|>",)),
    "gemma": Builtin(
        GEMMA,
        TemplateRules(
            roles=frozenset({Role.USER, Role.ASSISTANT}),
            alternate=True,
            final_roles=frozenset({Role.USER, Role.ASSISTANT}),
        ),
        ("<end_of_turn>",),
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    "plain": Builtin(PLAIN, _CHAT, (), (), stop_strings=("\nUser:",)),
}

BUILTIN_NAMES: tuple[str, ...] = (
    "chatml",
    "llama-2",
    "llama-3",
    "mistral",
    "zephyr",
    "phi-3",
    "gemma",
    "plain",
)


def builtin_template(
    name: str, tokens: ModelTokens, *, now: Callable[[], datetime] = datetime.now
) -> ChatTemplate:
    """The built-in template `name` for a model with `tokens`; ModelError if the model lacks its tokens."""
    if name == "llama-2":
        return Llama2ChatTemplate(tokens)
    spec = BUILTINS.get(name)
    if spec is None:
        raise ModelError(f"no built-in chat template named {name!r} (built-ins: {', '.join(BUILTIN_NAMES)})")
    missing = [text for text in spec.required if text not in tokens.control]
    if missing:
        raise ModelError(
            f"the '{name}' chat template needs the control tokens {', '.join(missing)}, "
            "which this model's tokenizer does not have"
        )
    source = spec.source
    if name == "plain" and tokens.add_bos and tokens.bos is not None:
        source = "{{ bos_token }}" + source  # a base model that expects BOS gets it from the template
    compiled = CompiledTemplate(source, f"built-in chat template '{name}'")
    unset = sorted(compiled.variables & ({"bos_token", "eos_token"} - set(tokens.template_variables())))
    if unset:
        raise ModelError(
            f"the '{name}' chat template writes {' and '.join(unset)}, which this model does not define"
        )
    turn_ends = spec.turn_ends + ((tokens.eos,) if tokens.eos is not None else ())
    turn_ends = tuple(dict.fromkeys(turn_ends))
    return JinjaChatTemplate(
        compiled,
        tokens,
        name=name,
        rules=spec.rules,
        stop_strings=tuple(dict.fromkeys(turn_ends + spec.stop_strings)),
        end_of_turn_tokens=turn_ends,
        now=now,
    )
