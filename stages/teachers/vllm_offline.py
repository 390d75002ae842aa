"""The production teacher: vLLM's offline ``LLM`` engine on local GPUs, no server in between.

Requests are pulled lazily, ``chunk_size`` at a time, and each chunk is one ``LLM.chat`` call: vLLM
schedules the whole chunk with continuous batching, and the caller caches results per chunk, so a
killed run loses at most one chunk and a token budget stops the feed between chunks.

All the samples a request wants go out as ONE vLLM request with ``SamplingParams(n=k)`` rather than
k copies of the prompt: vLLM's n>1 path prefills the prompt once and forks its KV blocks for the k
sequences (and prefix caching shares the rest). Seeds: such a request carries the seed of its first
index, ``base + i0``. vLLM's V1 engine splits an n>1 request into children and gives child ``j`` the
seed ``seed + j`` (``vllm/v1/engine/parallel_sampling.py``), so for consecutive indices child ``j``
is seeded ``base + i0 + j = base + indices[j]``: exactly the seed sample ``indices[j]`` would get if
asked for alone, which is the contract of ``stages.teachers.base``. To keep that true when a resumed
run asks for scattered indices (say 1 and 3, because 0 and 2 are cached), a request is split into
runs of consecutive indices, each its own vLLM request seeded from its first index; the usual cases
(all indices of a fresh problem, or the missing tail of a resumed one) stay a single request. So a
resumed run that asks only for the missing indices gets them seeded from the first missing index
of each run: deterministic given what is cached. (vLLM's V0 engine, gone since 0.10, drew the n
sequences from one generator seeded once; there only the first sample of a request matches.)

``Completion.reasoning`` is always None: the offline engine returns the raw completion and does not
split reasoning out (that is a server feature); parsing handles ``<think>`` blocks in the text.

Offline data parallelism is not an ``LLM`` option: ``data_parallel_size`` reaches ``EngineArgs``
through ``**kwargs``, but one ``LLM`` in one process hangs with it (vLLM issue #22575) and vLLM
0.11.1+ refuses it outright (PR #27282); offline DP means one process per rank with ``VLLM_DP_*``
variables, each fed its own share of prompts. So ``data_parallel_size > 1`` is rejected here with
the working alternative: ``vllm serve --data-parallel-size N`` behind the ``openai`` backend.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

from stages.deps import load
from stages.teachers.base import Completion, Request, Sample, TeacherInfo, VLLMTeacher


def index_runs(indices: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Split indices into runs of consecutive values, so every run's child ``j`` gets seed ``base + i``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return [tuple(run) for run in runs]


def llm_kwargs(config: VLLMTeacher, seed: int) -> dict[str, Any]:
    """What ``vllm.LLM`` gets: only what the recipe decides, so vLLM's own defaults stay in force."""
    if config.data_parallel_size > 1:
        raise ValueError(
            f"vllm teacher '{config.name}': data_parallel_size={config.data_parallel_size} is not supported "
            "by vLLM's offline LLM engine (one LLM per process; vLLM 0.11.1+ rejects it and older versions "
            "hang). Serve the model with `vllm serve MODEL --data-parallel-size N` and use the 'openai' "
            "backend, or keep data_parallel_size=1 and raise tensor_parallel_size.")
    kwargs: dict[str, Any] = {
        "model": config.model,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enable_prefix_caching": config.enable_prefix_caching,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
        "seed": seed,
    }
    if config.revision is not None:
        kwargs["revision"] = config.revision
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    return kwargs


def sampling_kwargs(sampling: dict[str, Any], run: tuple[int, ...]) -> dict[str, Any]:
    """``SamplingParams`` for one run of indices; unset parameters are left to vLLM's defaults."""
    kwargs = {key: value for key, value in sampling.items() if key != "seed" and value is not None}
    if "top_k" in kwargs and kwargs["top_k"] <= 0:
        kwargs["top_k"] = -1  # "disabled": -1 in every vLLM version, 0 only in recent ones
    if "stop" in kwargs:
        kwargs["stop"] = list(kwargs["stop"])
    return {"n": len(run), "seed": sampling["seed"] + run[0], **kwargs}


class VLLMBackend:
    def __init__(self, config: VLLMTeacher, base_seed: int):
        self.config = config
        self.sampling = config.sampling_params(base_seed)
        engine_kwargs = llm_kwargs(config, self.sampling["seed"])  # config errors before the import
        self._vllm = load("vllm", "vllm")
        self.info = TeacherInfo("vllm", config.model, config.revision)
        self.llm: Any = self._vllm.LLM(**engine_kwargs)

    def generate(self, requests: Iterable[Request]) -> Iterator[Sample]:
        if self.llm is None:
            raise RuntimeError("the vllm backend is closed")
        pending = iter(requests)
        chat_kwargs: dict[str, Any] = {"use_tqdm": False, "add_generation_prompt": True}
        if self.config.chat_template is not None:
            chat_kwargs["chat_template"] = self.config.chat_template
        while chunk := list(itertools.islice(pending, self.config.chunk_size)):
            jobs = [(request, run) for request in chunk for run in index_runs(request.indices)]
            if not jobs:
                continue
            conversations = [[dict(message) for message in request.messages] for request, _ in jobs]
            params = [self._vllm.SamplingParams(**sampling_kwargs(self.sampling, run),
                                                **self._constraint(request.choices))
                      for request, run in jobs]
            t0 = time.perf_counter()
            outputs = self.llm.chat(conversations, params, **chat_kwargs)
            wall = time.perf_counter() - t0
            if len(outputs) != len(jobs):
                raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(jobs)} requests")
            latency = round(wall / sum(len(run) for _, run in jobs), 4)
            for (request, run), output in zip(jobs, outputs, strict=True):
                yield from self._samples(request, run, output, latency)

    def _constraint(self, choices: tuple[str, ...] | None) -> dict[str, Any]:
        """Guided decoding to the choices: ``structured_outputs`` in recent vLLM, ``guided_decoding``
        before (0.6 to 0.10)."""
        if not choices:
            return {}
        sampling_params = self._vllm.sampling_params if hasattr(self._vllm, "sampling_params") else None
        if sampling_params is not None and hasattr(sampling_params, "StructuredOutputsParams"):
            return {"structured_outputs": sampling_params.StructuredOutputsParams(choice=list(choices))}
        if sampling_params is not None and hasattr(sampling_params, "GuidedDecodingParams"):
            return {"guided_decoding": sampling_params.GuidedDecodingParams(choice=list(choices))}
        raise RuntimeError("this vLLM offers no guided decoding (structured_outputs or guided_decoding)")

    def _samples(self, request: Request, run: tuple[int, ...], output: Any,
                 latency: float) -> Iterator[Sample]:
        """Output ``k`` of a vLLM request is sample ``run[k]``; ``.index`` says which, whatever the order."""
        completions = sorted(output.outputs, key=lambda c: c.index)
        if [c.index for c in completions] != list(range(len(run))):
            raise RuntimeError(f"vLLM returned outputs {[c.index for c in completions]} for n={len(run)} "
                               f"(request {request.id!r})")
        prompt_ids = getattr(output, "prompt_token_ids", None)
        prompt_tokens = len(prompt_ids) if prompt_ids is not None else None
        for completion in completions:
            token_ids = getattr(completion, "token_ids", None)
            yield Sample(request, run[completion.index], Completion(
                text=completion.text or "",
                reasoning=None,
                finish_reason=completion.finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(token_ids) if token_ids is not None else None,
                latency_s=latency))

    def close(self) -> None:
        """Give the GPU back, so a later stage (or teacher) in this process can load its own model."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        del llm
        with contextlib.suppress(Exception):  # vLLM's own teardown of its distributed groups
            importlib.import_module("vllm.distributed.parallel_state").cleanup_dist_env_and_memory()
        gc.collect()
        try:
            import torch
        except ImportError:
            return
        with contextlib.suppress(Exception):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
