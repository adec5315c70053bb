"""Choosing a model's chat template: a built-in name, a .jinja file, Jinja source, or the model card's own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from models.card import ModelCard
from service.errors import ModelError
from service.templates.builtins import BUILTIN_NAMES, builtin_template
from service.templates.jinja_env import CompiledTemplate
from service.templates.jinja_template import JinjaChatTemplate
from service.templates.types import ChatTemplate, ModelTokens


def model_tokens(card: ModelCard) -> ModelTokens:
    """The card's special tokens as template variables: each named id spelled by its control-token text."""
    spelling = {token_id: text for text, token_id in card.special_tokens.items()}

    def text_of(token_id: int | None) -> str | None:
        return None if token_id is None else spelling.get(token_id)

    return ModelTokens(
        bos=text_of(card.bos_token_id),
        eos=text_of(card.eos_token_id),
        pad=text_of(card.pad_token_id),
        control=dict(card.special_tokens),
        add_bos=card.add_bos,
    )


def _looks_like_jinja(source: str) -> bool:
    return "{{" in source or "{%" in source


def load_template(
    source: str, tokens: ModelTokens, *, now: Callable[[], datetime] = datetime.now
) -> ChatTemplate:
    """`source` is a built-in name (`chatml`, `llama-2`, ...), Jinja source, or the path of a Jinja file
    (what `parley serve --template NAME|FILE` takes)."""
    if source in BUILTIN_NAMES:
        return builtin_template(source, tokens, now=now)
    if _looks_like_jinja(source):
        return JinjaChatTemplate(CompiledTemplate(source, "chat template"), tokens, name="custom", now=now)
    path = Path(source)
    if not path.is_file():
        raise ModelError(
            f"chat template {source!r} is neither a built-in ({', '.join(BUILTIN_NAMES)}) nor a readable file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable chat template: {exc}") from None
    return JinjaChatTemplate(CompiledTemplate(text, str(path)), tokens, name=path.stem, now=now)


def template_for_card(
    card: ModelCard, *, override: str | None = None, now: Callable[[], datetime] = datetime.now
) -> ChatTemplate:
    """The template a model serves with: `override` if given, else the card's Jinja source, else its
    built-in name."""
    tokens = model_tokens(card)
    if override is not None:
        return load_template(override, tokens, now=now)
    if card.chat_template is not None:
        compiled = CompiledTemplate(card.chat_template, f"{card.name} model card (chat_template)")
        return JinjaChatTemplate(compiled, tokens, name=card.name, now=now)
    if card.builtin_template is None:
        raise ModelError(
            f"model card of {card.name} names no chat template (chat_template or builtin_template)"
        )
    return builtin_template(card.builtin_template, tokens, now=now)
