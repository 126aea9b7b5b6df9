"""Mutation check: does the test suite fail when the code is broken on purpose?

Each mutation is one semantic break written as a text substitution in one source file (find ->
replace). For each, the script copies the repository's files (`git ls-files`: the working tree's
contents of the tracked files) into a throwaway folder, applies the break there, and runs the
default test command in the copy with the copy first on PYTHONPATH, so the copy's code is what
gets imported (not the editable install of this checkout; checked before every run). A mutation
the suite fails on is *killed*; one it passes is a *survivor*: a break the tests do not see.

Every find string must occur exactly once in its file; when the code moves on and a find string
no longer matches, the script stops with an error naming the mutation instead of skipping it
quietly. Edit the MUTATIONS list below (orchestrator entries last, grouped by file).

    python benchmarks/mutations.py --list                  # names, files, and whether each applies
    python benchmarks/mutations.py --only locality-residual-dropped --only metrics-top1-is-top5
    nice -n 10 python benchmarks/mutations.py --jobs 2 --record   # everything, into RESULTS.md

Each run takes as long as the suite up to its first failure (`-x`): seconds for a break that a
unit test catches, the whole suite (minutes) for a survivor. The test files meant to catch a
break run first (FIRST_FOR), then the rest of the suite. A full run first checks that the
unmutated copy passes (`--no-baseline` skips that). `--rev HEAD` copies a commit instead of the
working tree (others' unfinished edits stay out); `--tests tests/test_train.py` runs only some
test files while developing: a break they catch also fails the full suite, but only the full
suite can show that a break survives.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import signal
import subprocess
import sys
import time

from _mutants import (
    ROOT,
    Mutation,
    Outcome,
    Source,
    StaleMutation,
    check,
    record,
    run_one,
    stop_all,
    table,
)

TRAIN = "trainers/train/__init__.py"


MUTATIONS: list[Mutation] = [
    # ---- the locality FFN (trainers/locality.py; docs/paper.md section 2) ----
    Mutation("locality-residual-dropped", "trainers/locality.py",
             "img = img + self.conv(img)", "img = self.conv(img)",
             "the locality FFN loses its own residual connection"),
    Mutation("locality-se-before-dw-conv", "trainers/locality.py",
             "layers.append(SqueezeExcite(hidden, spec.se_hidden(dim, mlp_ratio), **kw))",
             "layers.insert(3, SqueezeExcite(hidden, spec.se_hidden(dim, mlp_ratio), **kw))",
             "SE sits between the 1x1 expansion and the depth-wise conv"),
    Mutation("locality-no-act-after-dw-conv", "trainers/locality.py",
             "                nn.BatchNorm2d(hidden, **kw),\n"
             "                _activation(spec.act),\n            ]\n",
             "                nn.BatchNorm2d(hidden, **kw),\n            ]\n",
             "no activation after the depth-wise conv's BatchNorm"),
    Mutation("locality-se-sigmoid-gate", "trainers/locality.py",
             "self.gate = nn.Hardsigmoid()\n", "self.gate = nn.Sigmoid()\n",
             "the SE gate is a plain sigmoid instead of h-sigmoid"),
    Mutation("locality-eca-gates-swapped", "trainers/locality.py",
             "nn.Hardsigmoid() if hard_gate else nn.Sigmoid()",
             "nn.Sigmoid() if hard_gate else nn.Hardsigmoid()",
             "hs+eca gets the h-sigmoid gate and hs+ecah the sigmoid"),
    Mutation("locality-se-relu-is-hswish", "trainers/locality.py",
             "self.act = nn.ReLU(inplace=True)", "self.act = nn.Hardswish()",
             "SE's inner activation is h-swish instead of ReLU"),
    Mutation("locality-hswish-is-relu6", "trainers/locality.py",
             'nn.ReLU6(inplace=True) if act == "relu6" else nn.Hardswish(inplace=True)',
             "nn.ReLU6(inplace=True)",
             "every act code uses ReLU6 (h-swish never used)"),
    Mutation("locality-grid-column-major", "trainers/locality.py",
             "img = tokens.transpose(1, 2).reshape(batch, channels, height, width)",
             "img = tokens.transpose(1, 2).reshape(batch, channels, width, height)"
             ".transpose(2, 3)",
             "Seq2Img reads the tokens in column-major order"),
    Mutation("locality-eca-kernel-3", "trainers/locality.py",
             "kernel_size = eca_kernel_size(channels)", "kernel_size = 3",
             "ECA's 1-D conv is fixed at kernel 3 instead of ECA-Net's adaptive size"),
    Mutation("deit-layernorm-before-ffn", "trainers/backbones/deit.py",
             "return self.ffn(x, grid, self.num_prefix_tokens)",
             "return x - self.norm1(x) + self.ffn(self.norm1(x), grid, self.num_prefix_tokens)",
             "the DeiT locality block normalises the FFN input (a LayerNorm the paper removes)"),
    # ---- architectures (trainers/registry.py, trainers/backbones; docs/paper.md section 3) ----
    Mutation("arch-localvit-tiny-3-heads", "trainers/registry.py",
             "heads4 = ViTArch(patch_size=16, embed_dim=192, depth=12, num_heads=4)",
             "heads4 = ViTArch(patch_size=16, embed_dim=192, depth=12, num_heads=3)",
             "LocalViT-T with DeiT-T's 3 heads instead of 4"),
    Mutation("arch-localvit-small-6-heads", "trainers/registry.py",
             "heads8 = ViTArch(patch_size=16, embed_dim=384, depth=12, num_heads=8)",
             "heads8 = ViTArch(patch_size=16, embed_dim=384, depth=12, num_heads=6)",
             "LocalViT-S with DeiT-S's 6 heads instead of 8"),
    Mutation("arch-pvt-tiny-heads", "trainers/backbones/pvt.py",
             "embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8)",
             "embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 4, 8)",
             "PVT-Tiny stage 3 with 4 heads instead of 5"),
    Mutation("arch-tnt-inner-heads", "trainers/backbones/tnt.py",
             "    num_heads_inner: int = 3\n", "    num_heads_inner: int = 2\n",
             "TNT-T inner attention with 2 heads instead of 3"),
    # ---- the trainer's metrics and seeding (trainers/train/, trainers/_engine.py) ----
    Mutation("metrics-val-on-train-split", TRAIN,
             "val_loader = data_lib.make_loader(bundle.val,",
             "val_loader = data_lib.make_loader(bundle.train,",
             "val/* computed on the training split"),
    Mutation("metrics-top1-is-top5", TRAIN,
             '"val/top1": val["top1"],', '"val/top1": val["top5"],',
             "val/top1 reports the top-5 accuracy"),
    Mutation("metrics-top5-is-top3", "trainers/_engine.py",
             "correct5 += hits.any(dim=1).sum().item()",
             "correct5 += hits[:, :3].any(dim=1).sum().item()",
             "val/top5 counts only the first three guesses"),
    Mutation("metrics-ema-is-live-model", TRAIN,
             '"val_ema/top1": ema_val["top1"]', '"val_ema/top1": val["top1"]',
             "val_ema/top1 reports the live model instead of the EMA weights"),
    Mutation("metrics-eval-in-train-mode", "trainers/_engine.py",
             "    model.eval()\n    loss_sum, correct1",
             "    model.train()\n    loss_sum, correct1",
             "evaluation runs with train-mode BatchNorm / dropout"),
    Mutation("seed-ignored-for-init", TRAIN,
             "_seed_everything(cfg.seed)", "_seed_everything(0)",
             "the trial seed does not seed the model init (only the data order)"),
    Mutation("trainer-resume-restarts-at-epoch-1", TRAIN,
             'run.start_epoch, run.global_step = ckpt["epoch"] + 1, ckpt["global_step"]',
             'run.start_epoch, run.global_step = 1, ckpt["global_step"]',
             "a resumed trial retrains from epoch 1"),
    Mutation("trainer-resume-skips-rng", TRAIN,
             '    restore_rng(ckpt["rng"])\n', "",
             "a resumed trial does not restore the RNG states"),
    Mutation("trainer-label-smoothing-ignored", TRAIN,
             "criterion = torch.nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)",
             "criterion = torch.nn.CrossEntropyLoss()",
             "without Mixup, aug.label_smoothing is ignored"),
    # ---- the orchestrator (take the find strings from the files as they are) ----
    Mutation("parquet-forgets-compacted-rows", "orchestrator/sinks/parted.py",
             "tables = [pq.read_table(self.path)] if self.path.is_file() else []",
             "tables = []",
             "the compacted trials/epochs file is ignored when parts are read or merged into it: "
             "a resumed sweep loses the rows written before"),
    Mutation("parquet-upsert-keeps-first-write", "orchestrator/sinks/parted.py",
             '[(_ROW, "max")])[f"{_ROW}_max"]', '[(_ROW, "min")])[f"{_ROW}_min"]',
             "a replayed trial's rows (after --resume or a retry) do not replace the earlier "
             "ones: the first write of a key wins"),
    Mutation("parquet-log-seal-keeps-repeated-keys", "orchestrator/sinks/parted.py",
             "self._add_part((0, seq, seq), self._keep_last(self._log_writes))",
             "self._add_part((0, seq, seq), self._concat(self._log_writes))",
             "a full log is sealed with every write of a key in it: a lone sealed part is read "
             "(without grouping) with a replayed trial's rows twice"),
    Mutation("parquet-leftover-log-dropped", "orchestrator/sinks/parted.py",
             "            if tables:\n                self._add_part((0, log[1], log[2])",
             "            if False:\n                self._add_part((0, log[1], log[2])",
             "the log a killed driver left is deleted instead of sealed by the next driver: the "
             "trial ends it held are lost"),
    Mutation("mlflow-store-built-in-place", "orchestrator/sinks/mlflow.py",
             "            create_sqlite_store(db)\n",
             "            db.parent.mkdir(parents=True, exist_ok=True)\n",
             "a new MLflow store is built at its own path: a driver killed while MLflow migrates "
             "it leaves a store every later open fails on"),
    Mutation("mlflow-template-location-kept", "orchestrator/sinks/mlflow_store.py",
             "(artifacts, len(_TEMPLATE_ARTIFACTS) + 1, now, now,",
             "(_TEMPLATE_ARTIFACTS, len(_TEMPLATE_ARTIFACTS) + 1, now, now,",
             "a store copied from the template keeps the template's artifact folder for its "
             "default experiment instead of its own"),
    Mutation("trial-ignores-tune-checkpoint", "orchestrator/tune/trainable.py",
             "checkpoint = tune.get_checkpoint()", "checkpoint = None",
             "a restored trial retrains from scratch instead of its Tune checkpoint"),
    Mutation("trial-crashes-in-worker", "orchestrator/tune/trainable.py",
             "    trial = identify(config, configs=configs)\n\n    def reporter",
             "    raise RuntimeError('mutant')\n\n    def reporter",
             "every trial raises in its Ray worker (shows the workers import the copy)"),
    Mutation("search-sample-ignored", "orchestrator/tune/tuner.py",
             "self._resolve(sampled_values(trial.config))", "self._resolve({})",
             "every searched trial trains the search base, not the values the searcher proposed"),
    Mutation("failed-trial-exit-0", "orchestrator/tune/runner.py",
             "return 1 if (failed or self.num_errors or self.sink_errors or self.interrupted",
             "return 1 if (self.sink_errors or self.interrupted",
             "a sweep whose trial failed exits 0"),
    Mutation("early-end-labelled-completed", "orchestrator/tune/callback.py",
             "elif epochs >= planned_epochs:", "elif epochs >= 0:",
             "a trial that ends before its last epoch without a stop decision is 'completed'"),
    Mutation("asha-stop-labelled-completed", "orchestrator/tune/callback.py",
             "if trial.trial_id in stops:", "if False:",
             "an ASHA-stopped trial is labelled completed"),
    Mutation("asha-reason-wrong-rung", "orchestrator/tune/ray_compat.py",
             "return ascending.index(milestone) + 1,", "return ascending.index(milestone),",
             "the ASHA stop reason names the rung before the one that stopped the trial"),
    Mutation("asha-below-in-min-mode", "orchestrator/scheduling/asha.py",
             'relation = "below" if judging.mode == "max" else "above"', 'relation = "below"',
             "the ASHA stop reason says 'below' the cutoff in min mode"),
    # ---- arm-level early stopping (orchestrator/scheduling/: decisions.py, arm_scheduler.py) ----
    Mutation("halving-ranks-by-best-seed", "orchestrator/scheduling/decisions.py",
             "means = {a: _mean(list(v.values())) for a, v in values.items()}",
             "means = {a: (max if mode == 'max' else min)(v.values()) for a, v in values.items()}",
             "arms are ranked by their best seed instead of their mean over seeds"),
    Mutation("halving-keeps-too-few", "orchestrator/scheduling/decisions.py",
             "keep = max(1, math.ceil(len(ranked) / reduction_factor - 1e-9))",
             "keep = max(1, len(ranked) // int(reduction_factor) - 1)",
             "a rung keeps fewer arms than the top 1/eta"),
    Mutation("halving-stops-reference-arms", "orchestrator/scheduling/decisions.py",
             "        if arm in protected:\n"
             "            action, why = \"protected\", (f\"reference arm",
             "        if False:\n            action, why = \"protected\", (f\"reference arm",
             "the baseline and the base arm can be stopped like any other arm"),
    Mutation("arm-decides-on-arrived-seeds", "orchestrator/scheduling/arm_scheduler.py",
             "            if member in self._ended:\n                continue\n"
             "            return False",
             "            if member in self._ended:\n                continue\n"
             "            continue",
             "a rung is decided on the seeds that have arrived, not the whole seed groups"),
    # ---- seeds added until decided (orchestrator/tune/stages.py) ----
    Mutation("rule-seeds-a-whole-look", "orchestrator/tune/stages.py",
             "wanted - verdicts[(arm, ref)].seeds_paired):",
             "wanted):",
             "a question gets as many new seeds as its next look counts, not the ones it lacks"),
    Mutation("rule-seeds-stopped-arms", "orchestrator/tune/stages.py",
             "if v.needs_more and arm not in stopped and ref not in stopped}",
             "if v.needs_more}",
             "an arm stopped by early stopping is given more seeds"),
    Mutation("rule-unpaired-seeds", "orchestrator/tune/stages.py",
             "add.update({(arm, seed): None, (ref, seed): None})",
             "add.update({(arm, seed): None})",
             "an added seed runs for the question's arm but not its reference"),
    Mutation("rule-ignores-budget", "orchestrator/tune/stages.py",
             "    why = _over_budget(plan, ours, new)\n",
             "    why = ''\n",
             "a batch that does not fit run.budget is started anyway"),
]

# The test files that run first for a break in a file (Mutation.first): the ones written to
# catch it. The rest of the suite runs after them, so a survivor still faces every test.
FIRST_FOR = {
    "trainers/locality.py": ("tests/test_locality.py", "tests/test_locality_reference.py"),
    "trainers/backbones/": ("tests/test_locality_reference.py", "tests/test_architecture.py"),
    "trainers/registry.py": ("tests/test_architecture.py", "tests/test_registry.py"),
    TRAIN: ("tests/test_train.py",),
    "trainers/_engine.py": ("tests/test_train.py",),
    "orchestrator/scheduling/decisions.py": ("tests/test_racing.py",),
    "orchestrator/scheduling/asha.py": ("tests/test_asha_reasons.py",),
    "orchestrator/tune/ray_compat.py": ("tests/test_ray_compat.py", "tests/test_asha_reasons.py"),
    "orchestrator/scheduling/arm_scheduler.py": ("tests/test_arm_scheduler.py",),
    "orchestrator/sinks/parted.py": ("tests/test_parted.py", "tests/test_tables.py"),
    "orchestrator/tune/stages.py": ("tests/test_stages.py",),
    "orchestrator/tune/tuner.py": ("tests/test_plan.py",),
    "orchestrator/sinks/mlflow_store.py": ("tests/test_mlflow_store.py",),
    "orchestrator/": ("tests/test_tables.py", "tests/test_tracking.py", "tests/test_sweep.py",
                      "tests/test_arm_scheduler.py"),
}
MUTATIONS = [m if m.first else dataclasses.replace(
    m, first=next((t for prefix, t in FIRST_FOR.items() if m.path.startswith(prefix)), ()))
    for m in MUTATIONS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this mutation (repeatable; a prefix such as 'locality-' "
                        "selects every mutation starting with it)")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
    p.add_argument("--timeout", type=float, default=1200,
                   help="seconds per suite run before it counts as killed by timeout")
    p.add_argument("--record", action="store_true",
                   help="write the result into benchmarks/RESULTS.md (mutations section)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="first check that the unmutated copy passes (default: on for a full "
                        "run, off with --only)")
    p.add_argument("--untracked", action="store_true",
                   help="also copy untracked files that git does not ignore")
    p.add_argument("--rev", metavar="COMMIT",
                   help="copy this commit (git archive) instead of the working tree")
    p.add_argument("--tests", nargs="+", default=[], metavar="PATH",
                   help="run only these test files / node ids (development; a survivor is "
                        "only a survivor of the full suite)")
    p.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                   help="leave out a test that fails without any mutation (someone else's "
                        "unfinished work); recorded with the result")
    p.add_argument("--keep", action="store_true", help="keep the copies (for debugging)")
    args = p.parse_args(argv)

    by_name = {m.name: m for m in MUTATIONS}
    assert len(by_name) == len(MUTATIONS), "duplicate mutation names"
    if args.rev:
        # The commit the copies are made of, fixed now: HEAD may move while the run goes on.
        args.rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout.strip()
    source = Source.commit(args.rev) if args.rev else Source.working_tree(args.untracked)
    stale = []
    for m in MUTATIONS:
        try:
            check(m, source.read(m.path))
        except StaleMutation as exc:
            stale.append(str(exc))
    if args.list:
        for m in MUTATIONS:
            ok = "STALE" if any(s.startswith(m.name + ":") for s in stale) else "ok"
            print(f"{m.name:36s} {ok:5s} {m.path:28s} {m.what}")
        return 2 if stale else 0
    if stale:
        print("mutations whose find string no longer matches (fix them first):", file=sys.stderr)
        for s in stale:
            print("  " + s, file=sys.stderr)
        return 2

    selected = MUTATIONS
    if args.only:
        selected = [m for m in MUTATIONS
                    if any(m.name == o or (o.endswith("-") and m.name.startswith(o))
                           for o in args.only)]
        unknown = [o for o in args.only if not any(
            m.name == o or (o.endswith("-") and m.name.startswith(o)) for m in MUTATIONS)]
        if unknown:
            print(f"unknown mutation(s): {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the run like Ctrl-C
    return _run(args, source, selected, by_name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, source: Source, selected: list[Mutation],
         by_name: dict[str, Mutation]) -> int:
    started = time.monotonic()
    baseline = args.baseline if args.baseline is not None else not args.only
    if baseline:
        print("baseline: the unmutated copy must pass ...", flush=True)
        base = run_one(None, source, args.tests, args.deselect, args.timeout, args.keep)
        print(f"baseline: {base.status} in {base.seconds:.0f} s ({base.by})", flush=True)
        if base.status != "passed":
            print("\n".join(base.output.splitlines()[-60:]), file=sys.stderr)
            print("the suite fails without any mutation; every mutation would look killed",
                  file=sys.stderr)
            return 2

    outcomes: dict[str, Outcome] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [pool.submit(run_one, m, source, args.tests, args.deselect, args.timeout,
                               args.keep)
                   for m in selected]
        for fut in concurrent.futures.as_completed(futures):
            o = fut.result()
            outcomes[o.name] = o
            print(f"{o.status:9s} {o.seconds:6.0f} s  {o.name}  ({o.by})", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping the running suites", file=sys.stderr)
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        pool.shutdown(wait=True)    # the workers remove their copies
        return 130
    pool.shutdown()
    ordered = [outcomes[m.name] for m in selected]
    wall = time.monotonic() - started
    print()
    print(table(ordered, by_name))
    survivors = [o.name for o in ordered if o.status == "survived"]
    unexpected = [n for n in survivors if not by_name[n].pending]
    print(f"\n{len(ordered) - len(survivors)} of {len(ordered)} killed in {wall / 60:.1f} min; "
          f"survivors: {', '.join(survivors) or 'none'}")
    if args.record:
        if args.tests:
            print("not recorded: --record needs the full suite (no --tests)", file=sys.stderr)
            return 2
        record(ordered, by_name, wall=wall, rev=args.rev, deselected=args.deselect)
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
