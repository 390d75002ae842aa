"""The stage graph: run order, fingerprints and the ids a run derives from them.

A stage's fingerprint covers its type and version, its config, the schema version, the recipe's
seed and tokenizer, the sample size for sources, and its inputs' fingerprints. So changing one
stage re-runs it and what follows, never what precedes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from pipelines.recipe import Instance, Recipe
from schemas.ids import digest
from schemas.tables import SCHEMA_VERSION


def code_version() -> str:
    try:
        return version("tracefoundry")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True)
class Plan:
    order: list[str]
    fingerprints: dict[str, str]
    recipe_fingerprint: str
    run_id: str

    def downstream(self, recipe: Recipe, names: set[str]) -> set[str]:
        """The named stages and everything that reads from them, directly or not."""
        out = set(names)
        for name in self.order:
            if any(src in out for src in recipe.instances[name].inputs.values()):
                out.add(name)
        return out

    def upstream(self, recipe: Recipe, name: str) -> set[str]:
        out, todo = set(), [name]
        while todo:
            for src in recipe.instances[todo.pop()].inputs.values():
                if src not in out:
                    out.add(src)
                    todo.append(src)
        return out


def plan(recipe: Recipe, sample: int | None) -> Plan:
    # Inputs must be defined earlier (checked when the recipe loads), so recipe order is topological.
    order = list(recipe.instances)
    fingerprints: dict[str, str] = {}
    for name in order:
        fingerprints[name] = fingerprint(recipe, recipe.instances[name], fingerprints, sample)
    recipe_fp = digest("recipe", [fingerprints[n] for n in order])
    run_id = digest("run", recipe_fp, sample, recipe.model.seed, length=16)
    return Plan(order, fingerprints, recipe_fp, run_id)


def fingerprint(recipe: Recipe, inst: Instance, upstream: dict[str, str], sample: int | None) -> str:
    return digest(
        "stage",
        inst.type.name,
        inst.type.version,
        SCHEMA_VERSION,
        inst.config.model_dump(mode="json"),
        {table: upstream[src] for table, src in inst.inputs.items()},
        recipe.model.seed,
        recipe.model.tokenizer,
        sample if inst.type.input_table is None else None,
    )
