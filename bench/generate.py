"""Benchmark: tokens/s of the generate stage against calling the same backend directly.

For each backend the stage runs from an empty request cache (through the runner, as a recipe runs
it: input reading, cache writes, Parquet parts, accounting) and the raw baseline sends the same
prompts with the same seeds, threads and concurrency straight to the backend. Completions are
identical (same seeds), so the ratio is the cost of the stage's bookkeeping. Runs alternate
(raw, stage, raw, stage...) and the best of each is kept, because these machines are shared.

    python bench/generate.py                       # both backends; JSON on stdout
    python bench/generate.py --backends llamacpp --problems 8

Prints ``{backend: {stage_tokens_per_s, raw_tokens_per_s, ratio, ...}}``; the target is ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.recipe import parse_recipe
from pipelines.runner import Options, run
from stages.embedded_model import embedded_gguf_path
from stages.generate import render_messages
from stages.teachers.llamacpp_server import local_server

RECIPE = """\
name: bench-generate
seed: 11
workers: 1
stages:
  - name: ingest
    uses: ingest
    sources: [{{kind: synthetic, n: {problems}}}]
  - name: generate
    uses: generate
    inputs: [ingest]
    teachers:
      - {teacher}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="llamacpp,openai", help="comma-separated: llamacpp, openai")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--samples", type=int, default=2, help="samples per problem")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (both sides)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (openai, both sides)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; best kept")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        for backend in args.backends.split(","):
            results[backend] = bench_backend(backend.strip(), args, Path(tmp) / backend)
    print(json.dumps(results, indent=2))


def bench_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict:
    sampling = f"samples: {args.samples}, max_tokens: {args.max_tokens}, temperature: 0.7"
    with contextlib.ExitStack() as stack:
        if backend == "llamacpp":
            teacher = f"{{name: t, backend: llamacpp, n_threads: {args.threads}, {sampling}}}"
        elif backend == "openai":
            url = stack.enter_context(local_server(embedded_gguf_path(), tmp / "server.log",
                                                   threads=args.threads))
            teacher = (f"{{name: t, backend: openai, model: smollm2, base_url: '{url}/v1', "
                       f"concurrency: {args.concurrency}, {sampling}}}")
        else:
            raise SystemExit(f"unknown backend {backend!r}")
        recipe = parse_recipe(RECIPE.format(problems=args.problems, teacher=teacher), "bench")
        run(recipe, str(tmp / "setup"), Options(until="ingest", progress=False))
        problems = pq.read_table(tmp / "setup" / "ingest").to_pylist()
        config = recipe.instances["generate"].config
        stage, raw = [], []
        for i in range(args.repeats):
            raw.append(raw_run(backend, config, problems, args, recipe.model.seed))
            log(f"{backend} raw #{i}: {raw[-1][0]} tokens in {raw[-1][1]:.2f} s")
            stage.append(stage_run(recipe, tmp, i))
            log(f"{backend} stage #{i}: {stage[-1][0]} tokens in {stage[-1][1]:.2f} s")
    stage_tps = max(tokens / seconds for tokens, seconds in stage)
    raw_tps = max(tokens / seconds for tokens, seconds in raw)
    return {"stage_tokens_per_s": round(stage_tps, 2), "raw_tokens_per_s": round(raw_tps, 2),
            "ratio": round(stage_tps / raw_tps, 3), "tokens": stage[0][0], "raw_tokens": raw[0][0],
            "problems": args.problems, "samples": args.samples, "max_tokens": args.max_tokens,
            "threads": args.threads, "concurrency": args.concurrency if backend == "openai" else 1}


def stage_run(recipe, tmp: Path, i: int) -> tuple[int, float]:
    """The generate stage through the runner, from an empty request cache; timed by its manifest."""
    run_dir = tmp / f"stage-{i}"
    reports = run(recipe, str(run_dir), Options(progress=False, request_cache=str(tmp / f"cache-{i}")))
    manifest = next(r.manifest for r in reports if r.stage == "generate")
    assert next(r.status for r in reports if r.stage == "generate") == "ran"
    return manifest["stats"]["teachers"]["t"]["generated_tokens"], manifest["seconds"]


def raw_run(backend: str, config, problems: list[dict], args: argparse.Namespace,
            seed: int) -> tuple[int, float]:
    """The same prompts and seeds, straight to the backend's own client."""
    teacher = config.teachers[0]
    params = teacher.sampling_params(seed)
    prompts = [(list(render_messages(p, config)), params["seed"] + i)
               for p in problems for i in range(teacher.samples)]
    t0 = time.perf_counter()
    if backend == "llamacpp":
        import llama_cpp

        from stages.embedded_model import quiet_llama_logs

        quiet_llama_logs()
        llm = llama_cpp.Llama(model_path=str(embedded_gguf_path()), n_ctx=teacher.n_ctx,
                              n_threads=args.threads, seed=params["seed"], verbose=False)
        tokens = 0
        for messages, s in prompts:
            reply = llm.create_chat_completion(messages=messages, seed=s, max_tokens=params["max_tokens"],
                                               temperature=params["temperature"])
            tokens += reply["usage"]["completion_tokens"]
        llm.close()
    else:
        tokens = asyncio.run(_raw_openai(teacher, prompts, params, args.concurrency))
    return tokens, time.perf_counter() - t0


async def _raw_openai(teacher, prompts: list, params: dict, concurrency: int) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=teacher.base_url, api_key="EMPTY", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(messages: list, s: int) -> int:
        async with gate:
            reply = await client.chat.completions.create(
                model=teacher.model, messages=messages, seed=s, max_tokens=params["max_tokens"],
                temperature=params["temperature"])
            return reply.usage.completion_tokens

    try:
        return sum(await asyncio.gather(*(one(m, s) for m, s in prompts)))
    finally:
        await client.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
