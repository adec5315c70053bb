"""Chat templates: conversations rendered as transformers renders them, split into template text and client
text so that no client text becomes a control token, then tokenized. No gRPC here.

Typical use::

    template = template_for_card(card)                  # or load_template("chatml", tokens)
    tokenizer = PromptTokenizer(Tokenizer.from_file(...))
    prompt = render_prompt(template, messages, tokenizer)
    fitted = fit_to_context(messages, lambda m: render_prompt(template, m, tokenizer),
                            context_window=card.context_window, reserved_tokens=max_tokens, truncate=False)
"""

from service.templates.builtins import BUILTIN_NAMES, builtin_template
from service.templates.context import FittedPrompt, check_budget, fit_to_context
from service.templates.jinja_template import JinjaChatTemplate
from service.templates.llama2 import Llama2ChatTemplate
from service.templates.loader import load_template, model_tokens, template_for_card
from service.templates.prompt import render_prompt
from service.templates.tokenization import PromptTokenizer
from service.templates.types import ChatTemplate, ModelTokens, RenderedPrompt, Segment, TemplateRules

__all__ = [
    "BUILTIN_NAMES",
    "ChatTemplate",
    "FittedPrompt",
    "JinjaChatTemplate",
    "Llama2ChatTemplate",
    "ModelTokens",
    "PromptTokenizer",
    "RenderedPrompt",
    "Segment",
    "TemplateRules",
    "builtin_template",
    "check_budget",
    "fit_to_context",
    "load_template",
    "model_tokens",
    "render_prompt",
    "template_for_card",
]
