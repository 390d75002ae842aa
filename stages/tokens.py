"""Token counts from the one tokenizer a recipe names, so budgets, scores and the card agree.

Specs:
- ``embedded``: the embedded teacher's own tokenizer (SmolLM2 GGUF, read vocab-only by llama.cpp);
- ``gguf:PATH``: the tokenizer inside any GGUF file;
- ``hf:REPO`` or a path to a ``tokenizer.json``: a Hugging Face ``tokenizers`` tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stages.deps import load
from stages.embedded_model import embedded_gguf_path, file_sha256, quiet_llama_logs


@dataclass(frozen=True)
class Tokenizer:
    spec: str
    name: str
    revision: str
    encode: Callable[[str], Sequence[int]]

    def count(self, texts: Sequence[str | None]) -> list[int | None]:
        """Token counts; ``None`` stays ``None`` (a missing text has no length, not zero)."""
        return [None if t is None else len(self.encode(t)) for t in texts]

    def describe(self) -> dict[str, str]:
        return {"spec": self.spec, "name": self.name, "revision": self.revision}


def _gguf(spec: str, path: Path) -> Tokenizer:
    llama_cpp = load("llama_cpp", "llamacpp")
    quiet_llama_logs()
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def encode(text: str) -> Sequence[int]:
        return model.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    name = str(model.metadata.get("general.name") or path.name)
    return Tokenizer(spec, name, "sha256:" + file_sha256(str(path)), encode)


def _hf(spec: str, ref: str) -> Tokenizer:
    tokenizers = load("tokenizers", "tokenizers")
    if Path(ref).is_file():
        tok = tokenizers.Tokenizer.from_file(ref)
        revision = "sha256:" + file_sha256(ref)
    else:
        tok = tokenizers.Tokenizer.from_pretrained(ref)
        revision = "hub"

    def encode(text: str) -> Sequence[int]:
        return tok.encode(text, add_special_tokens=False).ids

    return Tokenizer(spec, ref, revision, encode)


@lru_cache(maxsize=4)
def load_tokenizer(spec: str) -> Tokenizer:
    """Load once per process: pool workers each keep their own copy."""
    if spec == "embedded":
        return _gguf(spec, embedded_gguf_path())
    if spec.startswith("gguf:"):
        return _gguf(spec, Path(spec.removeprefix("gguf:")))
    if spec.startswith("hf:"):
        return _hf(spec, spec.removeprefix("hf:"))
    if spec.endswith(".json"):
        return _hf(spec, spec)
    raise ValueError(
        f"unknown tokenizer '{spec}': use 'embedded', 'gguf:PATH', 'hf:REPO' or a tokenizer.json path"
    )
