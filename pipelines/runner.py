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
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines import accounting
from pipelines.graph import Plan, code_version, plan
from pipelines.recipe import Instance, Recipe
from pipelines.store import RunDir
from schemas.tables import REJECTED, SCHEMA_VERSION, TABLES
from stages.contract import Context, Inputs, Result
from stages.deps import require
from stages.io import connect, parquet_rows, shard_range, sql_list, write_parquet


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
    shard: tuple[int, int] | None = None  # (i, N): run slice i of N of the shardable stages only
    request_cache: str | None = None  # None: the recipe's, else <run dir>/_request_cache


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' with 0 <= i < N, as the CLI and schedulers write it."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text}: write it as i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < N")
    return i, n


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
        inst = recipe.instances[name]
        if options.shard is None or inst.type.shardable:
            for module, extra in inst.type.requirements(inst.config):
                require(module, extra)
    if options.shard is not None:
        return _run_shard(recipe, the_plan, store, options, selected, forced)
    reports = []
    with store.lock():
        store.check_no_shard_tasks()
        store.write_json(_run_info(recipe, the_plan, options), "_run.json")
        for name in the_plan.order:
            inst = recipe.instances[name]
            manifest = store.manifest(name)
            if name not in selected:
                reports.append(Report(name, inst.type.name, "not run", manifest))
                continue
            if name not in forced and _up_to_date(manifest, the_plan, name):
                reports.append(Report(name, inst.type.name, "cached", manifest))
                continue
            manifest = run_stage(recipe, inst, the_plan, store, options, forced=name in forced)
            reports.append(Report(name, inst.type.name, "ran", manifest))
    return reports


def _up_to_date(manifest: dict | None, the_plan: Plan, name: str) -> bool:
    return bool(manifest) and manifest.get("fingerprint") == the_plan.fingerprints[name]


def _run_shard(recipe: Recipe, the_plan: Plan, store: RunDir, options: Options, selected: set[str],
               forced: set[str]) -> list[Report]:
    """One scheduler task of a fanned-out run: slice i of N of each shardable stage, nothing else.

    Stages that cannot shard must already be complete upstream; a later whole-run task finishes the
    shards that are missing, merges them and runs what follows.
    """
    i, n = options.shard
    reports, pending = [], set()
    with store.lock(f"_lock.shard-{i:05d}-of-{n:05d}"):
        store.check_no_whole_run()
        for name in the_plan.order:
            inst = recipe.instances[name]
            manifest = store.manifest(name)
            done = name not in forced and _up_to_date(manifest, the_plan, name)
            if name not in selected or (not inst.type.shardable and not done):
                pending.add(name)
                reports.append(Report(name, inst.type.name, "cached" if done else "not run", manifest))
                continue
            if done:
                reports.append(Report(name, inst.type.name, "cached", manifest))
                continue
            waiting = the_plan.upstream(recipe, name) & pending
            if waiting:
                if not any(recipe.instances[w].type.shardable for w in waiting):
                    first = min(waiting, key=the_plan.order.index)
                    raise ValueError(
                        f"--shard: stage '{name}' reads '{first}', which is not complete in {store.url}; "
                        f"run it first (tracefoundry run RECIPE --run-dir {store.url} --until {first})")
                pending.add(name)
                reports.append(Report(name, inst.type.name, "not run", manifest))
                continue
            shard_manifest = store.read_json(name, _shard_manifest(i, n))
            if name in forced or not _up_to_date(shard_manifest, the_plan, name):
                shard_manifest = run_stage(recipe, inst, the_plan, store, options, shard=(i, n))
                reports.append(Report(name, inst.type.name, "ran", shard_manifest))
            else:
                reports.append(Report(name, inst.type.name, "cached", shard_manifest))
            pending.add(name)  # later stages need the merged whole, not this slice
    return reports


def _shard_manifest(i: int, n: int) -> str:
    return f"_shard-{i:05d}-of-{n:05d}.json"


def _shard_prefix(i: int, n: int) -> str:
    return f"s{i:05d}of{n:05d}-"


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


def run_stage(recipe: Recipe, inst: Instance, the_plan: Plan, store: RunDir, options: Options,
              shard: tuple[int, int] | None = None, forced: bool = False) -> dict:
    """Run one stage (or one shard of it) and commit its manifest.

    A whole run of a shardable stage whose shards were started by shard tasks finishes the missing
    shards and merges them, rather than starting over; a forced one (--force, --from) starts over.
    """
    if shard is None and inst.type.shardable and not forced:
        n = _started_shards(store, inst, the_plan)
        if n:
            for i in range(n):
                if not _up_to_date(store.read_json(inst.name, _shard_manifest(i, n)), the_plan, inst.name):
                    run_stage(recipe, inst, the_plan, store, options, shard=(i, n))
            return _merge_shards(store, inst, the_plan, n)
    stype = inst.type
    input_table = stype.input_table or "source"
    if shard is None:
        store.reset(inst.name)
    else:
        _reset_shard(store, inst.name, *shard)
    ctx = Context(
        recipe=recipe.name, run_id=the_plan.run_id, recipe_fingerprint=the_plan.recipe_fingerprint,
        code_version=code_version(), seed=recipe.model.seed, sample=options.sample, stage=inst.name,
        stage_type=stype.name, fingerprint=the_plan.fingerprints[inst.name],
        tokenizer_spec=recipe.model.tokenizer, stage_dir=store.path(inst.name), shard=shard,
        request_cache=options.request_cache or recipe.model.request_cache or store.path("_request_cache"),
        workers=options.workers or recipe.model.workers,
    )
    inputs = Inputs({table: store.files(src, "part-*.parquet") for table, src in inst.inputs.items()})
    primary = inputs[stype.input_table] if stype.input_table else []
    input_range = shard_range(parquet_rows(primary), shard) if shard else None
    started, t0 = datetime.now(UTC), time.monotonic()
    total = (input_range[1] - input_range[0]) if input_range else parquet_rows(primary)
    bar = tqdm(total=total or None, desc=inst.name, unit="row", leave=False, disable=not options.progress)
    writes_parts = stype.output_glob == "part-*.parquet"
    prefix = _shard_prefix(*shard) if shard else ""
    writer = PartWriter(ctx, TABLES[stype.output_table], bar, write_parts=writes_parts, prefix=prefix)
    try:
        if stype.kind == "batch":
            _run_batches(inst, ctx, primary, inputs, writer, ctx.workers,
                         recipe.model.batch_size)
        else:
            stype.fn(inputs, inst.config, ctx, writer)
        writer.close()
    except Exception as e:
        raise StageFailed(inst.name, stype.name, e) from e
    finally:
        bar.close()
    counts = accounting.count(
        input_table, stype.output_table, primary,
        store.files(inst.name, f"part-{prefix}*.parquet" if shard else stype.output_glob),
        store.files(inst.name, f"rejected/part-{prefix}*.parquet"),
        writer.consumed_rows if input_table == "source" else None, input_range,
        parent_traces=stype.counts_parent_traces)
    accounting.check(inst.name if not shard else f"{inst.name} shard {shard[0]}/{shard[1]}",
                     input_table, stype.output_table, counts)
    if not writes_parts:  # a stage with its own layout (emit): list every file it wrote with its rows
        counts["files"] = {path.removeprefix(ctx.stage_dir + "/"): parquet_rows([path])
                           for path in store.files(inst.name, "**/*.parquet") if "/rejected/" not in path}
    manifest = {
        "stage": inst.name, "uses": stype.name, "stage_version": stype.version,
        "input_table": input_table, "output_table": stype.output_table,
        "inputs": inst.inputs, **counts,
        **({"stats": writer.collected_stats} if writer.collected_stats else {}),
        **({"shard": list(shard)} if shard else {}),
        "fingerprint": ctx.fingerprint, "code_version": ctx.code_version, "schema_version": SCHEMA_VERSION,
        "run_id": ctx.run_id, "tokenizer": _tokenizer_info(recipe, stype.output_table),
        "config": inst.config.model_dump(mode="json"), "sample": options.sample,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 3),
    }
    store.write_json(manifest, inst.name, _shard_manifest(*shard) if shard else "_manifest.json")
    return manifest


def _reset_shard(store: RunDir, stage: str, i: int, n: int) -> None:
    """Clear this shard's own files only: other shards of the stage may be writing beside it."""
    store.fs.makedirs(store.path(stage), exist_ok=True)
    prefix = _shard_prefix(i, n)
    store.remove(store.files(stage, f"part-{prefix}*.parquet")
                 + store.files(stage, f"rejected/part-{prefix}*")
                 + store.files(stage, _shard_manifest(i, n)) + store.files(stage, "_manifest.json"))


def _started_shards(store: RunDir, inst: Instance, the_plan: Plan) -> int:
    """N of the shard tasks already run for this stage's current fingerprint (0: none)."""
    counts: dict[int, int] = {}
    for path in store.files(inst.name, "_shard-*-of-*.json"):
        n = int(path.rsplit("-of-", 1)[1].removesuffix(".json"))
        manifest = store.read_json(inst.name, path.rsplit("/", 1)[1])
        if _up_to_date(manifest, the_plan, inst.name):
            counts[n] = counts.get(n, 0) + 1
    return max(counts, key=lambda n: (counts[n], n)) if counts else 0


def _merge_shards(store: RunDir, inst: Instance, the_plan: Plan, n: int) -> dict:
    """Commit a stage run as N shards: drop strays of other attempts, sum the shards' counts."""
    prefixes = tuple(_shard_prefix(i, n) for i in range(n))
    keep = {*(f"_shard-{i:05d}-of-{n:05d}.json" for i in range(n))}
    stray = [p for p in store.files(inst.name, "part-*.parquet") + store.files(inst.name, "rejected/part-*")
             if not p.rsplit("/", 1)[1].removeprefix("part-").startswith(prefixes)]
    stray += [p for p in store.files(inst.name, "_shard-*.json") if p.rsplit("/", 1)[1] not in keep]
    store.remove(stray)
    shards = [store.read_json(inst.name, _shard_manifest(i, n)) for i in range(n)]
    manifest = {k: v for k, v in shards[0].items() if k not in {"shard", "started_at", "seconds"}}
    for key in ("rows_in", "rows_out", "rows_rejected", "parents_in", "parents_with_output",
                "parents_rejected", "rejected_by_reason", "flags", "verdicts", "verified", "stats"):
        if key in manifest:
            manifest[key] = _sum([s[key] for s in shards])
    manifest.update({"shards": n, "started_at": min(s["started_at"] for s in shards),
                     "finished_at": max(s["finished_at"] for s in shards),
                     "seconds": round(sum(s["seconds"] for s in shards), 3)})
    accounting.check(inst.name, manifest["input_table"], manifest["output_table"], manifest)
    store.write_json(manifest, inst.name, "_manifest.json")
    return manifest


def _sum(values: list[Any]) -> Any:
    """Numbers add up, dicts add per key; anything else is taken from the first shard."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values if v is not None):
        present = [v for v in values if v is not None]
        return sum(present) if present else None
    if all(isinstance(v, dict) for v in values):
        return {k: _sum([v.get(k) for v in values]) for k in sorted({k for v in values for k in v})}
    return next((v for v in values if v is not None), None)


def _tokenizer_info(recipe: Recipe, output_table: str) -> dict[str, str]:
    if output_table != "traces":  # only traces carry token counts
        return {"spec": recipe.model.tokenizer}
    from stages.tokens import load_tokenizer

    return load_tokenizer(recipe.model.tokenizer).describe()


class PartWriter:
    """Writes a stage's parts and rejected rows, numbered in the order they come (deterministic)."""

    def __init__(self, ctx: Context, schema: pa.Schema, bar: tqdm, write_parts: bool, prefix: str = ""):
        self.ctx, self.schema, self.bar, self.write_parts = ctx, schema, bar, write_parts
        self.prefix = prefix  # shards name their parts apart, so shard tasks never touch each other's
        self.parts = self.rejected_parts = self.consumed_rows = 0
        self.collected_stats: dict[str, Any] = {}

    def write(self, rows: pa.Table) -> None:
        if not self.write_parts:
            raise StageContractError(f"stage '{self.ctx.stage}' writes its own files, not table parts")
        write_parquet(conform(rows, self.schema, self.ctx.stage),
                      f"{self.ctx.stage_dir}/part-{self.prefix}{self.parts:05d}.parquet")
        self.parts += 1

    def reject(self, rejected: pa.Table) -> None:
        if rejected.num_rows == 0:
            return
        n = rejected.num_rows
        rejected = rejected.set_column(0, "stage", pa.array([self.ctx.stage] * n, pa.string()))
        rejected = rejected.set_column(1, "stage_type", pa.array([self.ctx.stage_type] * n, pa.string()))
        write_parquet(rejected, f"{self.ctx.stage_dir}/rejected/part-{self.prefix}{self.rejected_parts:05d}"
                      ".parquet", REJECTED)
        self.rejected_parts += 1

    def consumed(self, n: int) -> None:
        self.consumed_rows += n
        self.bar.update(n)

    def stats(self, values: dict[str, Any]) -> None:
        self.collected_stats.update(values)

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


def _run_batches(inst: Instance, ctx: Context, files: list[str], inputs: Inputs, writer: PartWriter,
                 workers: int, batch_size: int) -> None:
    fn, config = inst.type.fn, inst.config
    lookups = {table: _Lookup(inputs[table]) for table in inst.type.needs}

    def related(batch: pa.Table) -> list[pa.Table]:
        return [lookup.rows(batch["problem_id"]) for lookup in lookups.values()]

    def deliver(result: Result, rows_in: int) -> None:
        writer.write(result.rows)
        writer.reject(result.rejected)
        writer.bar.update(rows_in)

    if workers <= 1:
        for batch in _batches(files, batch_size):
            deliver(fn(batch, config, ctx, *related(batch)), batch.num_rows)
        return
    # spawn, not fork: the parent holds DuckDB/Polars thread pools that a fork would copy half-locked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[Future, int]] = deque()
        for batch in _batches(files, batch_size):
            pending.append((pool.submit(fn, batch, config, ctx, *related(batch)), batch.num_rows))
            if len(pending) >= 2 * workers:  # bounded: never read the whole input ahead
                future, n = pending.popleft()
                deliver(future.result(), n)
        while pending:
            future, n = pending.popleft()
            deliver(future.result(), n)


class _Lookup:
    """The rows of a needed table (problems) that a batch refers to, found by a DuckDB join.

    The table is loaded once into DuckDB, which spills to disk when it is large; each batch then
    costs one hash join against its own few ids.
    """

    def __init__(self, files: list[str]):
        self.con = connect(files)
        self.con.execute(f"CREATE TEMP TABLE needed AS SELECT * FROM read_parquet({sql_list(files)})")

    def rows(self, ids: pa.ChunkedArray) -> pa.Table:
        self.con.register("batch_ids", pa.table({"problem_id": pc.unique(ids.combine_chunks())}))
        query = "SELECT n.* FROM needed n SEMI JOIN batch_ids b USING (problem_id)"
        found = self.con.sql(query).to_arrow_table()
        self.con.unregister("batch_ids")
        return found


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
