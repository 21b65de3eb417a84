"""The ``crest`` command line: thin commands that parse, call the library, and print.

Every :class:`crest.exceptions.CrestError` is caught once in :func:`main`: one line on
stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from crest import __version__
from crest.exceptions import ConfigError, CrestError

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="crest",
    help=(
        "Compression sweeps for neural networks: Optuna searches per-layer pruning and "
        "quantization settings, Ray workers run the trials, every trial and artifact is "
        "stored in SQL (SQLite by default).\n\n"
        "Start with: crest launch examples/lenet300-mnist.yaml, then crest best STUDY."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage",
        help="Database URL. Default: $CREST_STORAGE, else sqlite:///crest.db in the working directory.",
        show_default=False,
    ),
]
StudyArg = Annotated[str, typer.Argument(help="The study's name.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LeaseTtlOpt = Annotated[
    float,
    typer.Option(
        "--lease-ttl",
        envvar="CREST_LEASE_TTL",
        min=1.0,
        help="Seconds without a heartbeat after which a study's driver counts as dead.",
    ),
]


def _storage(explicit: str | None, from_file: str | None = None) -> str:
    from crest.config import DEFAULT_STORAGE

    return explicit or os.environ.get("CREST_STORAGE") or from_file or DEFAULT_STORAGE


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _open_store(url: str, *, upgrade: bool = False) -> Any:
    """An existing crest database: read-only (no write, no schema or setting changed, fine
    for a read-only role) unless ``upgrade``, which brings an older schema up to date."""
    from crest.storage import Store

    if upgrade:
        return Store(url, create=False, upgrade=True)
    return Store(url, create=False, upgrade=False, read_only=True)


def _shown(url: str) -> str:
    from crest.storage import shown_url

    return str(shown_url(url))


@app.command()
def launch(
    sweep_file: Annotated[Path, typer.Argument(help="The sweep file (YAML).", show_default=False)],
    study: Annotated[Optional[str], typer.Option(help="Study name (overrides the file's).")] = None,
    storage: StorageOpt = None,
    n_trials: Annotated[
        Optional[int], typer.Option("--n-trials", min=1, help="Complete trials wanted (overrides the file's).")
    ] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel workers (overrides the file's).")] = None,
    address: Annotated[
        Optional[str],
        typer.Option(help="Ray cluster to join ('auto' or host:port). Default: start a local Ray."),
    ] = None,
    lease_ttl: LeaseTtlOpt = 30.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
) -> None:
    """Launch a sweep (or continue it, if the study exists with the same search)."""
    from crest.config import load_sweep

    config, text = load_sweep(sweep_file, overrides={"study": study, "n_trials": n_trials, "workers": workers})
    config = config.replace(source=str(sweep_file), storage=_storage(storage, config.storage), ray_address=address)
    _run_driver(config, text, lease_ttl=lease_ttl, quiet=quiet)


@app.command()
def sensitivity(
    sweep_file: Annotated[Path, typer.Argument(help="The sweep file (YAML).", show_default=False)],
    study: Annotated[Optional[str], typer.Option(help="Study name (overrides the file's).")] = None,
    storage: StorageOpt = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel workers (overrides the file's).")] = None,
    sparsities: Annotated[
        str, typer.Option(help="Comma-separated fractions of zeros to try per layer.")
    ] = ",".join(str(s) for s in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)),
    layers: Annotated[
        Optional[str], typer.Option(help="Comma-separated parameter names. Default: every weight of 2+ dimensions "
                                     "but embedding tables (name one to measure it).")
    ] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join ('auto' or host:port).")] = None,
    lease_ttl: LeaseTtlOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Measure each layer's accuracy when pruned alone (no retraining) and store the table.

    A sweep's prune stage can then take a layer's search range from it with
    `sparsity: sensitivity`.
    """
    from crest.config import load_sweep
    from crest.orchestrator import SweepDriver

    try:
        levels = [float(x) for x in sparsities.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"--sparsities: '{sparsities}' is not a comma-separated list of numbers") from e
    if not levels or any(not 0.0 <= x < 1.0 for x in levels):
        raise ConfigError("--sparsities: give fractions in [0, 1), e.g. 0.5,0.9,0.99")
    config, text = load_sweep(sweep_file, overrides={"study": study, "workers": workers})
    config = config.replace(source=str(sweep_file), storage=_storage(storage, config.storage), ray_address=address)
    wanted = [x.strip() for x in layers.split(",") if x.strip()] if layers else None
    table = SweepDriver(config, sweep_yaml=text, options=_driver_options(lease_ttl)).sensitivity(levels, layers=wanted)
    if as_json:
        _echo_json({layer: [{"sparsity": s, "accuracy": a, "accuracy_drop": d} for s, a, d in points]
                    for layer, points in table.items()})
        return
    from rich.console import Console
    from rich.table import Table

    out = Table("layer", *[f"{s:g}" for s in levels], title=f"accuracy drop with one layer pruned ({config.study})")
    for layer, points in table.items():
        out.add_row(layer, *[f"{d:+.4f}" for _, _, d in points])
    Console().print(out)


@app.command()
def resume(
    study: StudyArg,
    storage: StorageOpt = None,
    n_trials: Annotated[
        Optional[int], typer.Option("--n-trials", min=1, help="Raise or lower the study's trial count.")
    ] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel workers.")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join ('auto' or host:port).")] = None,
    lease_ttl: LeaseTtlOpt = 30.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    workload: Annotated[
        Optional[str],
        typer.Option(
            "--workload",
            help="Confirm a study's own module:function workload: its code is imported only when you name it "
            "here (or launch its sweep file again), never because a database row names it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Resume an interrupted study: trials that were running are re-run, completed ones kept."""
    url = _storage(storage)
    store = _open_store(url, upgrade=True)  # the driver writes to it anyway
    try:
        info = store.require_study(study)
    finally:
        store.close()
    stored = info.config.workload
    if workload is not None and workload != stored:
        raise ConfigError(f"--workload: study '{study}' runs '{stored}', not '{workload}'")
    if ":" in stored and workload is None:
        raise ConfigError(
            f"study '{study}' runs the workload '{stored}', which imports code from the working directory; "
            f"resume it with --workload {stored} if that is yours, or launch its sweep file again"
        )
    config = info.config.replace(n_trials=n_trials, workers=workers, storage=url, ray_address=address)
    _run_driver(config, info.sweep_yaml, lease_ttl=lease_ttl, quiet=quiet)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block's end, then raise KeyboardInterrupt if
    either came. For the driver's start-up imports, which run beside Ray's on its thread:
    a KeyboardInterrupt raised inside Python's import machinery can leave an import lock
    held (a swallowed exception in a weak-reference callback), and every import after it,
    in any thread, waits for ever."""
    came: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # (a background job ignores Ctrl-C: so does this)
                previous[sig] = signal.signal(sig, lambda signum, _frame: came.append(signum))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if came:
        raise KeyboardInterrupt


def _driver_options(lease_ttl: float) -> Any:
    """The driver's knobs for a CLI run: heartbeats four times per TTL, workloads from the cwd."""
    from crest.orchestrator import DriverOptions

    return DriverOptions(lease_ttl=lease_ttl, heartbeat=max(0.5, min(5.0, lease_ttl / 4)), search_path=(os.getcwd(),))


def _run_driver(config: Any, text: str, *, lease_ttl: float, quiet: bool) -> None:
    from crest._progress import ProgressPrinter
    from crest.config import DEFAULT_STORAGE
    from crest.orchestrator._baseline import (
        early_baseline,
        new_sqlite_file,
        starts_own_workers,
    )
    from crest.orchestrator._cluster import RayStart

    options = _driver_options(lease_ttl)
    # a certainly new study's baseline trains in a process of its own, begun first: it is
    # the longest part of the start-up. Ray's processes start while the driver imports
    # Optuna and SQLAlchemy; the driver of a certainly new study starts its first worker as
    # soon as Ray answers, so Ray starts no idle ones (they would take CPU from the training)
    baseline = ray_start = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)  # SIGTERM stops as cleanly as Ctrl-C
        with _interrupts_deferred():
            baseline = early_baseline(config, list(options.search_path))
            ray_start = RayStart.of(config, idle_workers=not starts_own_workers(config))
            from crest.orchestrator import SweepDriver

        printer = ProgressPrinter(enabled=not quiet)
        driver = SweepDriver(config, sweep_yaml=text, options=options, on_progress=printer.update,
                             ray_start=ray_start, baseline=baseline)
        with printer:
            summary = driver.run()
    except KeyboardInterrupt:
        if new_sqlite_file(config.storage):  # (any other database may hold the study)
            typer.echo("crest: interrupted before anything was stored; launch again to start the study", err=True)
            raise typer.Exit(130) from None
        typer.echo(
            f"crest: interrupted; completed trials are kept. Continue with: crest resume {config.study}"
            + (f" --storage {_shown(config.storage)}" if config.storage != DEFAULT_STORAGE else "")
            + (f" --workload {config.workload}" if ":" in config.workload else ""),
            err=True,
        )
        raise typer.Exit(130) from None
    finally:  # the driver stopped both already, unless it failed before its start: the training first
        try:
            if baseline is not None:
                baseline.stop()
        finally:
            try:
                if ray_start is not None:
                    ray_start.stop()
            finally:
                signal.signal(signal.SIGTERM, previous)
    typer.echo(
        f"study '{summary.study}': {summary.complete} complete trials"
        + (f" and {summary.pruned} pruned" if summary.pruned else "")
        + f" ({summary.ran_this_run} run now, {summary.failed_this_run} failed) in {summary.elapsed:.1f} s"
    )
    store = _open_store(config.storage)
    try:
        info = store.require_study(config.study)
        from crest.storage import max_drop_of

        _print_best(store.best(info.id, max_drop=max_drop_of(info), top=5), info, max_drop_of(info))
    finally:
        store.close()


@app.command()
def status(
    study: StudyArg,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
    lease_ttl: LeaseTtlOpt = 30.0,
) -> None:
    """Show a study's progress: trials complete, running, failed and waiting, the best, and
    the workers that ran its trials on a GPU and on the CPU."""
    from crest.storage import study_status
    from crest.tasks._device import count_workers

    store = _open_store(_storage(storage))
    try:
        info = store.require_study(study)
        st = study_status(store, info, lease_ttl=lease_ttl)
        st["workers"] = count_workers((t.device, t.details) for t in store.trials(info.id))
    finally:
        store.close()
    if as_json:
        _echo_json(st)
        return
    typer.echo(f"study      {st['study']} ({st['workload']})")
    typer.echo(
        f"trials     {st['complete'] + st['pruned']}/{st['n_trials']} done ({st['complete']} complete, "
        f"{st['pruned']} pruned), {st['running']} running, {st['failed']} failed, {st['waiting']} waiting"
    )
    base = st["baseline_accuracy"]
    typer.echo(f"baseline   {'-' if base is None else f'{base:.4f}'}")
    best = st["best"]
    if best:
        transport = f", {best['transport_bytes']:,} in transport" if best.get("transport_bytes") else ""
        typer.echo(
            f"best       trial {best['trial']}: {best['ratio']:.1f}x, {best['size_bytes']:,} bytes{transport}, "
            f"accuracy {best['accuracy']:.4f} (drop {best['accuracy_drop']:+.4f})"
        )
    else:
        typer.echo(f"best       none within max drop {st['max_accuracy_drop']}")
    typer.echo(f"workers    {st['workers']['gpu']} on a GPU, {st['workers']['cpu']} on the CPU (that ran recorded trials)")
    typer.echo(f"driver     {st['driver']}" + (f" ({st['driver_owner']})" if st["driver_owner"] else ""))


@app.command()
def studies(storage: StorageOpt = None, as_json: JsonOpt = False, lease_ttl: LeaseTtlOpt = 30.0) -> None:
    """List the studies in the database."""
    from crest.storage import study_status

    store = _open_store(_storage(storage))
    try:
        rows = [study_status(store, info, lease_ttl=lease_ttl) for info in store.list_studies()]
    finally:
        store.close()
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no studies")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("study", "workload", "done", "pruned", "failed", "best ratio", "best acc", "driver")
    for r in rows:
        b = r["best"]
        table.add_row(
            r["study"], r["workload"], f"{r['complete'] + r['pruned']}/{r['n_trials']}", str(r["pruned"]), str(r["failed"]),
            f"{b['ratio']:.1f}x" if b else "-", f"{b['accuracy']:.4f}" if b else "-", r["driver"],
        )
    Console().print(table)


@app.command()
def best(
    study: StudyArg,
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(min=1, help="How many trials to list.")] = 10,
    max_drop: Annotated[
        Optional[float],
        typer.Option("--max-drop", min=0.0, help="Accuracy drop allowed. Default: the study's constraint."),
    ] = None,
    max_size: Annotated[
        Optional[str],
        typer.Option(
            "--max-size",
            help="Largest artifact: bytes, or with a unit: 30KB, 1.5MB (KB = 1,000 bytes) or 64KiB (KiB = 1,024 bytes).",
            show_default=False,
        ),
    ] = None,
    min_accuracy: Annotated[
        Optional[str],
        typer.Option("--min-accuracy", help="Lowest accuracy, in the workload's metric (0.93) or in percent (93%).",
                     show_default=False),
    ] = None,
    pareto: Annotated[
        bool,
        typer.Option("--pareto", help="List the size/accuracy Pareto front (within the limits) instead."),
    ] = False,
    pruned: Annotated[
        bool,
        typer.Option("--pruned", help="List the trials early stopping pruned, with their size and reason, instead."),
    ] = False,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (a header row, one row per trial) instead.")] = False,
) -> None:
    """List the smallest artifacts within the accuracy-drop limit (and filters), best first.

    When no trial matches, says why and names the closest trial instead. For a model with
    more than 6 searched layers the table shows overall sparsity, mean bits and the most
    and least pruned layers instead of per-layer columns (--json and --csv keep them all).
    """
    from crest.report import parse_accuracy, parse_size
    from crest.storage import max_drop_of
    from crest.storage import select_best

    if as_json and as_csv:
        raise ConfigError("--json and --csv: choose one")
    if pruned:
        _best_pruned(_storage(storage), study, as_json=as_json, as_csv=as_csv)
        return
    size_limit = parse_size(max_size) if max_size is not None else None
    accuracy_limit = parse_accuracy(min_accuracy) if min_accuracy is not None else None
    store = _open_store(_storage(storage))
    try:
        info = store.require_study(study)
        limit = max_drop_of(info) if max_drop is None else max_drop
        selection = select_best(
            store, info, max_drop=limit, max_size=size_limit, min_accuracy=accuracy_limit, pareto=pareto, top=top
        )
    finally:
        store.close()
    if selection.why_none and (as_json or as_csv):
        typer.echo(f"crest: {selection.why_none}", err=True)  # stdout stays machine-readable
    if as_json:
        _echo_json([t.as_dict() for t in selection.trials])
    elif as_csv:
        from crest.report import trials_csv

        typer.echo(trials_csv(selection.trials), nl=False)
    else:
        _print_best(selection.trials, info, limit, why_none=selection.why_none)


def _best_pruned(url: str, study: str, *, as_json: bool, as_csv: bool) -> None:
    """``crest best --pruned``: every PRUNED trial in number order, with its size and reason."""
    if as_csv:
        raise ConfigError("--pruned: use --json or the table (the reasons do not fit CSV's columns)")
    store = _open_store(url)
    try:
        trials = store.trials(store.require_study(study).id, state="PRUNED")
    finally:
        store.close()
    if as_json:
        _echo_json([t.as_dict() for t in trials])
        return
    if not trials:
        typer.echo(f"no trial of '{study}' was pruned")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("trial", "bytes at least", "ratio at most", "worker s", "reason", title=f"pruned trials of '{study}'")
    for t in trials:
        size = "-" if t.size_bytes is None else f"{t.size_bytes:,}"
        ratio = "-" if t.ratio is None else f"{t.ratio:.1f}x"
        table.add_row(str(t.number), size, ratio, f"{t.wall_seconds or 0.0:.2f}", t.reason or "")
    Console().print(table)


def _print_best(trials: list[Any], info: Any, max_drop: float, *, why_none: str | None = None) -> None:
    from rich.console import Console

    from crest.report import best_table

    if not trials:
        typer.echo(why_none or f"no complete trial of '{info.name}' is within max drop {max_drop}")
        return
    Console().print(best_table(trials, info, max_drop))


@app.command()
def show(
    study: StudyArg,
    trial: Annotated[int, typer.Argument(help="The trial's number.", show_default=False)],
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show everything about one finished trial (COMPLETE, PRUNED or FAIL).

    Per layer: shape, parameters, sparsity, rank, bits, encoding and stored bytes; then the
    trial's params, device, node, attempt (and the trial it retries), state and reason or
    error, wall time, and the measurements it recorded (timings, latency, warnings).
    """
    from crest.report import print_trial, trial_report

    store = _open_store(_storage(storage))
    try:
        report = trial_report(store, study, trial)
    finally:
        store.close()
    if as_json:
        _echo_json(report)
    else:
        print_trial(report)


@app.command()
def plot(
    study: StudyArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File to write: .png, .svg or .html (interactive).", show_default=False)
    ],
    kind: Annotated[
        str, typer.Option("--kind", help="pareto, history, layers, sensitivity, or all (each the study has data for).")
    ] = "pareto",
    trial: Annotated[
        Optional[int], typer.Option("--trial", help="Trial whose layers to plot. Default: the best feasible trial.")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Plot a study: Pareto front, best ratio over time, per-layer settings, sensitivity."""
    from crest.report import plot_study

    store = _open_store(_storage(storage))
    try:
        result = plot_study(store, study, output, kind=kind, trial=trial)
    finally:
        store.close()
    shown = f" (layers of trial {result.trial})" if result.trial is not None else ""
    typer.echo(f"wrote {result.path}: {', '.join(result.kinds)}{shown}, {result.size_bytes:,} bytes")


@app.command()
def report(
    study: StudyArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    top: Annotated[int, typer.Option(min=1, help="How many of the best trials to list.")] = 10,
    storage: StorageOpt = None,
) -> None:
    """Write one self-contained HTML report of a study (summary, best trials, plots, node checks, layers)."""
    from crest.report import write_report

    store = _open_store(_storage(storage))
    try:
        size = write_report(store, study, output, top=top)
    finally:
        store.close()
    typer.echo(f"wrote {output}: {size:,} bytes, self-contained (opens offline)")


@app.command()
def export(
    study: StudyArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.", show_default=False)],
    trial: Annotated[
        Optional[int], typer.Option("--trial", help="Trial number. Default: the best feasible trial.")
    ] = None,
    storage: StorageOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing file (or replace a symbolic link, not following it).")
    ] = False,
) -> None:
    """Write a trial's artifact, byte for byte as stored (its SHA-256 is verified).

    The file is written whole or not at all: a failed or interrupted export leaves an
    existing file as it was.
    """
    from crest._atomic import check_target, write_atomic
    from crest.storage import max_drop_of

    check_target(output, force=force)
    store = _open_store(_storage(storage))
    try:
        info = store.require_study(study)
        if trial is None:
            ranked = store.best(info.id, max_drop=max_drop_of(info), top=1)
            if not ranked:
                raise ConfigError(f"study '{study}' has no feasible trial yet; pass --trial N")
            record = ranked[0]
        else:
            record = store.trial(info.id, trial)
        if record.artifact_sha256 is None:
            raise ConfigError(f"trial {record.number} has no artifact (state {record.state})")
        blob = store.get_artifact(record.artifact_sha256)
    finally:
        store.close()
    write_atomic(output, blob, force=force)
    typer.echo(f"wrote {output}: trial {record.number}, {len(blob):,} bytes, sha256 {record.artifact_sha256}")


@app.command()
def gc(
    study: StudyArg,
    keep: Annotated[
        str,
        typer.Option("--keep", help="Trials whose artifacts stay: best (crest best's first), pareto "
                     "(the size/accuracy front), or all (only orphans go). The baseline always stays."),
    ] = "best",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")] = False,
    storage: StorageOpt = None,
    lease_ttl: LeaseTtlOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Delete the artifacts of trials not kept, and orphans a crash left; print the bytes freed.

    Trial rows stay (with sizes, scores and SHA-256); only the artifacts' bytes go, from the
    artifact store and from the database. Refused while a driver runs the study.
    """
    from crest.storage import Store, collect_garbage, lease_owner_id
    from crest.storage._gc import KEEP_CHOICES

    if keep not in KEEP_CHOICES:
        raise ConfigError(f"--keep: choose one of {', '.join(KEEP_CHOICES)}, not '{keep}'")
    url = _storage(storage)
    store = _open_store(url) if dry_run else Store(url, create=False, upgrade=False)
    try:
        info = store.require_study(study)
        report = collect_garbage(store, info, keep=keep, dry_run=dry_run,  # type: ignore[arg-type]
                                 owner=lease_owner_id(), lease_ttl=lease_ttl)
    finally:
        store.close()
    if as_json:
        _echo_json({**report.__dict__, "freed_bytes": report.freed_bytes})
        return
    verb = "would free" if dry_run else "freed"
    typer.echo(
        f"{study}: {verb} {report.freed_bytes:,} bytes: {report.store_bytes:,} from {report.store_files} store "
        f"files ({report.orphan_files} without a row), {report.database_bytes:,} from the database; "
        f"{report.database_rows} artifacts emptied ({report.orphan_rows} unused rows deleted); "
        f"kept trials: {', '.join(map(str, report.kept_trials)) or 'none'} and the baseline"
    )
    for line in report.skipped:
        typer.echo(f"skipped {line}", err=True)


@app.command("inspect")
def inspect_cmd(
    file: Annotated[Path, typer.Argument(help="A crest artifact.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Show an artifact's header: tensors, encodings, sizes, and its SHA-256 id."""
    from crest import gpu

    try:
        blob = file.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {file}: {e.strerror}") from e
    manifest = gpu.inspect(blob)
    if as_json:
        _echo_json(manifest)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("tensor", "dtype", "shape", "encoding", "bits (index/code)", "bytes",
                  title=f"{file.name}: {len(blob):,} bytes, crest format v{manifest['version']}")
    for t in manifest["tensors"]:
        bits = f"{t['index_bits']}/{t['code_bits']}" if t["encoding"] == "sparse" else "-"
        table.add_row(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", t["encoding"], bits,
                      f"{t.get('stored_bytes', 0):,}")
    Console().print(table)
    typer.echo(f"transport (Huffman) form: {manifest['transport_bytes']:,} bytes")
    typer.echo(f"sha256 {manifest['sha256']}")


@app.command()
def nodes(study: StudyArg, storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Show the decoder check of every node the study ran on (CuPy vs NumPy, bit for bit)."""
    store = _open_store(_storage(storage))
    try:
        info = store.require_study(study)
        checks = store.node_checks(info.id)
    finally:
        store.close()
    if as_json:
        _echo_json(checks)
        return
    if not checks:
        typer.echo(f"no node checks recorded for '{study}' yet")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("node", "host", "mode", "gpu", "cuda", "cupy", "result", "seconds")
    for c in checks:
        result = "pass" if c["passed"] else f"FAIL: {c['reason']}"
        table.add_row(c["node_id"][:12], c["host"], c["mode"], c["gpu_name"] or "-", c["cuda_version"] or "-",
                      c["cupy_version"] or "-", result, f"{c['seconds']:.2f}")
    Console().print(table)


@app.command("upgrade-storage")
def upgrade_storage(storage: StorageOpt = None) -> None:
    """Upgrade an existing database's crest tables to this crest's schema, keeping all data.

    Read-only commands (status, studies, best, export, nodes) never change a database; on
    one written by an older crest they stop and point here. launch and resume upgrade it
    themselves. Stop the study's driver first: an older crest cannot use the new schema.
    """
    from crest.storage import HEAD_REVISION

    url = _storage(storage)
    store = _open_store(url, upgrade=True)
    store.close()
    if store.upgraded_from is None:
        typer.echo(f"{_shown(url)}: crest schema {HEAD_REVISION}, already current")
    else:
        typer.echo(f"{_shown(url)}: crest schema upgraded from {store.upgraded_from} to {HEAD_REVISION}")


@app.command()
def workloads() -> None:
    """List the built-in workloads (a sweep may also name its own as module:function)."""
    from crest.tasks import builtin_workloads

    for name, desc in builtin_workloads().items():
        typer.echo(f"{name:16} {desc}")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"crest {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            envvar="CREST_LOG_LEVEL",
            help="What crest logs to stderr: debug, info, warning or error (the progress line is not a log).",
        ),
    ] = "warning",
    log_file: Annotated[
        Optional[Path],
        typer.Option("--log-file", help="Also append every log record at --log-level to this file.", dir_okay=False),
    ] = None,
) -> None:
    """crest: compression sweeps for neural networks."""
    from crest._logging import LEVELS, configure_logging

    if log_level.lower() not in LEVELS:
        raise ConfigError(f"--log-level: '{log_level}' is not one of {', '.join(LEVELS)}")
    try:
        configure_logging(log_level.lower(), log_file=log_file)
    except OSError as e:
        raise ConfigError(f"--log-file: cannot write {log_file} ({e.strerror or e})") from e


def _usage_error(e: BaseException) -> bool:
    """Whether ``e`` is click's usage error (a ClickException), found through the exception's
    own classes: typer may bring its own copy of click (``typer._click``) or use the package."""
    return any(
        c.__name__ == "ClickException" and c.__module__.endswith("click.exceptions") for c in type(e).__mro__
    )


def _one_line(text: str) -> str:
    """``text`` on one line, passwords in URLs written ``***``."""
    from crest._logging import redact

    return redact(" ".join(part.strip() for part in text.strip().splitlines() if part.strip()))


def main() -> None:
    """Console entry point: runs the app. A CrestError prints one line on stderr and exits 2;
    a usage error prints click's usage and one ``Error:`` line and exits 2; anything else
    unexpected prints one line (the traceback goes to the debug log) and exits 1. No line
    shows a database password."""
    try:
        # without standalone mode, click returns the code of a typer.Exit instead of exiting
        code = app(standalone_mode=False)
    except CrestError as e:
        logger.debug("the command failed", exc_info=True)
        typer.echo(f"crest: error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("crest: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("crest: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if _usage_error(e):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        logger.debug("unexpected error", exc_info=True)
        typer.echo(
            f"crest: error: {type(e).__name__}: {_one_line(str(e)) or '(no message)'} "
            "(a bug in crest? --log-level debug shows the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
