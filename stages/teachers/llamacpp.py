"""The embedded default teacher: llama-cpp-python on CPU, so a laptop dry run needs no server.

One model per process, one sample at a time: llama.cpp already uses every core for one sequence,
so concurrency would only interleave. Sample ``i`` uses seed ``base + i`` like every backend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from stages.deps import load
from stages.embedded_model import EMBEDDED_MODEL, embedded_gguf_path, file_sha256, quiet_llama_logs
from stages.teachers.base import Completion, LlamaCppTeacher, Request, Sample, TeacherInfo, choice_grammar

# our sampling names -> llama-cpp-python's create_chat_completion names
_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "repetition_penalty": "repeat_penalty", "max_tokens": "max_tokens", "stop": "stop"}


def model_file(config: LlamaCppTeacher) -> Path:
    path = embedded_gguf_path() if config.model == "embedded" else Path(config.model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"llamacpp teacher '{config.name}': no GGUF file at {path}")
    return path


def teacher_info(config: LlamaCppTeacher) -> TeacherInfo:
    """Known without loading the model, so fully cached runs never load it."""
    path = model_file(config)
    name = EMBEDDED_MODEL if config.model == "embedded" else path.name
    return TeacherInfo("llamacpp", name, "sha256:" + file_sha256(str(path)))


class LlamaCppBackend:
    def __init__(self, config: LlamaCppTeacher, base_seed: int):
        llama_cpp = load("llama_cpp", "llamacpp")
        self.config = config
        self.info = teacher_info(config)
        self.sampling = config.sampling_params(base_seed)
        self._grammars: dict[tuple[str, ...], object] = {}
        quiet_llama_logs()
        self.llm = llama_cpp.Llama(
            model_path=str(model_file(config)), n_ctx=config.n_ctx,
            n_threads=config.n_threads or os.cpu_count(), chat_format=config.chat_format,
            seed=self.sampling["seed"], verbose=False)

    def generate(self, requests: Iterable[Request]) -> Iterator[Sample]:
        kwargs = {ours: self.sampling[theirs_key] for theirs_key, ours in _PARAMS.items()
                  if theirs_key in self.sampling}
        for request in requests:
            constrained = dict(kwargs)
            if request.choices:
                constrained["grammar"] = self._grammar(request.choices)
            for index in request.indices:
                t0 = time.perf_counter()
                reply = self.llm.create_chat_completion(
                    messages=list(request.messages), seed=self.sampling["seed"] + index, **constrained)
                choice, usage = reply["choices"][0], reply.get("usage") or {}
                message = choice.get("message") or {}
                yield Sample(request, index, Completion(
                    text=message.get("content") or "",
                    reasoning=message.get("reasoning_content"),
                    finish_reason=choice.get("finish_reason"),
                    prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"),
                    latency_s=round(time.perf_counter() - t0, 4)))

    def _grammar(self, choices: tuple[str, ...]):
        import llama_cpp

        if choices not in self._grammars:
            grammar = llama_cpp.LlamaGrammar.from_string(choice_grammar(choices), verbose=False)
            self._grammars[choices] = grammar
        return self._grammars[choices]

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()
