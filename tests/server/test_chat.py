"""Chat completions against the real server and model: unary and streamed, usage, finish reasons, sampling."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from parley.v1 import common_pb2, message_pb2
from parley.v1.chat_pb2 import ChatCompletionChunk
from parley_client import ChatOptions, CompletionOptions, MessageLike, ParleyClient, ParleyRpcError

from tests.server.conftest import KV_CAPACITY, LiveServer

# "Answer in one sentence" keeps the greedy answer clear of near-ties (the bare question's first token is a
# 0.005-logit tie between "The" and "L'" at int4, which int8 activation rounding decides either way).
CAPITAL: list[MessageLike] = [("user", "What is the capital of France? Answer in one sentence.")]
STORY: list[MessageLike] = [("user", "Tell me a long story about a dragon.")]


def streamed_text(chunks: list[ChatCompletionChunk], index: int = 0) -> str:
    return "".join(c.delta.content for chunk in chunks for c in chunk.choices if c.index == index)


def test_unary_chat_answers_and_counts_usage(client: ParleyClient) -> None:
    reply = client.chat(CAPITAL, temperature=0, max_tokens=24)
    choice = reply.choices[0]
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "smollm2-135m-instruct"
    assert choice.message.role == message_pb2.ROLE_ASSISTANT
    assert "Paris" in choice.message.content
    assert choice.finish_reason == common_pb2.FINISH_REASON_STOP  # the model's own end of turn
    assert not choice.HasField("stop_string")
    assert choice.stop_token_id == 2  # <|im_end|>, the end-of-turn token that stopped it
    usage = reply.usage
    rendered = client.render_prompt(CAPITAL)
    assert usage.prompt_tokens == len(rendered.token_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 <= usage.cached_tokens < usage.prompt_tokens
    assert reply.timings.total.ToNanoseconds() >= reply.timings.time_to_first_token.ToNanoseconds() > 0
    assert reply.system_fingerprint


def test_streamed_text_equals_unary_text_at_temperature_zero(client: ParleyClient) -> None:
    request: list[MessageLike] = [("user", "Name three fruits.")]
    # Warm the prefix cache first: a cached prefix is computed once by a batched prefill and the last
    # token alone, and int8-activation numerics can flip a near-tie between the two paths. Both calls
    # compared below then see the same cache state.
    client.chat(request, temperature=0, max_tokens=20)
    unary = client.chat(request, temperature=0, max_tokens=20)
    chunks = list(client.stream_chat(request, temperature=0, max_tokens=20))
    assert streamed_text(chunks) == unary.choices[0].message.content
    assert chunks[0].choices[0].delta.role == message_pb2.ROLE_ASSISTANT
    assert all(c.delta.role == message_pb2.ROLE_UNSPECIFIED for chunk in chunks[1:] for c in chunk.choices)
    finals = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert [c.finish_reason for c in finals] == [unary.choices[0].finish_reason]
    last = chunks[-1]
    assert last.HasField("usage") and not last.choices
    assert last.usage.prompt_tokens == unary.usage.prompt_tokens
    assert last.usage.completion_tokens == unary.usage.completion_tokens
    assert all(not chunk.HasField("usage") for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1


def test_max_tokens_ends_with_length(client: ParleyClient) -> None:
    reply = client.chat(STORY, temperature=0, max_tokens=3)
    assert reply.choices[0].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert reply.usage.completion_tokens == 3


def test_stop_string_ends_with_stop_and_is_not_returned(client: ParleyClient) -> None:
    counting: list[MessageLike] = [("user", "Count from 1 to 20, separated by commas.")]
    free = client.chat(counting, temperature=0, max_tokens=30).choices[0].message.content
    stop = free[len(free) // 2 : len(free) // 2 + 2]  # a piece from the middle of what the model says
    assert stop.strip(), f"the model said too little to pick a stop string from: {free!r}"
    reply = client.chat(counting, temperature=0, max_tokens=30, stop=[stop])
    choice = reply.choices[0]
    assert choice.finish_reason == common_pb2.FINISH_REASON_STOP
    assert choice.stop_string == stop and not choice.HasField("stop_token_id")
    assert stop not in choice.message.content
    assert free.startswith(choice.message.content)


def test_context_window_ends_with_context_length(client: ParleyClient) -> None:
    long_question = "Please repeat: " + "apples and pears, " * 50
    prompt_tokens = len(client.render_prompt([("user", long_question)]).token_ids)
    room = KV_CAPACITY - prompt_tokens
    assert 0 < room < 40, f"the prompt should nearly fill the window, it is {prompt_tokens} tokens"
    reply = client.chat([("user", long_question)], temperature=0, max_tokens=100, ignore_eos=True)
    assert reply.choices[0].finish_reason == common_pb2.FINISH_REASON_CONTEXT_LENGTH
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == KV_CAPACITY


def test_deadline_ends_generation_with_time_limit_and_keeps_the_text(client: ParleyClient) -> None:
    # ignore_eos and a long max_tokens: only the deadline can end this in time.
    reply = client.chat(STORY, temperature=0, max_tokens=200, ignore_eos=True, timeout=1.5)
    choice = reply.choices[0]
    assert choice.finish_reason == common_pb2.FINISH_REASON_TIME_LIMIT
    assert 0 < reply.usage.completion_tokens < 200
    assert choice.message.content


def test_client_cancel_stops_generation_at_once(client: ParleyClient, live_server: LiveServer) -> None:
    steps_before = live_server.engine.stats().steps
    with contextlib.closing(
        client.stream_chat(STORY, temperature=0, max_tokens=200, ignore_eos=True)
    ) as chunks:
        first = next(chunks)
        assert first.choices[0].delta.role == message_pb2.ROLE_ASSISTANT
    # Closing the stream cancelled the call; the engine drops the request within a step or two.
    live_server.wait_idle()
    assert live_server.engine.stats().steps - steps_before < 100  # finishing would take 200 steps


def test_n_choices_are_seeded_and_reproducible(client: ParleyClient) -> None:
    options: ChatOptions = {"temperature": 1.0, "max_tokens": 8, "n": 2, "seed": 1234, "ignore_eos": True}
    client.chat(STORY, **options)  # warms the prefix cache (see the streaming test)
    first = client.chat(STORY, **options)
    again = client.chat(STORY, **options)
    assert [c.index for c in first.choices] == [0, 1]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] != texts[1]  # choice i samples from its own seed
    assert first.usage.completion_tokens == 16
    assert first.usage.prompt_tokens == len(client.render_prompt(STORY).token_ids)  # counted once


def test_logprobs_report_every_token_and_its_alternatives(client: ParleyClient) -> None:
    reply = client.chat(CAPITAL, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3, ignore_eos=True)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens == 5
    assert b"".join(entry.bytes for entry in entries).decode() == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        ranked = [top.logprob for top in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.top_logprobs[0].token_id == entry.token_id  # greedy picks the most likely
        assert entry.token == entry.bytes.decode("utf-8", errors="replace")


def test_logit_bias_forces_a_token(client: ParleyClient) -> None:
    banana = client.tokenize(" banana").token_ids
    assert len(banana) == 1
    reply = client.chat(CAPITAL, temperature=0, max_tokens=3, logit_bias={banana[0]: 100.0})
    assert reply.choices[0].message.content == " banana" * 3


def test_min_tokens_holds_off_the_end_of_turn(client: ParleyClient) -> None:
    natural = client.chat(CAPITAL, temperature=0, max_tokens=30)
    assert natural.choices[0].finish_reason == common_pb2.FINISH_REASON_STOP
    wanted = natural.usage.completion_tokens + 4
    held = client.chat(CAPITAL, temperature=0, max_tokens=30, min_tokens=wanted)
    assert held.usage.completion_tokens >= wanted


@pytest.mark.parametrize(
    "penalty",
    [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 1.5}],
    ids=["frequency", "presence", "repetition"],
)
def test_penalties_break_a_greedy_loop(client: ParleyClient, penalty: CompletionOptions) -> None:
    loop = "ha ha ha ha ha ha ha ha ha ha"
    plain = client.complete(loop, temperature=0, max_tokens=8, ignore_eos=True).choices[0].text
    assert plain.startswith(" ha ha ha ha ha")  # the greedy continuation repeats
    options: CompletionOptions = {"temperature": 0, "max_tokens": 8, "ignore_eos": True, **penalty}
    penalised = client.complete(loop, **options)
    assert penalised.choices[0].text.count(" ha") <= 2


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.5}, "temperature"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"logit_bias": {10**6: 1.0}}, "logit_bias[1000000]"),
        ({"n": 0}, "n"),
        ({"stop": [""]}, "stop[0]"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
    ids=["top_p", "temperature", "penalty", "logit_bias", "n", "empty_stop", "max_tokens", "top_logprobs"],
)
def test_bad_sampling_fields_are_invalid_argument_with_the_field(
    client: ParleyClient, options: ChatOptions, field: str
) -> None:
    with pytest.raises(ParleyRpcError, match="INVALID_ARGUMENT") as caught:
        client.chat(CAPITAL, **options)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [field]
