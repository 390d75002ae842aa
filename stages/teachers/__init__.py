"""Teacher backends behind one interface (``stages.teachers.base``); each is imported only when used."""

from __future__ import annotations

from stages.teachers.base import Backend, TeacherConfig, TeacherInfo


def open_backend(config: TeacherConfig, base_seed: int) -> Backend:
    """Start the backend a teacher config names. Heavy imports (vllm, llama_cpp) happen here."""
    if config.backend == "llamacpp":
        from stages.teachers.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config, base_seed)
    if config.backend == "openai":
        from stages.teachers.openai_server import OpenAIBackend

        return OpenAIBackend(config, base_seed)
    if config.backend == "vllm":
        from stages.teachers.vllm_offline import VLLMBackend

        return VLLMBackend(config, base_seed)
    raise ValueError(f"unknown teacher backend {config.backend!r}")


def requirements(config: TeacherConfig) -> tuple[tuple[str, str], ...]:
    """(module, extra) pairs a backend needs, checked before a run starts."""
    return {"llamacpp": (("llama_cpp", "llamacpp"),), "vllm": (("vllm", "vllm"),),
            "openai": ()}[config.backend]


def describe(config: TeacherConfig) -> TeacherInfo:
    """Who a teacher is, without starting it: a fully cached run never loads a model."""
    if config.backend == "llamacpp":
        from stages.teachers.llamacpp import teacher_info

        return teacher_info(config)
    return TeacherInfo(config.backend, config.model, config.revision)
