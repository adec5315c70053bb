"""Plain results and engine events -> protobuf responses, chunks and session messages."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration
from google.rpc import status_pb2
from parley.v1 import common_pb2, message_pb2
from parley.v1.chat_pb2 import ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta
from parley.v1.completion_pb2 import Completion, CompletionChoice, CompletionChunk, CompletionChunkChoice
from parley.v1.message_pb2 import ChatMessage
from parley.v1.session_pb2 import ChatSessionResponse, SessionDone, SessionStarted

from service.engine.events import ChoiceFinished, FinishReason, RequestFinished, Timings, TokenEvent, Usage
from service.sampling import TokenLogprobs
from service.server.generation import CallInfo, ChoiceOutput, GenerationOutput
from service.server.spelling import TokenSpeller

FINISH_REASONS: dict[FinishReason, common_pb2.FinishReason.ValueType] = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.CONTEXT_LENGTH: common_pb2.FINISH_REASON_CONTEXT_LENGTH,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
    FinishReason.TIME_LIMIT: common_pb2.FINISH_REASON_TIME_LIMIT,
}


def finish_reason(reason: FinishReason | None) -> common_pb2.FinishReason.ValueType:
    return common_pb2.FINISH_REASON_UNSPECIFIED if reason is None else FINISH_REASONS[reason]


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return value


def usage(counts: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.total_tokens,
        cached_tokens=counts.cached_tokens,
    )


def timings(times: Timings, counts: Usage, n: int) -> common_pb2.Timings:
    prefilled = counts.prompt_tokens - counts.cached_tokens
    decode_seconds = times.total_s - times.time_to_first_token_s
    decoded = max(counts.completion_tokens - n, 0)  # tokens after each choice's first
    return common_pb2.Timings(
        queued=duration(times.queued_s),
        prefill=duration(times.prefill_s),
        time_to_first_token=duration(times.time_to_first_token_s),
        total=duration(times.total_s),
        prefill_tokens_per_second=prefilled / times.prefill_s if prefilled and times.prefill_s > 0 else 0.0,
        decode_tokens_per_second=decoded / decode_seconds if decoded and decode_seconds > 0 else 0.0,
    )


def logprobs(entries: Sequence[tuple[int, TokenLogprobs]], speller: TokenSpeller) -> common_pb2.Logprobs:
    return common_pb2.Logprobs(
        content=[
            common_pb2.TokenLogprob(
                token=speller.token_text(token_id),
                token_id=token_id,
                logprob=entry.logprob,
                bytes=speller.token_bytes(token_id),
                top_logprobs=[
                    common_pb2.TopLogprob(
                        token=speller.token_text(top_id),
                        token_id=top_id,
                        logprob=top_logprob,
                        bytes=speller.token_bytes(top_id),
                    )
                    for top_id, top_logprob in zip(entry.top_ids, entry.top_logprobs, strict=True)
                ],
            )
            for token_id, entry in entries
        ]
    )


_WithMatchedStop = Choice | CompletionChoice | ChunkChoice | CompletionChunkChoice


def _set_matched_stop(choice: _WithMatchedStop, text: str | None, token_id: int | None) -> None:
    """What ended a FINISH_REASON_STOP choice: the stop string, else the stop token (a oneof)."""
    if text is not None:
        choice.stop_string = text
    elif token_id is not None:
        choice.stop_token_id = token_id


def _fill_unary(
    choice: Choice | CompletionChoice, output: ChoiceOutput, speller: TokenSpeller, with_logprobs: bool
) -> None:
    """What chat and completion choices share: how the choice ended and its logprobs."""
    _set_matched_stop(choice, output.matched_stop, output.matched_token_id)
    if with_logprobs:
        choice.logprobs.CopyFrom(logprobs(output.logprobs, speller))


def _fill_chunk(
    choice: ChunkChoice | CompletionChunkChoice, event: TokenEvent | ChoiceFinished, speller: TokenSpeller
) -> None:
    """What chat and completion chunks share: a token event's logprobs, or how the choice ended."""
    if isinstance(event, TokenEvent):
        if event.logprobs:
            choice.logprobs.CopyFrom(
                logprobs(list(zip(event.token_ids, event.logprobs, strict=False)), speller)
            )
    else:
        choice.finish_reason = finish_reason(event.reason)
        _set_matched_stop(choice, event.matched_stop, event.matched_token_id)


def _assistant(text: str) -> ChatMessage:
    return ChatMessage(role=message_pb2.ROLE_ASSISTANT, content=text)


# --- unary responses --------------------------------------------------------------------------------
def _chat_choice(output: ChoiceOutput, speller: TokenSpeller, with_logprobs: bool) -> Choice:
    choice = Choice(
        index=output.index, message=_assistant(output.text), finish_reason=finish_reason(output.reason)
    )
    _fill_unary(choice, output, speller, with_logprobs)
    return choice


def chat_completion(
    call: CallInfo, output: GenerationOutput, speller: TokenSpeller, *, with_logprobs: bool, dropped: int
) -> ChatCompletion:
    return ChatCompletion(
        id=call.id,
        model=call.model,
        created=call.created,
        choices=[_chat_choice(choice, speller, with_logprobs) for choice in output.choices],
        usage=usage(output.usage),
        timings=timings(output.timings, output.usage, len(output.choices)),
        system_fingerprint=call.fingerprint,
        dropped_messages=dropped,
    )


def _completion_choice(output: ChoiceOutput, speller: TokenSpeller, with_logprobs: bool) -> CompletionChoice:
    choice = CompletionChoice(
        index=output.index, text=output.text, finish_reason=finish_reason(output.reason)
    )
    _fill_unary(choice, output, speller, with_logprobs)
    return choice


def completion(
    call: CallInfo, output: GenerationOutput, speller: TokenSpeller, *, with_logprobs: bool
) -> Completion:
    return Completion(
        id=call.id,
        model=call.model,
        created=call.created,
        choices=[_completion_choice(choice, speller, with_logprobs) for choice in output.choices],
        usage=usage(output.usage),
        timings=timings(output.timings, output.usage, len(output.choices)),
        system_fingerprint=call.fingerprint,
    )


# --- stream chunks ------------------------------------------------------------------------------------
def chat_chunk(
    call: CallInfo, event: TokenEvent | ChoiceFinished, speller: TokenSpeller, *, first: bool
) -> ChatCompletionChunk | None:
    """The chunk of one choice's event; None when it carries nothing (no text, no logprobs, not an end)."""
    choice = ChunkChoice(index=event.index, delta=Delta(content=event.text))
    if first:
        choice.delta.role = message_pb2.ROLE_ASSISTANT
    if isinstance(event, TokenEvent) and not (event.text or event.logprobs or first):
        return None
    _fill_chunk(choice, event, speller)
    return ChatCompletionChunk(
        id=call.id,
        model=call.model,
        created=call.created,
        choices=[choice],
        system_fingerprint=call.fingerprint,
    )


def chat_last_chunk(
    call: CallInfo, finished: RequestFinished, n: int, *, dropped: int
) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=call.id,
        model=call.model,
        created=call.created,
        usage=usage(finished.usage),
        timings=timings(finished.timings, finished.usage, n),
        system_fingerprint=call.fingerprint,
        dropped_messages=dropped,
    )


def completion_chunk(
    call: CallInfo, event: TokenEvent | ChoiceFinished, speller: TokenSpeller
) -> CompletionChunk | None:
    """As chat_chunk, for a raw-prompt completion."""
    choice = CompletionChunkChoice(index=event.index, text=event.text)
    if isinstance(event, TokenEvent) and not (event.text or event.logprobs):
        return None
    _fill_chunk(choice, event, speller)
    return CompletionChunk(
        id=call.id,
        model=call.model,
        created=call.created,
        choices=[choice],
        system_fingerprint=call.fingerprint,
    )


def completion_last_chunk(call: CallInfo, finished: RequestFinished, n: int) -> CompletionChunk:
    return CompletionChunk(
        id=call.id,
        model=call.model,
        created=call.created,
        usage=usage(finished.usage),
        timings=timings(finished.timings, finished.usage, n),
        system_fingerprint=call.fingerprint,
    )


# --- session messages ---------------------------------------------------------------------------------
def session_started(
    session_id: str, model: str, context_window: int, idle_seconds: float
) -> ChatSessionResponse:
    started = SessionStarted(
        session_id=session_id, model=model, context_window=context_window, idle_timeout=duration(idle_seconds)
    )
    return ChatSessionResponse(started=started)


def session_chunk(request_id: str, chunk: ChatCompletionChunk) -> ChatSessionResponse:
    return ChatSessionResponse(request_id=request_id, chunk=chunk)


def session_done(
    request_id: str,
    reason: FinishReason,
    reply: str,
    *,
    matched_stop: str | None = None,
    finished: RequestFinished | None = None,
    dropped: int = 0,
) -> ChatSessionResponse:
    """The end of a turn; `finished` is None for a turn cancelled before it ran."""
    done = SessionDone(
        finish_reason=finish_reason(reason), message=_assistant(reply), dropped_messages=dropped
    )
    if finished is not None:
        done.usage.CopyFrom(usage(finished.usage))
        done.timings.CopyFrom(timings(finished.timings, finished.usage, 1))
    if matched_stop is not None:
        done.stop_string = matched_stop
    return ChatSessionResponse(request_id=request_id, done=done)


def session_error(request_id: str, status: status_pb2.Status) -> ChatSessionResponse:
    return ChatSessionResponse(request_id=request_id, error=status)
