"""Loopback stand-ins for an OpenAI-compatible server, for tests that must not need a model.

Both are real HTTP servers on 127.0.0.1 (stdlib ``ThreadingHTTPServer``, an ephemeral port, a
background thread), so the client under test goes through its whole HTTP stack: keep-alive, status
codes, headers, connections closed mid-request. ``ScriptedOpenAIServer`` answers from a callable;
``FaultProxy`` sits in front of any upstream and injects faults by request number, so a test can
say exactly which attempt fails and check what the upstream really received.

Import as ``from support.openai_fakes import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

Reply = dict[str, Any] | tuple[int, dict[str, Any], dict[str, str]]
ReplyFn = Callable[[dict[str, Any], int], Reply]
FaultPlan = Callable[[int], str | None]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-authenticate", "proxy-authorization", "content-length"})


def chat_reply(content: str, finish_reason: str | None = "stop", reasoning_content: str | None = None, *,
               reasoning: str | None = None, prompt_tokens: int | None = 10,
               completion_tokens: int | None = 20, model: str = "scripted-model") -> dict[str, Any]:
    """An OpenAI-shaped chat completion; ``usage`` is left out when both token counts are None."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning is not None:
        message["reasoning"] = reasoning
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
    }
    if prompt_tokens is not None or completion_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens or 0, "completion_tokens": completion_tokens or 0,
                         "total_tokens": (prompt_tokens or 0) + (completion_tokens or 0)}
    return body


def error_body(message: str, type_: str = "server_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def echo_reply(body: dict[str, Any], n: int) -> Reply:
    """The default script: echo the last message, so a pipeline run over it is deterministic."""
    messages = body.get("messages") or [{}]
    return chat_reply(f"echo: {messages[-1].get('content', '')}", model=body.get("model", "scripted-model"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that the tests kill or cancel mid-request are expected; anything else is shown.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _LoopbackServer:
    """Start/stop plumbing shared by both fakes."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        handler = type("Handler", (self.handler,), {"owner": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do: a drop hits a reused connection
    timeout = 10  # an idle keep-alive connection must not pin a handler thread forever
    # headers and body go out in two writes: without TCP_NODELAY each reply waits out a delayed ACK
    disable_nagle_algorithm = True
    owner: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _ScriptedHandler(_Handler):
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, {"object": "list", "data": [
                {"id": self.owner.model, "object": "model", "created": 0, "owned_by": "scripted"}]})
        else:
            self.send_json(404, error_body(f"no route {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        raw = self.read_body()
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_json(404, error_body(f"no route {self.path}", "not_found_error"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_json(400, error_body("body is not JSON", "invalid_request_error"))
            return
        status, payload, headers = self.owner.answer(body, {k.lower(): v for k, v in self.headers.items()})
        self.send_json(status, payload, headers)


class ScriptedOpenAIServer(_LoopbackServer):
    """An OpenAI-compatible chat server whose every answer a test scripts.

    ``reply(body, n)`` gets the request JSON and the 0-based request count and returns a chat
    completion dict (200) or ``(status, json_body, headers)``. It runs in the handler thread, so it
    may sleep to simulate generation time; ``max_in_flight`` then shows the client's concurrency.
    """

    handler = _ScriptedHandler

    def __init__(self, reply: ReplyFn | None = None, *, model: str = "scripted-model"):
        self.reply: ReplyFn = reply or echo_reply
        self.model = model
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # lower-case names, in the order of ``received``
        self.errors: list[str] = []  # exceptions raised by ``reply`` (answered as 500)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        super().__init__()

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            n = len(self.received)
            self.received.append(body)
            self.headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            result = self.reply(body, n)
        except Exception as exc:
            self.errors.append(repr(exc))
            return 500, error_body(f"scripted reply failed: {exc!r}"), {}
        finally:
            with self._lock:
                self.in_flight -= 1
        if isinstance(result, tuple):
            status, payload, headers = result
            return status, payload, dict(headers)
        return 200, result, {}


class _ProxyHandler(_Handler):
    def do_GET(self) -> None:
        self.owner.forward(self, "GET", b"")

    def do_POST(self) -> None:
        raw = self.read_body()
        proxy: FaultProxy = self.owner
        fault = proxy.next_fault()
        if fault is None:
            if proxy.wait_for_slot():
                proxy.record_forward(raw)
                proxy.forward(self, "POST", raw)
            else:  # stopping while held: never forwarded, the client just loses its connection
                self.close_connection = True
            return
        if fault == "drop":
            self.close_connection = True  # no status line at all: the client sees a dropped connection
            return
        if fault in ("429", "429-noheader"):
            headers = {"Retry-After": "0"} if fault == "429" else {}
            self.send_json(429, error_body("rate limited (fault proxy)", "rate_limit_error",
                                           "rate_limit_exceeded"), headers)
            return
        if fault.isdigit() and len(fault) == 3:
            self.send_json(int(fault), error_body(f"injected {fault} (fault proxy)"))
            return
        raise ValueError(f"unknown fault {fault!r}")


class FaultProxy(_LoopbackServer):
    """A reverse proxy that fails chosen POSTs before they reach the upstream.

    ``faults(n)`` gets the 0-based count of POSTs seen and returns None (forward), ``"429"`` (with
    ``Retry-After: 0``), ``"429-noheader"``, ``"500"`` (any 3-digit status works) or ``"drop"`` (close
    the connection without a response). Faulted requests never reach the upstream, so ``forwarded``
    is exactly what the real server received. With ``hold`` set, once ``hold_after`` POSTs have been
    forwarded the next ones wait, unforwarded, until the event is set (or the proxy stops): a test can
    then kill a client knowing that nothing of it is in flight upstream. GETs are forwarded as-is.
    """

    handler = _ProxyHandler

    def __init__(self, upstream: str, faults: FaultPlan | None = None, *, hold: threading.Event | None = None,
                 hold_after: int = 0, timeout_s: float = 60.0):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"FaultProxy needs an http:// upstream, not {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.upstream_prefix = parsed.path.rstrip("/")
        self.faults: FaultPlan = faults or (lambda n: None)
        self.hold = hold
        self.hold_after = hold_after
        self.timeout_s = timeout_s
        self.forwarded: list[dict[str, Any]] = []
        self.faulted: list[str] = []
        self.seen = 0
        self.held = 0  # requests waiting on ``hold`` right now
        self._reserved = 0
        self._lock = threading.Lock()
        super().__init__()

    def next_fault(self) -> str | None:
        with self._lock:
            n = self.seen
            self.seen += 1
        fault = self.faults(n)
        if fault is not None:
            with self._lock:
                self.faulted.append(fault)
        return fault

    def wait_for_slot(self) -> bool:
        """Reserve a forwarding slot, waiting on ``hold`` past ``hold_after``; False if stopped first."""
        with self._lock:
            if self.hold is None or self.hold.is_set() or self._reserved < self.hold_after:
                self._reserved += 1
                return True
            self.held += 1
        try:
            while not self.hold.wait(0.02):
                if self.stopping.is_set():
                    return False
        finally:
            with self._lock:
                self.held -= 1
        with self._lock:
            self._reserved += 1
        return True

    def record_forward(self, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        with self._lock:
            self.forwarded.append(body)

    def forward(self, handler: _Handler, method: str, raw: bytes) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        if raw:
            headers["Content-Length"] = str(len(raw))
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.timeout_s)
        try:
            conn.request(method, self.upstream_prefix + handler.path, body=raw or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            status, reply_headers = response.status, response.getheaders()
        except OSError as exc:
            handler.send_json(502, error_body(f"fault proxy: upstream unreachable: {exc!r}"))
            return
        finally:
            conn.close()
        try:
            handler.send_response(status)
            for name, value in reply_headers:
                if name.lower() not in HOP_BY_HOP | {"server", "date"}:  # send_response adds its own
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client went away (killed mid-request): nothing to tell it
            handler.close_connection = True


def assert_no_teacher_threads(name: str = "openai-teacher", wait_s: float = 2.0) -> None:
    """The openai backend's event-loop threads end with their generator; a leak fails the test."""
    deadline = time.monotonic() + wait_s
    while any(t.name == name for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == name]
