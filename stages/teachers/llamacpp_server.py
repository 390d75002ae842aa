"""Start llama.cpp's OpenAI-compatible server on loopback: the ``openai`` backend's local twin.

For trying a recipe's ``openai`` teacher without a GPU server, for benchmarks and for tests. The
server's log goes to a file: llama.cpp's load log fills a pipe and the server stalls before it
listens.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_server(model: Path, log: Path, *, alias: str = "smollm2", threads: int = 2, n_ctx: int = 2048,
                 start_timeout_s: float = 60) -> Iterator[str]:
    """Yield the server's URL (``http://127.0.0.1:PORT``) once it answers ``/v1/models``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_ctx", str(n_ctx)],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start; its log: {log}\n"
                                       f"{log.read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
