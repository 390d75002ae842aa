"""The OpenAI-compatible teacher against loopback fakes: parameters, retries, limits, laziness, secrets."""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from support.openai_fakes import (
    FaultProxy,
    ScriptedOpenAIServer,
    assert_no_teacher_threads,
    chat_reply,
    error_body,
)

from stages.teachers.base import OpenAITeacher, Request, Sample
from stages.teachers.openai_server import OpenAIBackend, OpenAITeacherError, retry_after_s

KEY_ENV = "TF_TEST_OPENAI_KEY"
SECRET = "sk-test-SECRET123"


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    assert_no_teacher_threads()


def teacher(base_url: str, **overrides: Any) -> OpenAITeacher:
    fields: dict[str, Any] = {"name": "t", "model": "scripted-model", "base_url": base_url,
                              "api_key_env": KEY_ENV, "backoff_s": 0.01, "max_backoff_s": 0.05,
                              "timeout_s": 10, "max_tokens": 32}
    return OpenAITeacher(**(fields | overrides))


def requests(n: int, indices: tuple[int, ...] = (0,)) -> list[Request]:
    system = {"role": "system", "content": "be brief"}
    return [Request(f"r{i}", (system, {"role": "user", "content": f"q{i}"}), indices) for i in range(n)]


def run(backend: OpenAIBackend, reqs: list[Request]) -> list[Sample]:
    try:
        return list(backend.generate(reqs))
    finally:
        backend.close()


def user_of(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def test_params_seeds_reasoning_and_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)

    def reply(body: dict[str, Any], n: int) -> dict[str, Any]:
        seed = body["seed"]
        thoughts = {"reasoning_content": f"think {seed}"} if seed % 2 == 0 else {"reasoning": f"r {seed}"}
        return chat_reply(f"{user_of(body)}|{seed}", "length" if seed % 2 else "stop", prompt_tokens=7,
                          completion_tokens=3, **thoughts)

    reqs = requests(5, indices=(0, 1))
    with ScriptedOpenAIServer(reply) as server:
        config = teacher(server.base_url, temperature=0.5, top_p=0.9, top_k=20, min_p=0.05, stop=["</s>"],
                         concurrency=4, extra_body={"chat_template_kwargs": {"thinking": True}, "top_k": 999})
        samples = run(OpenAIBackend(config, base_seed=100), reqs)

    assert Counter((s.request.id, s.index) for s in samples) == {(r.id, i): 1 for r in reqs for i in (0, 1)}
    for s in samples:
        seed = 100 + s.index
        c = s.completion
        assert c.text == f"{s.request.messages[-1]['content']}|{seed}"
        assert c.reasoning == (f"think {seed}" if seed % 2 == 0 else f"r {seed}")
        assert c.finish_reason == ("length" if seed % 2 else "stop")
        assert (c.prompt_tokens, c.completion_tokens) == (7, 3)
        assert c.latency_s > 0
    by_prompt = {r.messages[-1]["content"]: r for r in reqs}
    assert sorted((user_of(b), b["seed"]) for b in server.received) == sorted(
        (r.messages[-1]["content"], 100 + i) for r in reqs for i in (0, 1))
    for body in server.received:
        assert body["messages"] == list(by_prompt[user_of(body)].messages)
        assert body["model"] == "scripted-model"
        assert (body["max_tokens"], body["temperature"], body["top_p"]) == (32, 0.5, 0.9)
        assert body["stop"] == ["</s>"]
        assert (body["top_k"], body["min_p"]) == (20, 0.05)  # the sampling field beats extra_body
        assert body["chat_template_kwargs"] == {"thinking": True}
        assert "repetition_penalty" not in body
    assert {h["authorization"] for h in server.headers} == {"Bearer EMPTY"}


def test_explicit_seed_and_missing_usage() -> None:
    with ScriptedOpenAIServer(lambda body, n: chat_reply("", None, prompt_tokens=None,
                                                         completion_tokens=None)) as server:
        [sample] = run(OpenAIBackend(teacher(server.base_url, seed=7), base_seed=100), requests(1, (3,)))
    assert server.received[0]["seed"] == 10
    c = sample.completion
    assert (c.text, c.reasoning, c.finish_reason, c.prompt_tokens, c.completion_tokens) == ("", None, None,
                                                                                             None, None)


def test_retries_each_sample_reaches_the_server_once() -> None:
    plan = {0: "429", 1: "500", 2: "drop", 5: "429-noheader", 7: "drop", 8: "500", 9: "503"}
    reqs = requests(4, indices=(0, 1))
    with ScriptedOpenAIServer() as server, FaultProxy(server.url, plan.get) as proxy:
        backend = OpenAIBackend(teacher(proxy.base_url, concurrency=3), base_seed=0)
        samples = run(backend, reqs)

    assert Counter((s.request.id, s.index) for s in samples) == {(r.id, i): 1 for r in reqs for i in (0, 1)}
    assert all(s.completion.text == f"echo: {s.request.messages[-1]['content']}" for s in samples)
    sent = Counter((json.dumps(b["messages"]), b["seed"]) for b in proxy.forwarded)
    assert sent == {(json.dumps(list(r.messages)), i): 1 for r in reqs for i in (0, 1)}
    assert len(server.received) == 8
    assert proxy.faulted == ["429", "500", "drop", "429-noheader", "drop", "500", "503"]
    assert backend.stats == {"attempts": 15, "retries": 7,
                             "retries_by_cause": {"429": 2, "500": 2, "503": 1, "connection": 2}}


def test_retry_after_is_honoured() -> None:
    arrivals: list[float] = []

    def reply(body: dict[str, Any], n: int) -> Any:
        arrivals.append(time.monotonic())
        if n == 0:
            return 429, error_body("slow down", "rate_limit_error"), {"Retry-After": "1"}
        return chat_reply("ok")

    with ScriptedOpenAIServer(reply) as server:
        backend = OpenAIBackend(teacher(server.base_url, max_backoff_s=5), base_seed=0)
        [sample] = run(backend, requests(1))
    assert sample.completion.text == "ok"
    assert arrivals[1] - arrivals[0] >= 0.9
    assert backend.stats["retries_by_cause"] == {"429": 1}


def test_retry_after_forms() -> None:
    in_2s = email.utils.formatdate(time.time() + 2, usegmt=True)
    assert 0.5 < retry_after_s({"retry-after": in_2s}) <= 2  # type: ignore[operator]
    assert retry_after_s({"retry-after": "3"}) == 3
    assert retry_after_s({"retry-after": "-4"}) == 0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_gives_up_without_leaking_the_key(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    reply = lambda body, n: (500, error_body("engine overloaded"), {})  # noqa: E731
    with ScriptedOpenAIServer(reply) as server:
        backend = OpenAIBackend(teacher(server.base_url, max_retries=2), base_seed=0)
        with pytest.raises(OpenAITeacherError) as caught:
            run(backend, requests(1))
    err = caught.value
    text = str(err)
    assert "500" in text and "engine overloaded" in text and "3 attempts" in text
    assert server.base_url in text and "scripted-model" in text
    assert (err.status, err.attempts, err.retryable) == (500, 3, True)
    assert len(server.received) == 3
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"  # the key is used, and only sent
    shown = [text, repr(err), repr(backend), "".join(traceback.format_exception(err)), caplog.text,
             repr(vars(backend)), repr(backend.stats)]
    assert not [s for s in shown if SECRET in s]


def test_client_errors_are_not_retried() -> None:
    reply = lambda body, n: (400, error_body("prompt is too long: 99999 tokens", "invalid_request_error"), {})  # noqa: E731
    with ScriptedOpenAIServer(reply) as server:
        backend = OpenAIBackend(teacher(server.base_url, max_retries=5), base_seed=0)
        with pytest.raises(OpenAITeacherError, match="prompt is too long: 99999 tokens") as caught:
            run(backend, requests(3))
    assert caught.value.status == 400 and not caught.value.retryable
    assert len(server.received) <= 3  # the other slots were already sent, none retried
    assert backend.stats["retries"] == 0


def test_concurrency_is_bounded() -> None:
    def reply(body: dict[str, Any], n: int) -> dict[str, Any]:
        time.sleep(0.2)
        return chat_reply("ok")

    with ScriptedOpenAIServer(reply) as server:
        samples = run(OpenAIBackend(teacher(server.base_url, concurrency=3), base_seed=0), requests(9))
    assert len(samples) == 9
    assert 1 < server.max_in_flight <= 3


def test_pulls_requests_lazily_and_stops_cleanly() -> None:
    pulled = 0

    def source() -> Iterator[Request]:
        nonlocal pulled
        for request in requests(20):
            pulled += 1
            yield request

    def reply(body: dict[str, Any], n: int) -> dict[str, Any]:
        time.sleep(0.02 if n == 0 else 2.0)  # the rest are still in flight when the caller stops
        return chat_reply("ok")

    with ScriptedOpenAIServer(reply) as server:
        backend = OpenAIBackend(teacher(server.base_url, concurrency=3), base_seed=0)
        gen = backend.generate(source())
        first = next(gen)
        started = time.monotonic()
        gen.close()
        closing_s = time.monotonic() - started
        backend.close()
    assert first.completion.text == "ok"
    assert pulled <= 4
    assert closing_s < 1.0  # in-flight requests are cancelled, not awaited


def test_close_while_suspended_ends_the_generator() -> None:
    with ScriptedOpenAIServer() as server:
        backend = OpenAIBackend(teacher(server.base_url, concurrency=1), base_seed=0)
        gen = backend.generate(requests(3))
        next(gen)
        backend.close()
        with pytest.raises(RuntimeError, match="closed while generating"):
            list(gen)
        with pytest.raises(RuntimeError, match="OpenAIBackend is closed"):
            next(backend.generate(requests(1)))


def test_requests_per_minute_spaces_starts() -> None:
    with ScriptedOpenAIServer() as server:
        backend = OpenAIBackend(teacher(server.base_url, concurrency=5, requests_per_minute=600), base_seed=0)
        started = time.monotonic()
        samples = run(backend, requests(5))
    assert len(samples) == 5
    assert time.monotonic() - started >= 0.35


def test_tokens_per_minute_charges_estimate_then_usage() -> None:
    # 100 tokens/s and a max_tokens of a whole minute: each request drains the bucket before it is sent,
    # and only the small actual usage (30) stays charged, so each later request waits ~0.3 s, not 60 s.
    with ScriptedOpenAIServer() as server:
        config = teacher(server.base_url, concurrency=1, tokens_per_minute=6000, max_tokens=6000)
        started = time.monotonic()
        samples = run(OpenAIBackend(config, base_seed=0), requests(3))
    assert len(samples) == 3
    assert 0.45 <= time.monotonic() - started < 5


def test_timeouts_are_retried() -> None:
    def reply(body: dict[str, Any], n: int) -> dict[str, Any]:
        time.sleep(0.6 if n == 0 else 0)
        return chat_reply("late" if n == 0 else "ok")

    with ScriptedOpenAIServer(reply) as server:
        backend = OpenAIBackend(teacher(server.base_url, timeout_s=0.2), base_seed=0)
        [sample] = run(backend, requests(1))
    assert sample.completion.text == "ok"
    assert backend.stats["retries_by_cause"] == {"timeout": 1}


def test_fault_proxy_holds_and_forwards_gets() -> None:
    hold = threading.Event()
    with ScriptedOpenAIServer() as server, FaultProxy(server.url, hold=hold, hold_after=2) as proxy:
        with urllib.request.urlopen(f"{proxy.base_url}/models", timeout=5) as response:
            assert json.load(response)["data"][0]["id"] == "scripted-model"
        backend = OpenAIBackend(teacher(proxy.base_url, concurrency=3), base_seed=0)
        gen = backend.generate(requests(5))
        got = [next(gen), next(gen)]
        deadline = time.monotonic() + 5
        while proxy.held < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.held >= 1
        assert len(proxy.forwarded) == len(server.received) == 2
        hold.set()
        got += list(gen)
        backend.close()
    assert len(got) == 5 and len(server.received) == 5


def test_choices_become_a_json_schema_response_format() -> None:
    from stages.teachers.base import read_choice

    with ScriptedOpenAIServer(lambda body, n: chat_reply('{"answer": "hard"}')) as server:
        backend = OpenAIBackend(teacher(server.base_url), 0)
        choices = ("easy", "medium", "hard")
        samples = list(backend.generate([
            Request("p", ({"role": "user", "content": "level?"},), (0,), choices),
            Request("q", ({"role": "user", "content": "free"},), (0,))]))
        backend.close()
    bodies = {b["messages"][0]["content"]: b for b in server.received}
    schema = bodies["level?"]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["answer"]["enum"] == list(choices) and schema["required"] == ["answer"]
    assert "response_format" not in bodies["free"]
    assert {read_choice(s.completion.text, choices) for s in samples} == {"hard"}
