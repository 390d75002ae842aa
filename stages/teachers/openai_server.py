"""A teacher behind any OpenAI-compatible chat server (vLLM serve, SGLang, llama.cpp server, a provider).

Callers are plain synchronous code that pull samples from a generator, while a server is only fast
when many requests are in flight. So each ``generate`` call runs its own asyncio loop in a background
thread with one ``AsyncOpenAI`` client, and the generator itself (in the caller's thread) decides
when to start work: it pulls the next request from the caller's iterable only when one of the
``concurrency`` slots is free. The caller's iterable is therefore never touched from another thread
and never read ahead, which is how a token budget stops a teacher: the caller ends its iterator.

The SDK's own retries are off (``max_retries=0``): this module retries itself, so it can count
retries by cause, honour ``Retry-After`` with our cap, and give up with an error that says where and
why. The API key is held in a wrapper whose repr is masked and is scrubbed from every message we
build; errors are raised outside ``except`` blocks so they carry no SDK exception (whose request
holds the Authorization header) as context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any

import openai

from stages.teachers.base import (
    Completion,
    Message,
    OpenAITeacher,
    Request,
    Sample,
    TeacherInfo,
    choice_schema,
)

log = logging.getLogger(__name__)

PLACEHOLDER_KEY = "EMPTY"  # local servers accept any key; the SDK refuses none
RETRYABLE_STATUS = frozenset({408, 409, 429})
SHUTDOWN_TIMEOUT_S = 30.0


class OpenAITeacherError(RuntimeError):
    """A request the backend could not complete: rejected by the server, or out of retries.

    Carries the facts a report needs (never the key) so callers need not parse the message.
    """

    def __init__(self, message: str, *, base_url: str, model: str, status: int | None, cause: str,
                 attempts: int, retryable: bool):
        super().__init__(message)
        self.base_url = base_url
        self.model = model
        self.status = status
        self.cause = cause
        self.attempts = attempts
        self.retryable = retryable


class _Secret:
    """Keeps the key out of reprs, tracebacks with locals and accidental f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        if self._value and self._value != PLACEHOLDER_KEY:
            return text.replace(self._value, "***")
        return text

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _RequestSpacer:
    """Spaces request starts ``60 / rpm`` seconds apart.

    Each caller reserves the next start slot under a thread lock and sleeps outside it, so the state
    is independent of any event loop and survives from one ``generate`` call to the next.
    """

    def __init__(self, per_minute: float):
        self._interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()

    async def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


class _TokenBucket:
    """A token bucket holding at most a minute of tokens, allowed to go into debt.

    A request takes its estimated cost at once and waits until the level it left is paid back by the
    refill; waiting by reservation keeps it FIFO without holding a lock across an ``await``. The
    actual usage corrects the level afterwards, in either direction.
    """

    def __init__(self, per_minute: float):
        self._capacity = per_minute
        self._rate = per_minute / 60.0
        self._level = per_minute
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self._capacity, self._level + (now - self._t) * self._rate)
        self._t = now

    async def take(self, cost: float) -> None:
        with self._lock:
            self._refill()
            self._level -= min(cost, self._capacity)  # a request larger than a minute still runs
            wait = -self._level / self._rate if self._level < 0 else 0.0
        if wait > 0:
            await asyncio.sleep(wait)

    def correct(self, charged: float, actual: float) -> None:
        with self._lock:
            self._refill()
            self._level = min(self._capacity, self._level + min(charged, self._capacity) - actual)


class _Runner:
    """One event loop in one thread with one client, for the life of one ``generate`` call."""

    def __init__(self, make_client: Any):
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="openai-teacher", daemon=True)
        self.thread.start()
        try:
            self.client: openai.AsyncOpenAI = self.submit(self._make(make_client)).result()
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=SHUTDOWN_TIMEOUT_S)
            raise

    @staticmethod
    async def _make(make_client: Any) -> openai.AsyncOpenAI:
        return make_client()  # built inside the loop that will use its connection pool

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    def close(self) -> None:
        """Cancel what is in flight, close the client and end the thread; safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.submit(self._shutdown()).result(timeout=SHUTDOWN_TIMEOUT_S)
        except Exception as exc:  # a stuck shutdown must not hide the caller's own error
            log.warning("openai teacher: unclean shutdown (%s)", type(exc).__name__)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=SHUTDOWN_TIMEOUT_S)


def retry_after_s(headers: Any) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def estimate_tokens(messages: Iterable[Message], max_tokens: int) -> int:
    """A rough pre-send charge for the token bucket (about four characters a token)."""
    return sum(len(m.get("content") or "") for m in messages) // 4 + max_tokens


class OpenAIBackend:
    """The ``openai`` teacher backend; see the module docstring for the design."""

    def __init__(self, config: OpenAITeacher, base_seed: int):
        self.info = TeacherInfo("openai", config.model, config.revision)
        self.config = config
        self._key = _Secret(os.environ.get(config.api_key_env) or PLACEHOLDER_KEY)
        self._seed = int(config.sampling_params(base_seed)["seed"])
        self._spacer = _RequestSpacer(config.requests_per_minute) if config.requests_per_minute else None
        self._bucket = _TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        self._runners: set[_Runner] = set()
        self._runners_lock = threading.Lock()
        self._closed = False
        self._stats_lock = threading.Lock()  # two generate calls may run at once, each in its own thread
        self.stats: dict[str, Any] = {"attempts": 0, "retries": 0, "retries_by_cause": {}}

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.config.model!r}, base_url={self.config.base_url!r})"

    # -- the synchronous face -------------------------------------------------------------------

    def generate(self, requests: Iterable[Request]) -> Iterator[Sample]:
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        runner = _Runner(self._make_client)
        with self._runners_lock:
            self._runners.add(runner)
        source = iter(requests)
        pending: deque[tuple[Request, int]] = deque()
        in_flight: set[concurrent.futures.Future[Sample]] = set()
        done: queue.SimpleQueue[concurrent.futures.Future[Sample]] = queue.SimpleQueue()
        exhausted = False
        try:
            while True:
                if runner.closed:  # close() was called while the caller held a sample
                    raise RuntimeError("OpenAIBackend was closed while generating")
                # Refill only now, after the caller has seen the last sample: its iterator may end.
                while len(in_flight) < self.config.concurrency:
                    if not pending:
                        if exhausted:
                            break
                        request = next(source, None)
                        if request is None:
                            exhausted = True
                            break
                        pending.extend((request, index) for index in request.indices)
                        continue
                    request, index = pending.popleft()
                    future = runner.submit(self._sample(runner.client, request, index))
                    in_flight.add(future)
                    future.add_done_callback(done.put)
                if not in_flight:
                    return
                future = self._next_done(done, runner)
                in_flight.discard(future)
                if future.cancelled():
                    raise RuntimeError("OpenAIBackend was closed while generating")
                yield future.result()
        finally:
            for future in in_flight:
                future.cancel()
            runner.close()
            with self._runners_lock:
                self._runners.discard(runner)

    @staticmethod
    def _next_done(done: queue.SimpleQueue[concurrent.futures.Future[Sample]],
                   runner: _Runner) -> concurrent.futures.Future[Sample]:
        # A timed wait, so a runner closed from elsewhere can never leave the caller blocked forever.
        while True:
            try:
                return done.get(timeout=1.0)
            except queue.Empty:
                if runner.closed:
                    raise RuntimeError("OpenAIBackend was closed while generating") from None

    def close(self) -> None:
        self._closed = True
        with self._runners_lock:
            runners = list(self._runners)
        for runner in runners:
            runner.close()

    # -- the asynchronous work ------------------------------------------------------------------

    def _make_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self._key.reveal(), max_retries=0,
                                  timeout=self.config.timeout_s)

    def _params(self, request: Request, index: int) -> dict[str, Any]:
        c = self.config
        params: dict[str, Any] = {"model": c.model, "messages": list(request.messages),
                                  "max_tokens": c.max_tokens, "temperature": c.temperature,
                                  "seed": self._seed + index}
        if c.top_p is not None:
            params["top_p"] = c.top_p
        if c.stop is not None:
            params["stop"] = list(c.stop)
        # The sampling fields win over extra_body: they are what cache keys and provenance record.
        extra = dict(c.extra_body)
        extra.update({k: v for k, v in (("top_k", c.top_k), ("min_p", c.min_p),
                                        ("repetition_penalty", c.repetition_penalty)) if v is not None})
        if extra:
            params["extra_body"] = extra
        if request.choices:
            params["response_format"] = choice_schema(request.choices)
        return params

    def _backoff(self, retry: int, server_wait: float | None) -> float:
        c = self.config
        if server_wait is not None:
            return min(server_wait, c.max_backoff_s)
        return random.uniform(0.0, min(c.max_backoff_s, c.backoff_s * 2 ** (retry - 1)))

    def _classify(self, exc: Exception) -> tuple[str | None, int | None, str, float | None]:
        """(retry cause or None when not retryable, status, description, server-requested wait)."""
        if isinstance(exc, openai.APITimeoutError):
            return "timeout", None, "request timed out", None
        if isinstance(exc, openai.APIConnectionError):
            detail = f": {exc.__cause__!r}" if exc.__cause__ is not None else ""
            return "connection", None, f"connection error{detail}", None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            cause = str(status) if status in RETRYABLE_STATUS or status >= 500 else None
            wait = retry_after_s(exc.response.headers) if exc.response is not None else None
            return cause, status, f"HTTP {status}: {_server_message(exc)}", wait
        if isinstance(exc, openai.APIError):
            return None, None, f"{type(exc).__name__}: {exc.message}", None
        raise exc

    def _error(self, text: str, **facts: Any) -> OpenAITeacherError:
        return OpenAITeacherError(self._key.scrub(text), base_url=self.config.base_url,
                                  model=self.config.model, **facts)

    async def _sample(self, client: openai.AsyncOpenAI, request: Request, index: int) -> Sample:
        c = self.config
        params = self._params(request, index)
        estimate = estimate_tokens(request.messages, c.max_tokens)
        attempts = 0
        while True:
            if self._spacer is not None:
                await self._spacer.wait()
            if self._bucket is not None:
                await self._bucket.take(estimate)
            attempts += 1
            with self._stats_lock:
                self.stats["attempts"] += 1
            started = time.monotonic()
            failure: tuple[str | None, int | None, str, float | None] | None = None
            try:
                response = await client.chat.completions.create(**params)
            except Exception as exc:  # classified below, raised outside this block (no SDK context)
                failure = self._classify(exc)
            if failure is None:
                return self._to_sample(request, index, response, time.monotonic() - started, estimate,
                                       attempts)
            cause, status, what, wait = failure
            if cause is None:
                raise self._error(f"openai teacher request rejected by {c.base_url} (model {c.model!r}): "
                                  f"{what}", status=status, cause=what, attempts=attempts, retryable=False)
            if attempts > c.max_retries:
                raise self._error(
                    f"openai teacher gave up on {c.base_url} (model {c.model!r}) after {attempts} "
                    f"attempt{'s' if attempts != 1 else ''} (max_retries={c.max_retries}); "
                    f"last error: {what}",
                    status=status, cause=what, attempts=attempts, retryable=True)
            delay = self._backoff(attempts, wait)
            with self._stats_lock:
                self.stats["retries"] += 1
                by_cause = self.stats["retries_by_cause"]
                by_cause[cause] = by_cause.get(cause, 0) + 1
            log.debug("openai teacher: %s; retry %d/%d in %.2fs", self._key.scrub(what), attempts,
                      c.max_retries, delay)
            await asyncio.sleep(delay)

    def _to_sample(self, request: Request, index: int, response: Any, latency_s: float, estimate: int,
                   attempts: int) -> Sample:
        if not response.choices:
            raise self._error(f"openai teacher: {self.config.base_url} returned no choices "
                              f"(model {self.config.model!r})", status=None, cause="no choices",
                              attempts=attempts, retryable=False)
        choice = response.choices[0]
        message = choice.message
        usage = response.usage
        prompt_tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
        completion_tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
        if self._bucket is not None and (prompt_tokens is not None or completion_tokens is not None):
            self._bucket.correct(estimate, (prompt_tokens or 0) + (completion_tokens or 0))
        completion = Completion(text=message.content or "", reasoning=_reasoning(message),
                                finish_reason=choice.finish_reason, prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens, latency_s=latency_s)
        return Sample(request=request, index=index, completion=completion)


def _reasoning(message: Any) -> str | None:
    """Reasoning sent apart from the answer; servers name it differently and the SDK declares neither."""
    extra = getattr(message, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        value = extra.get(name, getattr(message, name, None))
        if isinstance(value, str):
            return value
    return None
