"""Replay a finished seed-rule sweep under other rules: what each would have run and decided.

    python benchmarks/seed_rule_replay.py SWEEP_DIR [--spending obrien-fleming --spending pocock]
                                          [--max 8] [--fixed 8]

Every trial is deterministic given its config and seed (the same command gives the same numbers),
so a rule that would have stopped earlier than the one that ran sees exactly the values the sweep
recorded for the seeds it would have run. The replay builds the sweep's plan from its spec.yaml,
swaps the rule's spending (and max), and walks the stages with `orchestrator.tune.stages.next_stage`
on the recorded rows. A rule that would need a seed the sweep never ran is reported as such,
not guessed. `--fixed N` adds the trial-epochs of a fixed N-seed run of every arm for comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from orchestrator.plan.design import build_plan
from orchestrator.sinks.parquet import read_trials
from orchestrator.spec.load import spec_from_dict
from orchestrator.tune.stages import first_members, next_stage


def replay(sweep: Path, spending: str, max_seeds: int | None) -> dict:
    raw = yaml.safe_load((sweep / "spec.yaml").read_text())
    spec = {k: v for k, v in raw.items() if k not in ("plan", "smoke", "source")}
    spec["seeds"] = {**spec["seeds"], "spending": spending,
                     **({"max": max_seeds} if max_seeds else {})}
    plan = build_plan(spec_from_dict(spec, source="spec.yaml"), source="spec.yaml",
                      data_required=False)
    rows = read_trials(sweep, decode_config=False)
    have = {(a, int(s)) for a, s in zip(rows["arm"], rows["seed"], strict=True)}
    stage, step = plan.restricted(first_members(plan)), None
    while True:
        missing = {(t.arm, t.seed) for t in stage.trials} - have
        if missing:
            return {"spending": spending, "missing": sorted(missing)}
        by_key = {t.key for t in stage.trials}
        step = next_stage(plan, stage, rows[rows["trial_key"].isin(by_key)])
        if step.plan is None:
            break
        stage = step.plan
    ran = rows[rows["trial_key"].isin({t.key for t in stage.trials})]
    return {"spending": spending, "trials": len(stage.trials),
            "trial_epochs": int(ran["epochs_run"].sum()),
            "verdicts": {f"{a} vs {r}": (v.verdict, v.decided_at or v.seeds_used)
                         for (a, r), v in step.verdicts.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--spending", action="append", default=[])
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--fixed", type=int, default=None)
    args = p.parse_args(argv)
    raw = yaml.safe_load((args.sweep / "spec.yaml").read_text())
    epochs = int(raw["base"]["train"]["epochs"])
    arms = len(raw["plan"]["arms"])
    for spending in [raw["seeds"]["spending"], *args.spending]:
        out = replay(args.sweep, spending, args.max)
        if "missing" in out:
            print(f"{spending}: needs trials the sweep did not run, e.g. {out['missing'][:3]}")
            continue
        print(f"{spending}: {out['trials']} trials, {out['trial_epochs']} trial-epochs")
        for q, (verdict, n) in out["verdicts"].items():
            print(f"  {q}: {verdict} ({n} seeds)")
    if args.fixed:
        print(f"fixed {args.fixed} seeds: {arms * args.fixed} trials, "
              f"{arms * args.fixed * epochs} trial-epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
