"""CLI: run a sweep spec on Ray Tune, into MLflow and Parquet.

    python -m orchestrator.sweep SPEC [--set key=value ...] [--dry-run] [--resume] [--smoke]
                                      [--rerun-changed] [--address ADDR]

Exit codes: 0 every trial completed or was stopped by the scheduler; 1 a trial failed (or the
run was interrupted, or a result sink broke); 2 bad input (the spec, an override, the storage),
in which case nothing was created or launched. `--set` takes spec-level dotted keys
(`base.train.lr=1e-3`, `seeds=[0]`, `run.storage=/tmp/sweeps`, `axes.model.locality.act=[hs]`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.errors import SweepError
from orchestrator.plan.design import build_plan
from orchestrator.plan.estimate import estimate_plan
from orchestrator.plan.naming import format_overrides
from orchestrator.scheduling.decisions import milestones
from orchestrator.sinks.mlflow_store import log_report, mlflow_ui_command, sweep_browse_url
from orchestrator.sinks.parquet import TRIALS_FILE, table_exists
from orchestrator.spec.load import load_spec
from orchestrator.spec.smoke import shrink_spec
from orchestrator.sync import sync

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Run a LocalViT sweep spec (YAML) on Ray Tune with ASHA/Optuna; results go "
                    "to MLflow and Parquet under run.storage.")
    p.add_argument("spec", help="the sweep YAML, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key (dotted), e.g. --set base.train.epochs=5; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (arms, seeds, trials, compute) and start nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep of this name from its saved Tune state; with an "
                        "edited spec that adds seeds, arms or axis values, run only the new "
                        "trials")
    p.add_argument("--rerun-changed", action="store_true",
                   help="with --resume: rerun the finished trials whose config the edited spec "
                        "changes (their old rows are superseded); without it such a spec is "
                        "refused")
    p.add_argument("--smoke", action="store_true",
                   help="shrink the sweep to CPU minutes (small variants, digits, few steps)")
    p.add_argument("--address", default=None,
                   help="connect to a running Ray cluster instead of starting one here: "
                        "`auto` (or host:6379) on the cluster's head node, where the sweep "
                        "runs so that MLflow and Parquet stay on the head")
    return p


def _fmt_macs(macs: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if macs >= scale:
            return f"{macs / scale:.3g} {unit}MAC"
    return f"{macs:.3g} MAC"


def _arm_table(plan, title: str, width: int):
    """One row per arm: its name (and the design points that resolved to it), its backbone, and
    its other overrides of base. Names are never cut: they are what `references`, reports and
    published-results files call an arm, so a name too wide for the terminal folds."""
    backbone = {t.arm: t.backbone for t in plan.trials}
    longest = max(len(name) + 5 * (name != arm.name)  # "also "
                  for arm in plan.arms for name in (arm.name, *arm.shown_aliases))
    # rich never narrows a column below its longest word, so the widths are set here: the
    # backbones whole, the names whole where they fit leaving 20 characters to the overrides
    # (every backbone-axis name at 80 columns), the overrides folded into what is left.
    content = width - 10  # 4 rules and 2 characters of padding per column
    backbone_width = max(len("backbone"), *(len(b) for b in backbone.values()))
    arm_width = min(longest, max(12, content - backbone_width - 20))
    table = Table(title=title, title_justify="left")
    table.add_column("arm", overflow="fold", min_width=arm_width, max_width=arm_width)
    table.add_column("backbone", no_wrap=True)
    table.add_column("other overrides of base", overflow="fold",
                     max_width=max(8, content - arm_width - backbone_width))
    as_named = False
    for arm in plan.arms:
        name = Text(arm.name)
        if arm.shown_aliases:
            name.append("\nalso " + "\n     ".join(arm.shown_aliases), style="dim")
        others = {k: v for k, v in arm.overrides.items() if k != "model.backbone"}
        if others and others == {k: v for k, v in arm.factors.items() if k != "model.backbone"}:
            # A design point: its name spells these overrides (a factorial's five of them would
            # fill ten lines of a narrow column for each of hundreds of arms).
            as_named = True
            table.add_row(name, backbone[arm.name], Text("as named", style="dim"))
        else:
            table.add_row(name, backbone[arm.name], ", ".join(format_overrides(others)) or "-")
    if as_named:
        table.caption = ("as named: the name spells the arm's overrides of the axes "
                         + ", ".join(plan.spec.axes))
        table.caption_justify = "left"
    return table


def _budget(budget) -> str:
    return (f"{budget.trial_epochs} trial-epochs" if budget.trial_epochs is not None
            else f"{budget.gpu_hours:g} GPU-hours")


def _print_plan(plan, console) -> None:
    spec = plan.spec
    est = estimate_plan(plan)
    title = f"sweep {spec.name}{' (--smoke)' if plan.smoke else ''}: {plan.source}"
    if plan.is_search:
        algo = "optuna " + spec.search.optuna.sampler if spec.search.optuna else "random/grid"
        table = Table(title=title, title_justify="left")
        table.add_column("searched key")
        table.add_column("domain")
        for key, dom in spec.search.space.items():
            table.add_row(key, f"{dom.kind} {dom.values}")
        console.print(table)
        console.print(f"search: {algo}, {plan.num_trials} trials, seed {spec.seeds[0]}")
    else:
        console.print(_arm_table(plan, title, console.width))
        rule = spec.seed_rule
        if rule is None:
            console.print(f"arms: {len(plan.arms)}  seeds: {list(spec.seeds)}  "
                          f"trials: {plan.num_trials} (arms x seeds)")
        else:
            first = sum(1 for t in plan.trials if t.seed < rule.start)
            console.print(f"arms: {len(plan.arms)}  seeds: 0..{rule.start - 1} for every arm, "
                          f"then paired seeds added to each undecided question, {rule.batch} at "
                          f"a time, up to {rule.max} ({rule.spending} spending, alpha "
                          f"{rule.alpha:g})  trials: {first} first, at most {plan.num_trials}"
                          + (f", within run.budget {_budget(spec.run.budget)}"
                             if spec.run.budget else ""))
        if spec.compare is not None:
            console.print(f"questions (the tested family): {len(plan.questions)}: "
                          + "; ".join(f"{a} vs {r}" for a, r in plan.questions))
    asha = spec.search.asha
    if asha is None:
        sched = "none (every trial runs all its epochs)"
    else:
        rungs = milestones(asha.grace_period, asha.reduction_factor, plan.max_epochs)
        sched = (f"ASHA grace {asha.grace_period}, reduction {asha.reduction_factor:g}, "
                 f"max_t {plan.max_epochs}")
        if spec.asha_unit == "arm":
            rule = ("keeps the best 1/" f"{asha.reduction_factor:g} of the arms"
                    if asha.rule == "halving" else
                    f"paired t-test against the reference at {asha.confidence:g}")
            sched = (f"arm-level {asha.rule} (whole arms, {rule}) at epochs "
                     f"{', '.join(map(str, rungs)) or 'none'}; never stopped: "
                     f"{', '.join(plan.protected)}")
    res = spec.run.resources_per_trial
    console.print(f"metric: {spec.search.metric} ({spec.search.mode})  scheduler: {sched}")
    console.print(f"resources per trial: cpu {res.cpu:g}, gpu {res.gpu:g}  max concurrent: "
                  f"{spec.run.max_concurrent or 'as resources allow'}  storage: "
                  f"{spec.run.storage}")
    models = ", ".join(
        f"{k} {_fmt_macs(lo)}" + (f"-{_fmt_macs(hi)}" if _fmt_macs(hi) != _fmt_macs(lo) else "")
        + "/image" for k, (lo, hi) in est.macs_per_image.items())
    console.print(f"epochs at most: {est.epochs_max} (trials x train.epochs)")
    console.print(f"estimated compute: at most {_fmt_macs(est.train_macs)} of training "
                  f"(3 x forward MACs x images x epochs, before early stopping"
                  f"{'; imagefolder counted as ImageNet-1k' if est.assumed_sizes else ''})")
    console.print(f"forward cost: {models}", soft_wrap=True)
    console.print("dry run: nothing was created or started")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    err = Console(stderr=True, highlight=False)
    if args.address and args.address.startswith("ray://"):
        # Ray Client: the driver would run here, far from the cluster's storage and MLflow.
        err.print(f"error: --address {args.address}: Ray Client (ray://) addresses are not "
                  f"supported; run the sweep on the cluster's head node with --address auto "
                  f"(ray submit ray_cluster.yaml or ray exec ray_cluster.yaml, see README)",
                  markup=False, soft_wrap=True)
        return 2
    try:
        spec = load_spec(args.spec, args.sets)
        source = os.path.basename(args.spec)
        if args.smoke:
            spec = shrink_spec(spec)
        # The data must be readable here only when the trials will run here.
        plan = build_plan(spec, source=source, smoke=args.smoke,
                          data_required=not (args.dry_run or args.address))
        for warning in plan.warnings:
            err.print(f"warning: {warning}", markup=False, soft_wrap=True)
        if args.dry_run:
            _print_plan(plan, console)
            return 0
        # Ray (seconds to import) only once the sweep runs: a dry run and bad input exit without.
        from orchestrator.tune.runner import run_sweep
        from orchestrator.tune.stages import current_stage
        from orchestrator.tune.storage import check_storage, sweep_dir

        if args.rerun_changed and not args.resume:
            err.print("error: --rerun-changed goes with --resume (it reruns the changed trials "
                      "of a sweep that exists)", markup=False, soft_wrap=True)
            return 2
        target = check_storage(current_stage(plan, sweep_dir(plan)), resume=args.resume,
                               rerun_changed=args.rerun_changed)
        if args.resume:
            _catch_up_mlflow(target, err)
        result = run_sweep(plan, resume=args.resume, address=args.address,
                           rerun_changed=args.rerun_changed,
                           notify=lambda line: err.print(f"note: {line}", markup=False,
                                                         soft_wrap=True))
    except SweepError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 2
    _print_summary(plan, result, args.spec, console, err)
    return result.exit_code


def _catch_up_mlflow(sweep_dir, err) -> None:
    """--resume: first replay what Parquet has and MLflow may lack (a store that was down while
    trials finished; the same replay as `orchestrator.sync`, so nothing is logged twice)."""
    if not table_exists(sweep_dir, TRIALS_FILE):
        return
    try:
        sync(sweep_dir)
    except SweepError:
        return      # nothing finished yet: the resumed sweep logs everything itself
    except Exception as exc:  # noqa: BLE001 - the store is still down: the sweep goes on
        err.print(f"MLflow not brought up to date before resuming ({type(exc).__name__}: "
                  f"{exc}); the Parquet tables keep everything", markup=False, soft_wrap=True)


def _print_summary(plan, result, spec_path, console, err) -> None:
    """The study's answer (the report's verdict table), where everything is, how to browse."""
    for problem in result.storage_errors:
        err.print(f"error: storage: {problem}. Every table written there before is whole; make "
                  f"room (or make it writable), then continue with: python -m orchestrator.sweep "
                  f"{spec_path} --resume (with the same --set options)", markup=False,
                  soft_wrap=True)
    if result.tune_error:
        err.print(f"Ray Tune stopped with an error: {result.tune_error}", markup=False,
                  soft_wrap=True)
    # The report's plotting and statistics (seconds to import) only now: a killed or refused
    # driver never needs them.
    from orchestrator.report.writer import ReportError, verdict_table, write_report

    report = None
    try:
        report = write_report(result.storage_dir)
    except (ReportError, OSError) as exc:
        err.print(f"report not written: {exc}", markup=False, soft_wrap=True)
    if report is not None:
        console.print(verdict_table(report))
        plots = ", ".join(p.name for p in report.files if p.suffix == ".png")
        console.print(f"Report:   {report.directory} ({', '.join(_doc_names(report))}; "
                      f"plots: {plots or 'none'})", markup=False, highlight=False,
                      soft_wrap=True)
        try:
            log_report(result.tracking_uri, plan.spec.name, report.directory)
        except Exception as exc:  # noqa: BLE001 - the report is on disk; MLflow is a mirror
            err.print(f"report not logged to MLflow: {type(exc).__name__}: {exc}",
                      markup=False, soft_wrap=True)
    console.print(f"Results:  {result.storage_dir} (trials.parquet, epochs.parquet, spec.yaml)",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"MLflow:   {result.tracking_uri}", markup=False, highlight=False,
                  soft_wrap=True)
    console.print(f"Browse:   {mlflow_ui_command(result.tracking_uri)}", markup=False,
                  highlight=False, soft_wrap=True)
    with contextlib.suppress(Exception):  # no store to link to (e.g. an unreachable server)
        console.print(f"Open:     {sweep_browse_url(result.tracking_uri, plan.spec.name)}",
                      markup=False, highlight=False, soft_wrap=True)
    for msg in result.sink_errors:
        err.print(f"result sink error: {msg}", markup=False, soft_wrap=True)
    if any(msg.startswith("MlflowSink.") for msg in result.sink_errors):
        err.print(f"MLflow missed part of this sweep; the Parquet tables have all of it: once "
                  f"the store is back, run python -m orchestrator.sync {result.storage_dir}",
                  markup=False, soft_wrap=True)
    if result.interrupted:
        err.print(f"interrupted; continue with: python -m orchestrator.sweep {spec_path} --resume"
                  f" (with the same --set options)", markup=False, soft_wrap=True)
    failed = [o for o in result.outcomes.values() if o.status == "failed"]
    for o in failed:
        err.print(f"trial {o.key} failed: {o.stop_reason}", markup=False, soft_wrap=True)


def _doc_names(report) -> list[str]:
    return [p.name for p in report.files if p.suffix in (".md", ".tex", ".html", ".csv")]


def _exit(code: int) -> NoReturn:
    """Exit with `code` once every exit handler has run (Ray's shutdown, logging's and MLflow's
    flushes) and the output is flushed, skipping only the interpreter's teardown of the torch,
    Ray and gRPC modules, which kept the process 2-3 s after its last write
    (benchmarks/RESULTS.md, "worker start-up")."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
