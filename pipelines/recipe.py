"""Recipes: YAML files listing stage instances. Every mistake is reported as ``file:line: key: problem``.

A recipe is checked whole before anything runs: unknown keys, wrong types, unknown stage types,
inputs that do not exist or do not provide the tables a stage reads, and cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stages import registry
from stages.contract import StageConfig, StageType


class RecipeError(ValueError):
    """A recipe mistake; the message names the file, the line where known, and the key path."""


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="unique; the folder and task id")
    uses: str = Field(description="the stage type (see `tracefoundry stages`)")
    inputs: list[str] = Field(default_factory=list, description="names of upstream instances")


class RecipeModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    tokenizer: str = Field("embedded", description="the tokenizer of every token count in the run")
    batch_size: int = Field(1000, gt=0, description="rows per batch of record-parallel stages")
    workers: int = Field(2, gt=0, description="processes for record-parallel stages")
    request_cache: str | None = Field(
        None, description="where model-calling stages keep every completion (a path or fsspec URL); "
        "share one between runs and scheduler tasks; default: <run dir>/_request_cache")
    stages: list[StageSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Instance:
    name: str
    type: StageType
    config: StageConfig
    inputs: dict[str, str]  # table -> upstream instance name
    index: int  # position in the recipe, for messages


@dataclass(frozen=True)
class Recipe:
    path: str
    model: RecipeModel
    instances: dict[str, Instance]

    @property
    def name(self) -> str:
        return self.model.name


def load_recipe(path: str | Path) -> Recipe:
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe: {e.strerror}") from None
    return parse_recipe(text, path)


def parse_recipe(text: str, path: str = "<recipe>") -> Recipe:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise RecipeError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    lines = _line_map(node) if node is not None else {}
    err = _Reporter(path, lines)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with 'name' and 'stages'")
    try:
        model = RecipeModel.model_validate(data)
    except ValidationError as e:
        raise err.from_validation(e, ()) from None
    instances: dict[str, Instance] = {}
    for i, spec in enumerate(model.stages):
        at = ("stages", i)
        if spec.name in instances:
            raise err((*at, "name"), f"duplicate stage name '{spec.name}'")
        try:
            stage = registry.get(spec.uses)
        except KeyError as e:
            raise err((*at, "uses"), str(e.args[0])) from None
        try:
            config = stage.config.model_validate(spec.model_extra or {})
        except ValidationError as e:
            raise err.from_validation(e, at) from None
        inputs = _resolve_inputs(spec, stage, instances, err, at)
        instances[spec.name] = Instance(spec.name, stage, config, inputs, i)
    return Recipe(path, model, instances)


def _resolve_inputs(spec: StageSpec, stage: StageType, known: dict[str, Instance], err: _Reporter,
                    at: tuple) -> dict[str, str]:
    """Map each table the stage reads to the one upstream instance that provides it."""
    provided: dict[str, str] = {}
    for j, name in enumerate(spec.inputs):
        if name not in known:
            hint = "a stage cannot read itself" if name == spec.name else "define it earlier in the recipe"
            raise err((*at, "inputs", j), f"unknown input '{name}' ({hint})")
        table = known[name].type.output_table
        if known[name].type.output_glob != "part-*.parquet":
            raise err((*at, "inputs", j), f"'{name}' ({known[name].type.name}) writes no table to read")
        if table in provided:
            raise err((*at, "inputs", j), f"both '{provided[table]}' and '{name}' provide the {table} table")
        provided[table] = name
    wanted = ([stage.input_table] if stage.input_table else []) + list(stage.needs)
    for table in wanted:
        if table not in provided:
            raise err((*at, "inputs"), f"'{stage.name}' reads the {table} table: name an input that "
                                        f"provides it")
    extra = set(provided) - set(wanted)
    if extra:
        raise err((*at, "inputs"), f"'{stage.name}' does not read the {', '.join(sorted(extra))} table")
    return {t: provided[t] for t in wanted}


class _Reporter:
    def __init__(self, path: str, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def __call__(self, key: tuple, message: str) -> RecipeError:
        line = None
        for n in range(len(key), -1, -1):  # the deepest part of the path that exists in the file
            line = self.lines.get(tuple(key[:n]))
            if line is not None:
                break
        where = f"{self.path}:{line}" if line else self.path
        return RecipeError(f"{where}: {_dotted(key)}: {message}")

    def from_validation(self, e: ValidationError, prefix: tuple) -> RecipeError:
        problems = []
        for item in e.errors():
            key = prefix + tuple(item["loc"])
            # pydantic adds the union member's tag to the path (sources.0.files.paths); drop it
            key = tuple(k for k in key if not (isinstance(k, str) and k in {"synthetic", "files", "hub"}))
            got = "" if item["type"] in {"missing", "extra_forbidden"} else f" (got {item.get('input')!r})"
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(str(self(key, f"{message}{got}")))
        return RecipeError("\n".join(problems))


def _dotted(key: tuple) -> str:
    out = ""
    for k in key:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(top)"


def _line_map(node: Any, key: tuple = ()) -> dict[tuple, int]:
    """YAML node tree -> {key path: 1-based line}, so errors point at the line to fix."""
    lines = {key: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            lines[(*key, k.value)] = k.start_mark.line + 1
            lines.update({p: n for p, n in _line_map(v, (*key, k.value)).items() if p != (*key, k.value)})
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.update(_line_map(v, (*key, i)))
    return lines
