"""Raw-prompt completions against the real server: text or token ids in, no template."""

from __future__ import annotations

import grpc
import pytest
from parley.v1 import common_pb2
from parley.v1.completion_pb2 import CompletionChunk
from parley_client import ParleyClient, ParleyRpcError

from tests.server.conftest import KV_CAPACITY

COUNTING = "1, 2, 3, 4, 5, 6,"


def chunk_text(chunks: list[CompletionChunk], index: int) -> str:
    return "".join(c.text for chunk in chunks for c in chunk.choices if c.index == index)


def test_completion_continues_the_prompt_as_sent(client: ParleyClient) -> None:
    reply = client.complete(COUNTING, temperature=0, max_tokens=6)
    choice = reply.choices[0]
    assert reply.id.startswith("cmpl-")
    assert choice.text.startswith(" 7, 8")
    assert choice.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert reply.usage.prompt_tokens == len(client.tokenize(COUNTING).token_ids)
    assert reply.usage.completion_tokens == 6


def test_token_ids_prompt_equals_text_prompt(client: ParleyClient) -> None:
    ids = list(client.tokenize(COUNTING).token_ids)
    from_text = client.complete(COUNTING, temperature=0, max_tokens=4)
    from_ids = client.complete(ids, temperature=0, max_tokens=4)
    assert from_ids.choices[0].text == from_text.choices[0].text
    assert from_ids.usage.prompt_tokens == len(ids)


def test_special_token_text_is_parsed_unless_switched_off(client: ParleyClient) -> None:
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    parsed = client.complete(prompt, max_tokens=1, temperature=0)
    plain = client.complete(prompt, max_tokens=1, temperature=0, parse_special_tokens=False)
    assert parsed.usage.prompt_tokens == len(client.tokenize(prompt, parse_special_tokens=True).token_ids)
    assert plain.usage.prompt_tokens == len(client.tokenize(prompt).token_ids)
    assert parsed.usage.prompt_tokens < plain.usage.prompt_tokens


def test_streamed_completion_keeps_choices_apart(client: ParleyClient) -> None:
    chunks = list(
        client.stream_complete(COUNTING, temperature=0.8, seed=7, n=2, max_tokens=6, ignore_eos=True)
    )
    finals = sorted((c.index, c.finish_reason) for chunk in chunks for c in chunk.choices if c.finish_reason)
    assert finals == [(0, common_pb2.FINISH_REASON_LENGTH), (1, common_pb2.FINISH_REASON_LENGTH)]
    assert chunk_text(chunks, 0) and chunk_text(chunks, 1)
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_string_in_a_stream_is_never_sent(client: ParleyClient) -> None:
    chunks = list(client.stream_complete(COUNTING, temperature=0, max_tokens=12, stop=[" 9"]))
    text = chunk_text(chunks, 0)
    final = next(c for chunk in chunks for c in chunk.choices if c.finish_reason)
    assert final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert final.stop_string == " 9"
    assert text.startswith(" 7, 8,") and "9" not in text


@pytest.mark.parametrize(
    ("prompt", "field"),
    [("", "prompt"), ([49152], "prompt_token_ids[0]")],
    ids=["empty", "token_out_of_vocabulary"],
)
def test_bad_prompts_name_the_field(client: ParleyClient, prompt: str | list[int], field: str) -> None:
    with pytest.raises(ParleyRpcError, match=field.replace("[", r"\[")) as caught:
        client.complete(prompt, max_tokens=1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [field]


def test_a_raw_prompt_longer_than_the_window_reports_both_counts(client: ParleyClient) -> None:
    ids = [28] * KV_CAPACITY
    with pytest.raises(ParleyRpcError, match=f"the prompt is {KV_CAPACITY} tokens.*{KV_CAPACITY} tokens"):
        client.complete(ids, max_tokens=1)
