"""``harness`` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.errors import UserError
from harness.registry import all_trials, get_trial

EXIT_OK, EXIT_REGRESSION_OR_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

out = Console()
err = Console(stderr=True)


def load_methods() -> None:
    """Trial discovery: importing ``methods`` registers every trial."""
    import methods

    methods.discover()


def open_store(url: str | None, *, create: bool = True) -> Any:
    from harness.store import Store

    return Store(url, create=create)


# --- commands ------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    load_methods()
    if args.name:
        spec = get_trial(args.name)
        out.print(f"[bold]{spec.name}[/] (version {spec.version}, {spec.module})")
        out.print(spec.doc)
        out.print(f"axes: {', '.join(spec.axes) or '(none)'}")
        table = Table(title="parameters")
        for col in ("name", "type / default / allowed", "doc"):
            table.add_column(col, overflow="fold")
        for p in spec.params:
            table.add_row(p.name, p.describe(), p.doc)
        out.print(table)
        metrics = Table(title="metrics")
        for col in ("name", "unit", "better", "doc"):
            metrics.add_column(col)
        for m in spec.metrics:
            metrics.add_row(m.name, m.unit, m.better, m.doc)
        out.print(metrics)
        return EXIT_OK
    table = Table(title="registered trials")
    for col in ("trial", "axes", "params", "doc"):
        table.add_column(col, overflow="fold")
    for spec in all_trials():
        table.add_row(spec.name, ",".join(spec.axes), ", ".join(spec.param_names()), spec.doc)
    out.print(table)
    return EXIT_OK


def _load_suite(path: str) -> Any:
    from harness.suite import load_suite

    load_methods()
    return load_suite(path)


def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.suites:
        suite = _load_suite(path)
        counts = {s: len(suite.units(s)) for s in (suite.scales or {"default": {}})}
        out.print(f"{path}: ok ({', '.join(f'{s}: {n} units' for s, n in counts.items())})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from harness.runner import RunOptions, run_suite, select_units, summary_table

    suite = _load_suite(args.suite)
    options = RunOptions(
        scale=args.scale,
        force=args.force,
        fail_fast=args.fail_fast,
        only=args.only,
        timeout=args.timeout,
        threads=args.threads,
        artifacts_dir=Path(args.artifacts),
        show_progress=not args.no_progress,
    )
    units = select_units(suite.units(args.scale), args.only)
    if args.dry_run:
        table = Table(title=f"{suite.name} at scale {args.scale}: {len(units)} units")
        for col in ("#", "key", "section", "unit"):
            table.add_column(col, overflow="fold")
        for i, u in enumerate(units, 1):
            table.add_row(str(i), u.key, u.section, u.describe())
        out.print(table)
        return EXIT_OK
    if not units:
        raise UserError(f"{args.suite}: --only {args.only!r} matches no unit")
    store = open_store(args.db)
    summary = run_suite(suite, store, options, err, command=" ".join(["harness", *sys.argv[1:]]))
    out.print(summary_table(summary, f"{suite.name} ({args.scale})"))
    if args.report:
        from harness.reports import build_report

        paths = build_report(store, Path(args.suite), None, ["pdf", "md"], Path(args.report_dir))
        for p in paths:
            out.print(f"report: {p}")
    return EXIT_REGRESSION_OR_FAILURE if summary.has_failures else EXIT_OK


def _results_frame(store: Any, target: str | None) -> Any:
    import pandas as pd

    if target is None:
        rows = store.results(latest_per_unit=False)
    elif target.isdigit():
        if store.get_run(int(target)) is None:
            raise UserError(f"no run with id {target}")
        rows = store.results(run_id=int(target), latest_per_unit=False)
    else:
        from harness.suite import suite_name_of

        name = suite_name_of(target)
        rows = store.results(suite=name)
        if not rows:
            raise UserError(f"no results stored for suite {name!r}")
    flat = []
    for r in rows:
        row = {k: r[k] for k in ("run_id", "suite", "trial", "label", "section", "precision", "batch_size",
                                 "device", "status")}  # fmt: skip
        row.update({f"p.{k}": v for k, v in r["params"].items()})
        # a metric named like a column (the selectors' "precision") must not overwrite the axis
        row.update({(f"metric.{m}" if m in row else m): v["value"] for m, v in r["metrics"].items()})
        row["error"] = r["error"]
        flat.append(row)
    return pd.DataFrame(flat)


def cmd_show(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    frame = _results_frame(store, args.target)
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif args.format == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=1) + "\n")
    else:
        table = Table(title=f"results: {args.target or 'all'}")
        for col in frame.columns:
            table.add_column(str(col), overflow="fold")
        for _, row in frame.iterrows():
            table.add_row(*[_fmt(v) for v in row.tolist()])
        out.print(table)
    return EXIT_OK


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return "" if value is None else str(value)


def cmd_runs(args: argparse.Namespace) -> int:
    store = open_store(args.db, create=False)
    table = Table(title="runs")
    for col in ("id", "suite", "scale", "status", "started", "ended", "git", "host", "threads", "results"):
        table.add_column(col)
    counts: dict[int, int] = {}
    for r in store.results(latest_per_unit=False):
        counts[r["run_id"]] = counts.get(r["run_id"], 0) + 1
    for run in store.runs(args.suite):
        sha = (run.git_sha or "")[:10] + ("+dirty" if run.git_dirty else "")
        table.add_row(str(run.id), run.suite, run.scale, run.status, f"{run.started_at:%Y-%m-%d %H:%M:%S}",
                      f"{run.ended_at:%H:%M:%S}" if run.ended_at else "", sha, run.host, str(run.threads),
                      str(counts.get(run.id, 0)))  # fmt: skip
    out.print(table)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from harness.reports import build_report

    if (args.suite is None) == (args.run is None):
        raise UserError("report: give a suite file or --run ID (one of them)")
    if args.suite is not None:
        _load_suite(args.suite)
    store = open_store(args.db, create=False)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    paths = build_report(store, Path(args.suite) if args.suite else None, args.run, formats, Path(args.out))
    for p in paths:
        out.print(str(p))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.reports.compare import compare_runs, render_comparison

    store = open_store(args.db, create=False)
    frame = compare_runs(store, args.run_a, args.run_b)
    render_comparison(frame, out, args.run_a, args.run_b)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from harness.gate import run_check

    load_methods()
    store = open_store(args.db, create=False)
    return run_check(store, args.target, Path(args.baseline), out, min_effect=args.min_effect,
                     accuracy_tolerance=args.tolerance, alpha=args.alpha)  # fmt: skip


def cmd_baseline_save(args: argparse.Namespace) -> int:
    from harness.gate import save_baseline

    load_methods()
    store = open_store(args.db, create=False)
    path = save_baseline(store, args.target, Path(args.out))
    out.print(f"baseline written: {path}")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from harness.store import Store

    applied = Store(args.db, create=False, check_version=False).upgrade()
    out.print(f"schema upgraded through versions {applied}" if applied else "schema is current")
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every bad input
        err.print(f"harness: error: {message}", highlight=False, soft_wrap=True, markup=False)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Benchmark and ablation harness for efficient segmentation.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help="SQLAlchemy URL of the result DB (default: $HARNESS_DB, else sqlite:///results/harness.db)"
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    s = sub.add_parser("list", help="list registered trials, or show one in full")
    s.add_argument("name", nargs="?")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("validate", help="validate suite files against the registry")
    s.add_argument("suites", nargs="+")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("run", help="run a suite")
    s.add_argument("suite")
    s.add_argument("--scale", default="default", choices=("smoke", "default", "paper"))
    s.add_argument("--force", action="store_true", help="re-run units already stored as ok")
    s.add_argument("--fail-fast", action="store_true", help="stop at the first failed unit")
    s.add_argument("--only", help="run only units whose description matches this glob/substring")
    s.add_argument("--dry-run", action="store_true", help="list the units and exit")
    s.add_argument("--timeout", type=float, default=None, help="per-unit time limit in seconds")
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    s.add_argument("--artifacts", default="results/artifacts", help="where trained artifacts are cached")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--report", action="store_true", help="write the suite's report (pdf, md) afterwards")
    s.add_argument("--report-dir", default="reports")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("show", help="show stored results of a run id or a suite")
    s.add_argument("target", nargs="?")
    s.add_argument("--format", default="table", choices=("table", "csv", "json"))
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("runs", help="list runs")
    s.add_argument("--suite")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("report", help="render a suite's tables and figures beside the paper's numbers")
    s.add_argument("suite", nargs="?")
    s.add_argument("--run", type=int)
    s.add_argument("--format", default="pdf,md,tex")
    s.add_argument("--out", default="reports")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compare", help="compare two runs of one suite")
    s.add_argument("run_a", type=int)
    s.add_argument("run_b", type=int)
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("check", help="regression gate against a committed baseline (exit 1 on regression)")
    s.add_argument("target", help="run id or suite file/name (latest run)")
    s.add_argument("--baseline", required=True)
    s.add_argument("--min-effect", type=float, default=None, help="minimum relative latency change (0.10)")
    s.add_argument("--tolerance", type=float, default=None, help="absolute accuracy tolerance, points (0.3)")
    s.add_argument("--alpha", type=float, default=None, help="significance level of the U test (0.01)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("baseline", help="baseline files for the gate")
    bsub = s.add_subparsers(dest="baseline_command", required=True, parser_class=_Parser)
    b = bsub.add_parser("save", parents=[common], help="write a reviewable baseline file from a run")
    b.add_argument("target", help="run id or suite file/name (latest run)")
    b.add_argument("--out", required=True)
    b.set_defaults(fn=cmd_baseline_save)

    s = sub.add_parser("db", help="database maintenance")
    dsub = s.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    d = dsub.add_parser("upgrade", parents=[common], help="apply schema migrations")
    d.set_defaults(fn=cmd_db_upgrade)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except UserError as exc:
        err.print(f"harness: error: {exc}", highlight=False, soft_wrap=True, markup=False)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("harness: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
