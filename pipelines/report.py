"""What a run did, for people: the closing summary table and ``tracefoundry inspect``."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from pipelines.store import RunDir
from stages.io import connect, sql_list


def stdout_console() -> Console:
    """Wide enough for the tables when output goes to a file or a pipe (rich assumes 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def summary_table(rows: list[tuple[str, str, str, dict[str, Any] | None]]) -> Table:
    """One line per stage; fits 80 columns (parents per problem are in the manifests)."""
    table = Table(title="tracefoundry run summary", box=box.SIMPLE_HEAD)
    for name in ("stage", "status", "in", "out", "rejected", "seconds"):
        table.add_column(name, no_wrap=True, justify="right" if name not in {"stage", "status"} else "left")
    table.add_column("rejected by reason; verified; flagged")
    for stage, uses, status, m in rows:
        label = stage if stage == uses else f"{stage} ({uses})"
        if m is None:
            table.add_row(label, status, "", "", "", "", "")
            continue
        reasons = ", ".join(f"{k}: {v}" for k, v in m["rejected_by_reason"].items())
        notes = [reasons] if reasons else []
        if "verified" in m:
            notes.append(f"verified {m['verified']} of {m['rows_out']}")
        flags = ", ".join(f"{k}: {v}" for k, v in (m.get("flags") or {}).items() if k != "no_reasoning_tags")
        if flags:
            notes.append(f"flagged {flags}")
        reasons = "; ".join(notes)
        table.add_row(label, status, str(m["rows_in"]), str(m["rows_out"]), str(m["rows_rejected"]),
                      f"{m['seconds']:.1f}", reasons)
    return table


def print_summary(reports: list, console: Console) -> None:
    console.print(summary_table([(r.stage, r.uses, r.status, r.manifest) for r in reports]))


def inspect_run(run_dir: str, samples: int, console: Console) -> None:
    store = RunDir(run_dir)
    manifests = store.manifests()
    if not manifests:
        raise FileNotFoundError(f"{run_dir}: no finished stage here (no */_manifest.json)")
    planned = [s["name"] for s in (store.read_json("_run.json") or {}).get("stages", [])]
    rank = {name: i for i, name in enumerate(planned)}
    order = sorted(manifests.values(), key=lambda m: (rank.get(m["stage"], len(rank)), m["started_at"]))
    console.print(summary_table([(m["stage"], m["uses"], "done", m) for m in order]))
    rejected = store.files("*", "rejected/part-*.parquet")
    if rejected:
        con = connect(rejected)
        table = Table("stage", "reason", "rows", "example", title="rejected rows")
        for stage, reason, n, detail in con.execute(
            f"SELECT stage, reason, count(*), any_value(detail) FROM read_parquet({sql_list(rejected)}) "
            "GROUP BY stage, reason ORDER BY stage, reason"
        ).fetchall():
            table.add_row(stage, reason, str(n), (detail or "")[:100])
        console.print(table)
    for m in order:
        if m["uses"] != "emit":
            continue
        for config in ("sft", "sft_long", "sft_concise", "rl"):
            shards = store.files(m["stage"], f"data/{config}/*.parquet")
            if not shards:
                continue
            con = connect(shards)
            counts = con.execute(
                f"SELECT filename, count(*) FROM read_parquet({sql_list(shards)}, filename=true) "
                "GROUP BY filename ORDER BY filename").fetchall()
            console.print(f"[bold]{m['stage']}/data/{config}[/]: " +
                          ", ".join(f"{f.rsplit('/', 1)[-1]} ({n} rows)" for f, n in counts))
            for row in con.execute(f"SELECT * EXCLUDE (provenance) FROM read_parquet({sql_list(shards)}) "
                                   f"LIMIT {int(samples)}").fetchall():
                console.print(row, highlight=False)
