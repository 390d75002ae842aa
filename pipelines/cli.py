"""The ``tracefoundry`` command: run a recipe, list stage types, inspect a run directory."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.recipe import RecipeError, load_recipe

CHECKER_CHOICES = ("math", "choice", "exact", "numeric", "code")

console = Console(stderr=True)

EPILOG = """examples:
  tracefoundry run laptop --run-dir runs/laptop --sample 50
  tracefoundry run my_recipe.yaml --run-dir s3://bucket/runs/r1 --force emit
  tracefoundry run math.yaml --run-dir /shared/r1 --until ingest          # then, one task per node:
  tracefoundry run math.yaml --run-dir /shared/r1 --shard 3/8              # generate slice 3 of 8
  tracefoundry run math.yaml --run-dir /shared/r1                          # merge shards, run the rest
  tracefoundry inspect runs/laptop
  tracefoundry verify answers.jsonl --checker math --gold-col answer --pred-col model_answer
  tracefoundry stages
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (RecipeError, KeyError, ValueError, OSError, ImportError, RuntimeError) as e:
        if args.debug:
            traceback.print_exc()
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        if getattr(e, "stage", None):
            console.print(f"Earlier stages are kept; re-run the same command to resume at '{e.stage}'"
                          " (add --debug for the traceback).", highlight=False, soft_wrap=True)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracefoundry",
        description="Synthesise and curate reasoning-trace datasets from a recipe of stages.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a recipe into a run directory (resumes; skips up-to-date stages)",
                       description="Run a recipe. Stages whose fingerprint matches their manifest are "
                       "skipped; a changed stage re-runs with everything after it; an interrupted run "
                       "resumes at the stage it was in.")
    p.add_argument("recipe", help="a recipe YAML file, or the name of a shipped recipe (e.g. 'laptop')")
    p.add_argument("--run-dir", required=True, help="where outputs go: a local path or an fsspec URL")
    p.add_argument("--sample", type=int, metavar="N", help="take N rows from each source (seeded): a dry run")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="re-run STAGE and everything after it; earlier stages must be complete")
    p.add_argument("--until", metavar="STAGE", help="stop after STAGE (runs only what STAGE needs)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="re-run STAGE and what follows even if up to date (repeatable)")
    p.add_argument("--workers", type=int, help="processes for record-parallel stages (default: recipe's)")
    p.add_argument("--shard", metavar="I/N",
                   help="run slice I of N (0-based) of the model-calling stages only, e.g. one task per "
                   "GPU node; earlier stages must be complete. A later run without --shard finishes "
                   "missing shards, merges them and goes on")
    p.add_argument("--request-cache", metavar="PATH",
                   help="where completions are cached (default: the recipe's request_cache, else "
                   "RUN_DIR/_request_cache); share one so no completion is generated twice")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("verify", help="check the answers of an existing JSONL or Parquet file",
                       description="Check each row's prediction against its gold answer and write the "
                       "rows with verdict, score and check_reason beside the input "
                       "(data.jsonl -> data.verdicts.jsonl).")
    p.add_argument("file", help="a .jsonl or .parquet file")
    p.add_argument("--checker", required=True, choices=CHECKER_CHOICES,
                   help="math (math-verify equivalence), choice (letters), exact (normalised strings), "
                   "numeric (tolerance), code (runs the program against tests in a sandbox)")
    p.add_argument("--gold-col", default="answer", help="column of reference answers (default: answer)")
    p.add_argument("--pred-col", default="prediction",
                   help="column of answers to check (default: prediction)")
    p.add_argument("--choices-col", help="column of options for --checker choice")
    p.add_argument("--tests-col", help="column of tests (JSON) for --checker code")
    p.add_argument("--extract", action="store_true",
                   help="the prediction column holds whole completions: extract the final answer first")
    p.add_argument("--out", help="where to write (default: beside the input)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("stages", help="list the stage types a recipe can use")
    p.set_defaults(handler=cmd_stages)

    p = sub.add_parser("inspect", help="summarise a run directory: stages, rejections and sample rows")
    p.add_argument("run_dir", help="a run directory (local path or fsspec URL)")
    p.add_argument("--samples", type=int, default=2, metavar="N", help="rows to show per emitted config")
    p.set_defaults(handler=cmd_inspect)
    return parser


def resolve_recipe_path(name: str) -> str:
    """A path, or the name of a recipe shipped in pipelines/recipes/."""
    if Path(name).exists() or name.endswith((".yaml", ".yml")):
        return name
    shipped = files("pipelines.recipes") / f"{name}.yaml"
    if shipped.is_file():
        return str(shipped)
    known = sorted(p.name.removesuffix(".yaml") for p in files("pipelines.recipes").iterdir()
                   if p.name.endswith(".yaml"))
    raise FileNotFoundError(f"no recipe file '{name}' and no shipped recipe of that name; shipped: {known}")


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.report import print_summary, stdout_console
    from pipelines.runner import Options, parse_shard, run

    recipe = load_recipe(resolve_recipe_path(args.recipe))
    options = Options(sample=args.sample, from_stage=args.from_stage, until=args.until,
                      force=set(args.force), workers=args.workers,
                      progress=not args.no_progress and sys.stderr.isatty(),
                      shard=parse_shard(args.shard) if args.shard else None,
                      request_cache=args.request_cache)
    reports = run(recipe, args.run_dir, options)
    print_summary(reports, stdout_console())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipelines.report import stdout_console
    from pipelines.verify_file import verify_file

    target, counts = verify_file(args.file, args.checker, args.gold_col, args.pred_col, args.choices_col,
                                 args.tests_col, args.extract, args.out,
                                 progress=not args.no_progress and sys.stderr.isatty())
    summary = ", ".join(f"{verdict}: {n}" for verdict, n in sorted(counts.items()))
    stdout_console().print(f"{target}: {sum(counts.values())} rows ({summary})", highlight=False)
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from pipelines.report import stdout_console
    from stages.registry import all_stages

    table = Table("stage", "reads", "writes", "kind", "what it does", box=None)
    for s in all_stages():
        reads = ", ".join(([s.input_table] if s.input_table else ["sources"]) + list(s.needs))
        table.add_row(s.name, reads, s.output_table, s.kind, s.summary)
    stdout_console().print(table)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipelines.report import inspect_run, stdout_console

    inspect_run(args.run_dir, args.samples, stdout_console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
