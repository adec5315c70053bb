"""One served model: its card, tokenizer, chat template and engine, and everything that turns a plain request
into what the engine is fed (prompt ids, validated sampling parameters). No gRPC here."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from tokenizers import Tokenizer

from models.card import ModelCard
from service.config import ServerConfig
from service.engine.async_engine import AsyncEngine
from service.engine.engine import Engine, EngineConfig
from service.engine.events import EngineEvent, GenerationRequest
from service.engine.factory import create_runner
from service.engine.runner import RunnerOptions
from service.errors import InvalidArgument, NotFound, Unavailable, Unimplemented
from service.requests import Message, Role
from service.sampling import SamplingParams
from service.server.requests import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    PromptOptions,
    RenderRequest,
    SamplingOverrides,
    TokenizeRequest,
    sampling_with,
)
from service.server.spelling import TokenSpeller
from service.templates import (
    BUILTIN_NAMES,
    ChatTemplate,
    FittedPrompt,
    JinjaChatTemplate,
    PromptTokenizer,
    RenderedPrompt,
    fit_to_context,
    render_prompt,
    template_for_card,
)

log = logging.getLogger(__name__)

PARLEY_VERSION = "0.1.0"


@dataclass(frozen=True)
class TemplateInfo:
    kind: Literal["builtin", "jinja"]
    name: str  # a built-in's name; `model` for the card's own Jinja; else the template file's name
    source: str  # Jinja source; empty for a built-in
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]


def describe_template(template: ChatTemplate, override: str | None, card: ModelCard) -> TemplateInfo:
    """What ModelInfo says about the template in use: a built-in by name, or Jinja with its source."""
    control = card.special_tokens
    stop_ids = tuple(control[text] for text in template.end_of_turn_tokens if text in control)
    source = template.compiled.source if isinstance(template, JinjaChatTemplate) else ""
    if override is None and card.chat_template is not None:
        return TemplateInfo("jinja", "model", source, template.stop_strings, stop_ids)
    chosen = override if override is not None else card.builtin_template
    if chosen in BUILTIN_NAMES:
        return TemplateInfo("builtin", template.name, "", template.stop_strings, stop_ids)
    return TemplateInfo("jinja", template.name, source, template.stop_strings, stop_ids)  # a file's stem


@dataclass(frozen=True)
class PreparedChat:
    prompt: FittedPrompt
    sampling: SamplingParams  # validated, with the template's stops


class ServedModel:
    def __init__(self, card: ModelCard, engine: Engine, config: ServerConfig) -> None:
        self.card = card
        self.name = card.name
        self.engine = engine
        self.generator = AsyncEngine(engine)
        self.config = config
        self.tokenizer = engine.tokenizer  # control-token text in input becomes control tokens
        self._plain = Tokenizer.from_str(self.tokenizer.to_str())  # control-token text stays text
        self._plain.encode_special_tokens = True
        self.prompt_tokenizer = PromptTokenizer(self.tokenizer)
        self.speller = TokenSpeller(self.tokenizer)
        self.template = template_for_card(card, override=config.template)
        self.template_info = describe_template(self.template, config.template, card)
        self.context_window = engine.capacity
        self.fingerprint = f"{card.source.sha256[:16]}-c{card.converter_version}-parley{PARLEY_VERSION}"
        self.ready = False

    @staticmethod
    def load(config: ServerConfig) -> ServedModel:
        """Open the model directory and build its engine (not started: see warm_up)."""
        model_dir = config.model_dir
        options = RunnerOptions(
            max_batch=config.max_batch,
            kv_capacity=config.kv_capacity,
            threads=config.threads,
            device=config.device,
            kernels=config.kernels,
        )
        runner = create_runner(model_dir, options)
        card = runner.card
        tokenizer = Tokenizer.from_file(str(model_dir / card.tokenizer_file))
        engine_config = EngineConfig(
            max_queued=config.max_queued, park_idle_seconds=config.session_idle_seconds
        )
        return ServedModel(card, Engine(runner, tokenizer, engine_config), config)

    def warm_up(self) -> None:
        """Start the engine (one warm-up run first). Blocking: seconds on a CPU."""
        self.engine.start()
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self.engine.stop()

    def check_serving(self) -> None:
        if not self.ready:
            raise Unavailable(f"model {self.name} is warming up; retry in a few seconds")
        if not self.engine.healthy:
            raise Unavailable(f"model {self.name} is not serving: {self.engine.fatal_error or 'stopped'}")

    # --- prompts ---------------------------------------------------------------------------------
    def prepare_chat(self, request: ChatRequest) -> PreparedChat:
        """The prompt and sampling parameters of a chat request; InvalidArgument names a bad field."""
        if request.prompt.tools:
            raise Unimplemented("tools: tool calling is not available on this server yet; leave tools unset")
        sampling = self.sampling(request.sampling, chat=True)
        prompt = self.render(request.messages, request.prompt, max_tokens=sampling.max_tokens)
        return PreparedChat(prompt, sampling)

    def render_request(self, request: RenderRequest) -> FittedPrompt:
        """RenderPrompt: exactly the prompt a chat completion with the same fields would be fed."""
        max_tokens = self.config.default_max_tokens if request.max_tokens is None else request.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise InvalidArgument("max_tokens", f"must be >= 1, got {max_tokens}")
        return self.render(request.messages, request.prompt, max_tokens=max_tokens)

    def render(
        self, messages: Sequence[Message], options: PromptOptions, *, max_tokens: int | None
    ) -> FittedPrompt:
        """The prompt of a conversation, fitted to the context window (dropping the oldest turns when the
        request allows it). InvalidArgument names the field when the conversation cannot be rendered."""
        if not messages:
            raise InvalidArgument("messages", "must hold at least one message")
        continuing = _continuation(messages, options)
        add_generation_prompt = (
            not continuing if options.add_generation_prompt is None else options.add_generation_prompt
        )

        def render(kept: Sequence[Message]) -> RenderedPrompt:
            return render_prompt(
                self.template,
                kept,
                self.prompt_tokenizer,
                tools=options.tools,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continuing,
                strict=self.config.reject_special_token_text,
            )

        # Without truncation a max_tokens beyond the room left is no error (the reply ends with
        # FINISH_REASON_CONTEXT_LENGTH); only the prompt itself must leave room for one token.
        reserved = (max_tokens or 1) if options.truncate else 1
        return fit_to_context(
            messages,
            render,
            context_window=self.context_window,
            reserved_tokens=reserved,
            truncate=options.truncate,
        )

    def completion_prompt(self, request: CompletionRequest) -> tuple[int, ...]:
        if bool(request.text) == bool(request.token_ids):
            raise InvalidArgument("prompt", "set exactly one of prompt and prompt_token_ids")
        if request.token_ids:
            self._check_token_ids(request.token_ids, "prompt_token_ids")
            ids = request.token_ids
        else:
            codec = self.tokenizer if request.parse_special_tokens else self._plain
            ids = tuple(codec.encode(request.text, add_special_tokens=False).ids)
            add_bos = self.card.add_bos if request.add_bos is None else request.add_bos
            if add_bos and self.card.bos_token_id is not None:
                ids = (self.card.bos_token_id, *ids)
        if len(ids) >= self.context_window:
            field = "prompt_token_ids" if request.token_ids else "prompt"
            raise InvalidArgument(
                field,
                f"the prompt is {len(ids)} tokens, but the context window is {self.context_window} tokens; "
                "it must be shorter than the window (a raw prompt has no turns to drop)",
            )
        return ids

    # --- sampling --------------------------------------------------------------------------------
    def sampling(self, *layers: SamplingOverrides, chat: bool) -> SamplingParams:
        """Validated parameters: the server's defaults, then each layer; a chat adds its template's stops."""
        base = SamplingParams(max_tokens=self.config.default_max_tokens)
        params = sampling_with(*layers, base=base).validated(vocab_size=self.card.vocab_size)
        if not chat:
            return params
        info = self.template_info
        stops = tuple(dict.fromkeys((*params.stop, *info.stop)))
        turn_ends = () if params.ignore_eos else info.stop_token_ids
        own = set(self.card.stop_token_ids)
        stop_ids = tuple(dict.fromkeys((*params.stop_token_ids, *(t for t in turn_ends if t not in own))))
        return replace(params, stop=stops, stop_token_ids=stop_ids)

    def generation(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        *,
        n: int = 1,
        deadline: float | None = None,
    ) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id, prompt_ids=tuple(prompt_ids), sampling=sampling, n=n, deadline=deadline
        )

    @contextlib.asynccontextmanager
    async def events(self, request: GenerationRequest) -> AsyncIterator[AsyncIterator[EngineEvent]]:
        """Submit a request and iterate its events; leaving the block early cancels it in the engine."""
        async with contextlib.aclosing(self.generator.generate(request)) as events:
            yield events

    # --- tokenizer -------------------------------------------------------------------------------
    def tokenize(self, request: TokenizeRequest) -> tuple[list[int], list[str]]:
        codec = self.tokenizer if request.parse_special_tokens else self._plain
        ids = list(codec.encode(request.text, add_special_tokens=request.add_special_tokens).ids)
        bos = self.card.bos_token_id
        if request.add_special_tokens and self.card.add_bos and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids, [self.tokenizer.id_to_token(i) or "" for i in ids]

    def detokenize(self, request: DetokenizeRequest) -> str:
        self._check_token_ids(request.token_ids, "token_ids")
        return str(
            self.tokenizer.decode(list(request.token_ids), skip_special_tokens=request.skip_special_tokens)
        )

    def _check_token_ids(self, ids: Sequence[int], field: str) -> None:
        vocab = self.card.vocab_size
        for index, token_id in enumerate(ids):
            if not 0 <= token_id < vocab:
                raise InvalidArgument(
                    f"{field}[{index}]", f"token id must be in [0, {vocab}), got {token_id}"
                )


def _continuation(messages: Sequence[Message], options: PromptOptions) -> bool:
    ends_with_assistant = messages[-1].role is Role.ASSISTANT
    if options.continue_final_message and options.add_generation_prompt:
        raise InvalidArgument(
            "template_options.continue_final_message",
            "cannot be true together with add_generation_prompt: continue the last message or answer it",
        )
    if options.continue_final_message and not ends_with_assistant:
        raise InvalidArgument(
            "template_options.continue_final_message",
            f"needs the last message to be the assistant's, but it is the {messages[-1].role.value}'s",
        )
    if options.continue_final_message is None:
        return ends_with_assistant and not options.add_generation_prompt
    return options.continue_final_message


class ModelRegistry:
    """The served models by name; the first is the default."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = tuple(models)
        self.default = models[0]
        self._by_name = {model.name: model for model in models}

    def get(self, name: str, *, field: str = "model") -> ServedModel:
        """The model a request names (empty: the default). NotFound for a name not served here."""
        if not name:
            return self.default
        model = self._by_name.get(name)
        if model is None:
            served = ", ".join(self._by_name)
            raise NotFound(f"{field}: no model named {name!r} is served here (served: {served})")
        return model
