"""``harness`` command line. Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from harness.errors import UserError
from harness.redact import mask_command, one_line
from harness.registry import all_trials, get_trial

EXIT_OK, EXIT_REGRESSION_OR_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_REPORT_FORMATS = "pdf,md,tex,html"

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


def _load_suite(path: str, overrides: list[str] | None = None, *, with_units: bool = True) -> Any:
    """The suite at ``path`` with ``--set`` overrides; ``with_units=False`` reads it without the
    method packages (for ``report`` and ``check``, which take a run's units from the database)."""
    from harness.suite import load_suite

    if with_units:
        load_methods()
    return load_suite(path, overrides or (), with_units=with_units)


def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.suites:
        suite = _load_suite(path, args.set)
        counts = {s: len(suite.units(s)) for s in suite.scale_names()}
        out.print(f"{path}: ok ({', '.join(f'{s}: {n} units' for s, n in counts.items())})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from harness.runner import RunOptions, run_suite, select_units, summary_table

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")
    if args.timeout is not None and not args.timeout > 0:
        raise UserError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    suite = _load_suite(args.suite, args.set)
    options = RunOptions(
        scale=args.scale,
        force=args.force,
        fail_fast=args.fail_fast,
        only=args.only,
        timeout=args.timeout,
        threads=args.threads,
        artifacts_dir=Path(args.artifacts),
        show_progress=not args.no_progress,
        trust_checkpoints=args.trust_checkpoints,
    )
    units = select_units(suite.units(args.scale), args.only)
    if args.dry_run:
        _dry_run(args, suite, units)
        return EXIT_OK
    if not units:
        raise UserError(f"{args.suite}: --only {args.only!r} matches no unit")
    command = mask_command(["harness", *sys.argv[1:]])
    if args.executor == "inline":
        for flag, given in (("--workers", args.workers != 1), ("--slurm", args.slurm), ("--detach", args.detach)):
            if given:
                raise UserError(f"{flag} needs --executor local or slurm")
        store = open_store(args.db)
        summary = run_suite(suite, store, options, err, command=command)
    else:
        store, summary = _run_on_executor(args, suite, options, command)
        if summary is None:
            return EXIT_OK
    out.print(summary_table(summary, f"{suite.name} ({args.scale})"))
    if args.report:
        from harness.reports import build_report

        paths = build_report(store, suite, None, ["pdf", "md", "html"], Path(args.report_dir))
        for p in paths:
            out.print(f"report: {p}")
    return EXIT_REGRESSION_OR_FAILURE if summary.has_failures else EXIT_OK


def _dry_run(args: argparse.Namespace, suite: Any, units: list[Any]) -> None:
    """``harness run --dry-run``: the units, each with its time estimated from earlier runs in the
    database (when there is one), and the total."""
    from harness.runner import estimate_times, format_seconds, total_estimate

    try:
        store = open_store(args.db, create=False)
    except UserError as exc:  # no database yet, or one to upgrade: list the units without estimates
        err.print(f"no time estimates: {one_line(str(exc))}", highlight=False, soft_wrap=True, markup=False)
        store = None
    estimates = estimate_times(units, store, force=args.force)
    table = Table(title=f"{suite.name} at scale {args.scale}: {len(units)} units")
    for col in ("#", "key", "section", "unit", "est. time", "estimated from"):
        table.add_column(col, overflow="fold")
    for i, (u, e) in enumerate(zip(units, estimates, strict=True), 1):
        seconds = "?" if e.seconds is None else format_seconds(e.seconds)
        table.add_row(str(i), u.key, u.section, u.describe(), seconds, e.basis)
    out.print(table)
    out.print(f"estimated time: {total_estimate(estimates)}", highlight=False)
    if suite.overrides:
        out.print("overrides: " + ", ".join(f"{k}={v!r}" for k, v in suite.overrides.items()), highlight=False)


def _run_on_executor(args: argparse.Namespace, suite: Any, options: Any, command: str) -> tuple[Any, Any]:
    """``harness run --executor local|slurm``: submit the pending units as jobs; wait and return the
    store and the summary, or (``--detach``) print the job ids and return the store and None."""
    from harness.cluster import (
        ClusterOptions,
        check_executor,
        parse_slurm_options,
        shared_db_url,
        submit_suite,
        wait_for,
    )
    from harness.store import resolve_url

    if args.slurm and args.executor != "slurm":
        raise UserError("--slurm needs --executor slurm")
    if args.detach and args.report:
        raise UserError("--report needs the results: drop --detach, or run harness report when the jobs are done")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    slurm = parse_slurm_options(args.slurm) if args.executor == "slurm" else {}
    shared_db_url(resolve_url(args.db), args.executor, args.allow_sqlite)  # refuse SQLite for Slurm before opening it
    check_executor(args.executor)
    cluster = ClusterOptions(executor=args.executor, workers=args.workers, slurm=slurm, detach=args.detach,
                             allow_sqlite=args.allow_sqlite, folder=Path(args.submitit_dir))  # fmt: skip
    store = open_store(args.db)
    submitted = submit_suite(suite, store, options, cluster, err, command=command)
    if submitted.jobs:
        err.print(f"run {submitted.run_id}: {len(submitted.pending)} unit(s) in {len(submitted.jobs)} {args.executor} "
                  f"job(s) {', '.join(submitted.job_ids)}; database {store.display_url}; logs {submitted.folder}",
                  highlight=False)  # fmt: skip
    if args.detach:
        out.print(
            f"run {submitted.run_id}: submitted job(s) {' '.join(submitted.job_ids) or '(none: nothing pending)'}"
        )
        out.print(f"progress: harness status {submitted.run_id}", highlight=False)
        return store, None
    return store, wait_for(submitted, store, err, show_progress=not args.no_progress, poll_s=cluster.poll_s)


def cmd_status(args: argparse.Namespace) -> int:
    from harness.cluster import status_table

    store = open_store(args.db, create=False)
    headline, table = status_table(store, args.run_id)
    out.print(headline, highlight=False)
    out.print(table)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from harness.results import results_frame

    store = open_store(args.db, create=False)
    run = int(args.target) if args.target is not None and args.target.isdigit() else None
    frame = results_frame(store, None if run is not None else args.target, run=run)
    if args.format != "table":
        from harness.results import write_frame

        write_frame(frame, args.format, Path(args.out) if args.out else None)
        return EXIT_OK
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
    counts = store.results_per_run(args.suite)
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
    suite = _load_suite(args.suite, args.set, with_units=False) if args.suite is not None else None
    if args.history and suite is None:
        raise UserError("report --history: give a suite file (the history spans its runs)")
    if args.set and suite is None:
        raise UserError("report --set: give the suite file the overrides apply to")
    store = open_store(args.db, create=False)
    paths: list[Path] = []
    if args.format is not None or not args.history:
        formats = [f.strip() for f in (args.format or DEFAULT_REPORT_FORMATS).split(",") if f.strip()]
        paths = build_report(store, suite, args.run, formats, Path(args.out))
    if args.history:
        from harness.reports.history import build_history_report

        paths.append(build_history_report(store, suite, Path(args.out)))
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

    store = open_store(args.db, create=False)
    return run_check(store, args.target, Path(args.baseline), out, overrides=args.set, min_effect=args.min_effect,
                     accuracy_tolerance=args.tolerance, alpha=args.alpha, rounds=args.rounds, ab=not args.no_ab,
                     artifacts=Path(args.artifacts))  # fmt: skip


def cmd_baseline_save(args: argparse.Namespace) -> int:
    from harness.gate import save_baseline

    store = open_store(args.db, create=False)
    path = save_baseline(store, args.target, Path(args.out), allow_dirty=args.allow_dirty)
    out.print(f"baseline written: {path}")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from harness.store import Store

    applied = Store(args.db, create=False, check_version=False).upgrade()
    out.print(f"schema upgraded through versions {applied}" if applied else "schema is current")
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------


RUN_EXAMPLES = """\
examples:
  harness run suites/table5.yaml --scale smoke
  harness run suites/table5.yaml --scale smoke --set dataset.name=voc --set dataset.root=/data/VOCdevkit \\
      --set 'scales.smoke.dataset={num_train: 4, num_val: 2}'
  harness run suites/table5.yaml --set matrix.device=[cuda] --set baselines.lr.checkpoint=/ckpt/hrnet_lr.pth
  harness run suites/table5.yaml --dry-run --set dataset.name=voc    # list the units the overrides give
"""


def _add_set(parser: argparse.ArgumentParser, default: str = "") -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the suite file: KEY is a dotted path into its top-level mapping (dataset.root, "
        "matrix.device, baselines.lr.checkpoint); a number indexes a list (benchmarks.0.dataset.root: the "
        "first entry's dataset root). VALUE is YAML (a mapping replaces the mapping at KEY); "
        "repeatable; validated like the file and stored with the run " + default,
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every bad input
        err.print(f"harness: error: {one_line(message)}", highlight=False, soft_wrap=True, markup=False)
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
    _add_set(s)
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser(
        "run",
        help="run a suite",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RUN_EXAMPLES,
    )
    s.add_argument("suite")
    _add_set(s)
    s.add_argument("--scale", default="default", choices=("smoke", "default", "paper"))
    s.add_argument("--force", action="store_true", help="re-run units already stored as ok")
    s.add_argument("--fail-fast", action="store_true", help="stop at the first failed unit")
    s.add_argument("--only", help="run only units whose description matches this glob/substring")
    s.add_argument("--dry-run", action="store_true",
                   help="list the units, each with its time estimated from earlier runs in the database "
                        "(last time of the same unit, else the median of its trial at this scale), and the "
                        "total; then exit")  # fmt: skip
    s.add_argument("--timeout", type=float, default=None, help="per-unit time limit in seconds")
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    s.add_argument("--artifacts", default="results/artifacts", help="where trained artifacts are cached")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--trust-checkpoints", action="store_true",
                   help="fully unpickle user checkpoints that need types outside the safe allow-list "
                        "(runs their code: only for files from a source you trust; recorded in the run)")  # fmt: skip
    s.add_argument("--report", action="store_true", help="write the suite's report (pdf, md, html) afterwards")
    s.add_argument("--report-dir", default="reports")
    s.add_argument("--executor", default="inline", choices=("inline", "local", "slurm"),
                   help="inline: units run in this process (default); local/slurm: submitit jobs that share the "
                        "database (PostgreSQL for slurm)")  # fmt: skip
    s.add_argument("--workers", type=int, default=1, help="number of jobs the pending units are split into")
    s.add_argument("--slurm", metavar="KEY=VALUE,...",
                   help="submitit Slurm parameters, e.g. partition=gpu,gpus_per_node=1,timeout_min=240,"
                        "array_parallelism=8")  # fmt: skip
    s.add_argument("--detach", action="store_true", help="submit the jobs, print their ids and return")
    s.add_argument("--allow-sqlite", action="store_true",
                   help="let --executor slurm use SQLite (only if every job runs on this one node)")  # fmt: skip
    s.add_argument("--submitit-dir", default="results/submitit", help="job pickles and logs (shared filesystem)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="progress of a run: units done, failed and pending, and its jobs")
    s.add_argument("run_id", type=int)
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("show", help="show stored results of a run id or a suite")
    s.add_argument("target", nargs="?")
    s.add_argument("--format", default="table", choices=("table", "csv", "json", "parquet"))
    s.add_argument("--out", help="write csv/json/parquet to this file instead of stdout")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("runs", help="list runs")
    s.add_argument("--suite")
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("report", help="render a suite's tables and figures beside the paper's numbers")
    s.add_argument("suite", nargs="?")
    s.add_argument("--run", type=int)
    s.add_argument("--format", help=f"comma-separated: pdf, md, tex, html (default: {DEFAULT_REPORT_FORMATS})")
    s.add_argument(
        "--history", action="store_true", help="write <suite>-history.html: gated metrics across runs (+ --format)"
    )
    s.add_argument("--out", default="reports")
    _add_set(s)
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compare", help="compare two runs of one suite")
    s.add_argument("run_a", type=int)
    s.add_argument("run_b", type=int)
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("check", help="regression gate against a committed baseline (exit 1 on regression)")
    s.add_argument("target", help="run id or suite file/name (latest run)")
    s.add_argument("--baseline", required=True)
    s.add_argument("--min-effect", type=float, default=None, help="minimum relative latency change (suite's gate)")
    s.add_argument("--tolerance", type=float, default=None, help="absolute accuracy tolerance, points (suite's gate)")
    s.add_argument("--alpha", type=float, default=None, help="significance level of the A/B t-test (suite's gate)")
    s.add_argument("--rounds", type=int, default=None, help="A/B rounds (suite's gate)")
    s.add_argument("--no-ab", action="store_true", help="skip the same-machine A/B: latency is then not gated")
    s.add_argument("--artifacts", default="results/artifacts", help="trained artifacts of the current tree")
    _add_set(s, "(default: the overrides the run was made with)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("baseline", help="baseline files for the gate")
    bsub = s.add_subparsers(dest="baseline_command", required=True, parser_class=_Parser)
    b = bsub.add_parser("save", parents=[common], help="write a reviewable baseline file from a run")
    b.add_argument("target", help="run id or suite file/name (latest run)")
    b.add_argument("--out", required=True)
    b.add_argument("--allow-dirty", action="store_true", help="save from a run made on a dirty tree")
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
        err.print(f"harness: error: {one_line(str(exc))}", highlight=False, soft_wrap=True, markup=False)
        return EXIT_BAD_INPUT
    except SQLAlchemyError as exc:  # a database gone mid-command: one masked line, not a traceback
        reason = one_line(str(getattr(exc, "orig", None) or exc))
        err.print(f"harness: database error: {reason}", highlight=False, soft_wrap=True, markup=False)
        return EXIT_REGRESSION_OR_FAILURE
    except KeyboardInterrupt:
        err.print("harness: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
