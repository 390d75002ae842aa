"""The openai backend against a real OpenAI-compatible server: ``python -m llama_cpp.server`` on
127.0.0.1 with the embedded SmolLM2 model, behind a loopback proxy that injects faults.

What the server received is counted at the proxy (``forwarded``): faulted requests never reach it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.openai_fakes import FaultProxy

from pipelines.recipe import parse_recipe
from pipelines.runner import Options, run
from pipelines.store import RunDir
from stages.embedded_model import embedded_gguf_path
from stages.teachers.llamacpp_server import local_server

pytestmark = pytest.mark.slow

RECIPE = """\
name: served
seed: 5
workers: 1
stages:
  - name: ingest
    uses: ingest
    sources: [{{kind: synthetic, n: {n}}}]
  - name: generate
    uses: generate
    inputs: [ingest]
    problems_per_part: 4
    teachers:
      - name: smollm2-served
        backend: openai
        model: smollm2
        base_url: {base_url}
        samples: 2
        max_tokens: 12
        temperature: 0.8
        concurrency: 3
        backoff_s: 0.01
        max_backoff_s: 0.05
  - name: parse
    uses: parse
    inputs: [generate, ingest]
"""


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with local_server(embedded_gguf_path(), log, alias="smollm2", threads=2, n_ctx=1024) as url:
        yield url


def _sent(proxy: FaultProxy) -> Counter:
    """Each request the server received, by (prompt, seed)."""
    return Counter((json.dumps(b["messages"], sort_keys=True), b["seed"]) for b in proxy.forwarded)


def _traces(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "generate").to_pylist()


def test_every_request_completes_once_through_429_500_and_drops(llama_server, tmp_path):
    plan = {1: "429", 2: "500", 4: "drop", 5: "429-noheader", 7: "503", 8: "drop", 11: "500"}
    with FaultProxy(llama_server, faults=plan.get) as proxy:
        recipe = parse_recipe(RECIPE.format(n=6, base_url=proxy.base_url))
        run(recipe, str(tmp_path / "run"), Options(progress=False, request_cache=str(tmp_path / "cache")))
    traces = _traces(tmp_path / "run")
    assert len(traces) == 12
    assert Counter((t["problem_id"], t["sample_index"]) for t in traces).most_common(1)[0][1] == 1
    assert all(t["completion"] and t["finish_reason"] in {"stop", "length"} for t in traces)
    assert sorted(proxy.faulted) == sorted(plan.values())
    sent = _sent(proxy)
    assert len(sent) == 12 and max(sent.values()) == 1  # every sample reached the server exactly once
    stats = RunDir(str(tmp_path / "run")).manifest("generate")["stats"]["teachers"]["smollm2-served"]
    assert stats["generated_samples"] == 12 and stats["backend_retries"] == len(plan)
    parsed = RunDir(str(tmp_path / "run")).manifest("parse")
    assert parsed["rows_in"] == parsed["rows_out"] + parsed["rows_rejected"] == 12


def test_a_run_killed_mid_stage_resumes_without_sending_any_request_twice(llama_server, tmp_path):
    cache, run_dir, first = tmp_path / "cache", tmp_path / "run", 5
    hold = threading.Event()  # never set: requests past the first five wait at the proxy, unsent
    with FaultProxy(llama_server, hold=hold, hold_after=first) as proxy:
        recipe_file = tmp_path / "served.yaml"
        recipe_file.write_text(RECIPE.format(n=8, base_url=proxy.base_url))
        cmd = [sys.executable, "-m", "pipelines.cli", "run", str(recipe_file), "--run-dir", str(run_dir),
               "--request-cache", str(cache), "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(list(cache.glob("*/*.json"))) < first:  # the five answers are stored: none in flight
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the first requests were never answered"
            time.sleep(0.05)
        assert proxy.held > 0  # the run is inside the stage, waiting on more
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "generate" / "_manifest.json").exists()
    before = _sent(proxy)
    assert sum(before.values()) == first

    with FaultProxy(llama_server) as again:  # a new port: base_url is not part of a request's key
        recipe_file.write_text(RECIPE.format(n=8, base_url=again.base_url))
        resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = _sent(again)
    assert sum(after.values()) == 16 - first and not set(before) & set(after)
    assert max((before + after).values()) == 1
    traces = _traces(run_dir)
    assert len(traces) == 16 and len({t["trace_id"] for t in traces}) == 16
    stats = RunDir(str(run_dir)).manifest("generate")["stats"]["teachers"]["smollm2-served"]
    assert (stats["cached_samples"], stats["generated_samples"]) == (first, 16 - first)
