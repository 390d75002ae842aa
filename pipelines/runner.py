"""The local runner: runs a recipe's stages in order on one machine, resumably.

For each stage: skip it if its manifest carries the same fingerprint; otherwise clear its folder,
run it (record-parallel stages over a process pool, global stages once), count what it wrote,
check that nothing vanished, and write the manifest last as the commit marker. A stage that
raises leaves earlier stages intact; the next run starts again at that stage.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines import accounting
from pipelines.graph import Plan, code_version, plan
from pipelines.recipe import Instance, Recipe
from pipelines.store import RunDir
from schemas.tables import REJECTED, SCHEMA_VERSION, TABLES
from stages.contract import Context, Inputs, Result
from stages.deps import require
from stages.io import parquet_rows, write_parquet


class StageFailed(RuntimeError):
    def __init__(self, stage: str, uses: str, error: BaseException):
        super().__init__(f"stage '{stage}' ({uses}) failed: {type(error).__name__}: {error}")
        self.stage = stage


class StageContractError(RuntimeError):
    """A stage wrote rows that do not fit its declared table."""


@dataclass
class Options:
    sample: int | None = None
    from_stage: str | None = None
    until: str | None = None
    force: set[str] = field(default_factory=set)
    workers: int | None = None  # None: the recipe's
    progress: bool = True


@dataclass
class Report:
    """One line of the closing summary."""

    stage: str
    uses: str
    status: str  # ran | cached | not run
    manifest: dict[str, Any] | None


def run(recipe: Recipe, run_dir: str, options: Options | None = None) -> list[Report]:
    options = options or Options()
    the_plan = plan(recipe, options.sample)
    store = RunDir(run_dir)
    selected, forced = _select(recipe, the_plan, options, store)
    for name in selected:  # a missing extra fails now, not after hours of earlier stages
        for module, extra in recipe.instances[name].type.requires:
            require(module, extra)
    reports = []
    with store.lock():
        store.write_json(_run_info(recipe, the_plan, options), "_run.json")
        for name in the_plan.order:
            inst = recipe.instances[name]
            manifest = store.manifest(name)
            if name not in selected:
                reports.append(Report(name, inst.type.name, "not run", manifest))
                continue
            if name not in forced and manifest and manifest.get("fingerprint") == the_plan.fingerprints[name]:
                reports.append(Report(name, inst.type.name, "cached", manifest))
                continue
            manifest = run_stage(recipe, inst, the_plan, store, options)
            reports.append(Report(name, inst.type.name, "ran", manifest))
    return reports


def _select(recipe: Recipe, the_plan: Plan, options: Options, store: RunDir) -> tuple[set[str], set[str]]:
    """Which stages this run may run, and which it must re-run even if up to date."""
    for flag, name in (("--from", options.from_stage), ("--until", options.until),
                       *(("--force", f) for f in options.force)):
        if name is not None and name not in recipe.instances:
            raise KeyError(f"{flag} {name}: no such stage; stages: {', '.join(the_plan.order)}")
    selected = set(the_plan.order)
    if options.until:
        selected = the_plan.upstream(recipe, options.until) | {options.until}
    forced = the_plan.downstream(recipe, options.force)
    if options.from_stage:
        after = the_plan.downstream(recipe, {options.from_stage})
        forced |= after
        selected &= after
        for name in sorted(the_plan.upstream(recipe, options.from_stage) - after):
            done = store.manifest(name)
            if not done or done.get("fingerprint") != the_plan.fingerprints[name]:
                raise ValueError(f"--from {options.from_stage}: upstream stage '{name}' has no up-to-date "
                                 "output in this run directory; run without --from first")
    return selected, forced


def run_stage(recipe: Recipe, inst: Instance, the_plan: Plan, store: RunDir, options: Options) -> dict:
    stype = inst.type
    input_table = stype.input_table or "source"
    store.reset(inst.name)
    ctx = Context(
        recipe=recipe.name, run_id=the_plan.run_id, recipe_fingerprint=the_plan.recipe_fingerprint,
        code_version=code_version(), seed=recipe.model.seed, sample=options.sample, stage=inst.name,
        stage_type=stype.name, fingerprint=the_plan.fingerprints[inst.name],
        tokenizer_spec=recipe.model.tokenizer, stage_dir=store.path(inst.name),
    )
    inputs = Inputs({table: store.files(src, "part-*.parquet") for table, src in inst.inputs.items()})
    primary = inputs[stype.input_table] if stype.input_table else []
    started, t0 = datetime.now(UTC), time.monotonic()
    bar = tqdm(total=parquet_rows(primary) or None, desc=inst.name, unit="row", leave=False,
               disable=not options.progress)
    writes_parts = stype.output_glob == "part-*.parquet"
    writer = PartWriter(ctx, TABLES[stype.output_table], bar, write_parts=writes_parts)
    try:
        if stype.kind == "batch":
            _run_batches(inst, ctx, primary, writer, options.workers or recipe.model.workers,
                         recipe.model.batch_size)
        else:
            stype.fn(inputs, inst.config, ctx, writer)
        writer.close()
    except Exception as e:
        raise StageFailed(inst.name, stype.name, e) from e
    finally:
        bar.close()
    counts = accounting.count(
        input_table, stype.output_table, primary, store.files(inst.name, stype.output_glob),
        store.files(inst.name, "rejected/part-*.parquet"),
        writer.consumed_rows if input_table == "source" else None)
    accounting.check(inst.name, input_table, stype.output_table, counts)
    if not writes_parts:  # a stage with its own layout (emit): list every file it wrote with its rows
        counts["files"] = {path.removeprefix(ctx.stage_dir + "/"): parquet_rows([path])
                           for path in store.files(inst.name, "**/*.parquet") if "/rejected/" not in path}
    manifest = {
        "stage": inst.name, "uses": stype.name, "stage_version": stype.version,
        "input_table": input_table, "output_table": stype.output_table,
        "inputs": inst.inputs, **counts,
        "fingerprint": ctx.fingerprint, "code_version": ctx.code_version, "schema_version": SCHEMA_VERSION,
        "run_id": ctx.run_id, "tokenizer": _tokenizer_info(recipe, stype.output_table),
        "config": inst.config.model_dump(mode="json"), "sample": options.sample,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 3),
    }
    store.write_json(manifest, inst.name, "_manifest.json")
    return manifest


def _tokenizer_info(recipe: Recipe, output_table: str) -> dict[str, str]:
    if output_table != "traces":  # only traces carry token counts
        return {"spec": recipe.model.tokenizer}
    from stages.tokens import load_tokenizer

    return load_tokenizer(recipe.model.tokenizer).describe()


class PartWriter:
    """Writes a stage's parts and rejected rows, numbered in the order they come (deterministic)."""

    def __init__(self, ctx: Context, schema: pa.Schema, bar: tqdm, write_parts: bool):
        self.ctx, self.schema, self.bar, self.write_parts = ctx, schema, bar, write_parts
        self.parts = self.rejected_parts = self.consumed_rows = 0

    def write(self, rows: pa.Table) -> None:
        if not self.write_parts:
            raise StageContractError(f"stage '{self.ctx.stage}' writes its own files, not table parts")
        write_parquet(conform(rows, self.schema, self.ctx.stage),
                      f"{self.ctx.stage_dir}/part-{self.parts:05d}.parquet")
        self.parts += 1

    def reject(self, rejected: pa.Table) -> None:
        if rejected.num_rows == 0:
            return
        n = rejected.num_rows
        rejected = rejected.set_column(0, "stage", pa.array([self.ctx.stage] * n, pa.string()))
        rejected = rejected.set_column(1, "stage_type", pa.array([self.ctx.stage_type] * n, pa.string()))
        write_parquet(rejected, f"{self.ctx.stage_dir}/rejected/part-{self.rejected_parts:05d}.parquet",
                      REJECTED)
        self.rejected_parts += 1

    def consumed(self, n: int) -> None:
        self.consumed_rows += n
        self.bar.update(n)

    def close(self) -> None:
        """Every table stage leaves at least one part, so readers always find a schema."""
        if self.write_parts and self.parts == 0:
            self.write(self.schema.empty_table())


def conform(rows: pa.Table, schema: pa.Schema, stage: str) -> pa.Table:
    """Declared columns first, in declared types; extra columns (added by later stages) follow."""
    missing = [n for n in schema.names if n not in rows.column_names]
    if missing:
        raise StageContractError(f"stage '{stage}' wrote rows without the column(s) {missing}")
    extra = [n for n in rows.column_names if n not in schema.names]
    base = rows.select(schema.names).cast(schema)
    for name in extra:
        base = base.append_column(rows.schema.field(name), rows[name])
    return base


def _run_batches(inst: Instance, ctx: Context, files: list[str], writer: PartWriter, workers: int,
                 batch_size: int) -> None:
    fn, config = inst.type.fn, inst.config

    def deliver(result: Result, rows_in: int) -> None:
        writer.write(result.rows)
        writer.reject(result.rejected)
        writer.bar.update(rows_in)

    if workers <= 1:
        for batch in _batches(files, batch_size):
            deliver(fn(batch, config, ctx), batch.num_rows)
        return
    # spawn, not fork: the parent holds DuckDB/Polars thread pools that a fork would copy half-locked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[Future, int]] = deque()
        for batch in _batches(files, batch_size):
            pending.append((pool.submit(fn, batch, config, ctx), batch.num_rows))
            if len(pending) >= 2 * workers:  # bounded: never read the whole input ahead
                future, n = pending.popleft()
                deliver(future.result(), n)
        while pending:
            future, n = pending.popleft()
            deliver(future.result(), n)


def _batches(files: list[str], batch_size: int) -> Iterator[pa.Table]:
    for path in files:
        with fsspec.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                yield pa.Table.from_batches([batch])


def _run_info(recipe: Recipe, the_plan: Plan, options: Options) -> dict[str, Any]:
    """What this run directory holds; no wall-clock time, so it is identical for identical runs."""
    return {
        "recipe": recipe.name, "recipe_path": recipe.path, "run_id": the_plan.run_id,
        "recipe_fingerprint": the_plan.recipe_fingerprint, "sample": options.sample,
        "seed": recipe.model.seed, "code_version": code_version(),
        "stages": [{"name": n, "uses": recipe.instances[n].type.name, "fingerprint": the_plan.fingerprints[n]}
                   for n in the_plan.order],
    }
