"""`parley chat` and `parley complete` against the live server: what they print is what the client gets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from parley_client import ParleyClient

from tests.server.conftest import LiveServer

REPO = Path(__file__).resolve().parents[2]


def parley(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_chat_prints_the_reply(live_server: LiveServer, client: ParleyClient) -> None:
    question = "What is the capital of France?"
    expected = client.chat(question, temperature=0, max_tokens=12).choices[0].message.content
    result = parley(
        "chat", question, "--target", live_server.target, "--temperature", "0", "--max-tokens", "12"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_chat_without_a_message_is_a_session_on_stdin(live_server: LiveServer) -> None:
    result = parley(
        "chat", "--target", live_server.target, "--temperature", "0", "--max-tokens", "4",
        stdin="Hi!\n\nAnd again?\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.split("> ") if line.strip()]
    assert len(replies) == 2


def test_complete_prints_the_continuation(live_server: LiveServer, client: ParleyClient) -> None:
    expected = client.complete("1, 2, 3,", temperature=0, max_tokens=6).choices[0].text
    result = parley(
        "complete", "1, 2, 3,", "--target", live_server.target, "--temperature", "0", "--max-tokens", "6"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_an_unreachable_server_gets_a_hint() -> None:
    result = parley("chat", "Hi", "--target", "127.0.0.1:1", "--timeout", "10")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert "is `parley serve` running on 127.0.0.1:1?" in result.stderr
