"""Arm-level early stopping on Ray Tune: the seeds of an arm go on or stop together.

Ray's ASHA judges each trial on its own and by arrival order, so it stops some seeds of an arm and
keeps others, and the survivors depend on timing. `ArmScheduler` is a Tune `TrialScheduler` that
decides whole arms at rungs from frozen per-seed values (`rungs.py`), rung-synchronously like
HyperBand: a seed that reaches a rung before its arm can be decided is paused (with its
checkpoint) and waits; the report that completes the group decides, stops every seed of a losing
arm together (`stop_reasons` says why) and lets the winners' paused seeds resume. Reference arms
never wait and never stop.

How it fits Ray Tune 2.60 (the pitfalls: docs/design.md, "The arm scheduler"):
- Tune's `max_concurrent_trials` counts paused trials as live and would deadlock a group that is
  waiting for seeds never started, so the runner leaves it unset and this scheduler caps
  concurrency itself: every new, re-queued or restored trial is parked (PAUSED, the way Tune's
  own schedulers set statuses) when first seen, and `choose_trial_to_run` releases parked and
  promoted trials one at a time while fewer than `max_concurrent` run (`_priority` says which).
- Trials are keyed by (arm, seed) from their config, so a retried trial (Tune calls
  `on_trial_error`, then `on_trial_add` again) is the same member; a failure decides nothing until
  the next step, when a retried seed is back and a seed that failed for good no longer blocks its
  arm (its arm is judged on the seeds left).
- Tune does not save schedulers (ray#30838): every rung value and decision goes to Parquet in the
  sweep's folder as it happens, and a restored scheduler rebuilds itself from that log, pausing
  restored seeds that were waiting at a rung and stopping those of arms already stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from orchestrator.scheduling import decisions as rungs
from orchestrator.scheduling.decisions import Decision, RungValue

__all__ = ["ArmScheduler"]

Member = tuple[str, int]          # (arm, seed)


class ArmScheduler(TrialScheduler):
    """Successive halving (or a paired-test race) over arms; see the module docstring."""

    _metric: str  # given to __init__ (TrialScheduler's may be None until Tune sets it)

    def __init__(self, *, metric: str, mode: str, time_attr: str, max_t: int,
                 grace_period: int, reduction_factor: float, rule: str = "halving",
                 confidence: float = 0.95, margin: float = 0.0, arms: Sequence[str],
                 seeds: Sequence[int] | Mapping[str, Sequence[int]],
                 references: Mapping[str, str],
                 protected: Sequence[str], max_concurrent: int | None = None,
                 log_dir: str | None = None, ended: Sequence[tuple[str, int]] = ()) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max' but got {mode!r}")
        if rule not in ("halving", "paired-test"):
            raise ValueError(f"rule must be 'halving' or 'paired-test' but got {rule!r}")
        self._metric, self._mode, self._time_attr = metric, mode, time_attr
        self._rule, self._confidence, self._margin = rule, confidence, margin
        self._eta = reduction_factor
        self._milestones = rungs.milestones(grace_period, reduction_factor, max_t)
        self._arms = list(arms)
        # Each arm's seeds (the same for every arm, or per arm when a rule added seeds to some).
        self._seeds = ({str(a): [int(s) for s in seeds.get(a, ())] for a in self._arms}
                       if isinstance(seeds, Mapping)
                       else {a: [int(s) for s in seeds] for a in self._arms})
        self._references = dict(references)
        self._protected = tuple(protected)
        self._cap = max_concurrent or math.inf
        self._log_dir = log_dir
        # Seeds a grown sweep kept from its earlier experiment: ended, never waited for (their
        # rung values are in the log, unless they ran under per-trial ASHA with one seed).
        self._ended_before = [(str(a), int(seed)) for a, seed in ended]
        self._reset()

    def _reset(self) -> None:
        self.stop_reasons: dict[str, str] = {}               # tune trial id -> why it stopped
        self._values: dict[Member, dict[int, RungValue]] = {}
        self._decisions: dict[tuple[str, int], Decision] = {}
        self._stopped: dict[str, Decision] = {}              # arm -> the decision that stopped it
        self._trials: dict[Member, Trial] = {}
        self._ended: dict[Member, str] = {}                  # member -> completed | failed
        self._errored: set[Member] = set()                   # failed, maybe to be retried
        # Trials told to pause or stop, or past their last epoch: still RUNNING while Tune saves
        # and stops them, but their slot is free (the next trial is staged in time to reuse the
        # actor; Tune caches a finished trial's actor only for a trial already staged).
        self._leaving: set[str] = set()
        self._loaded = False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the scheduler with the Tuner once, before anything ran: runtime state
        # (trial objects, values) never travels; a restored scheduler reads the log instead.
        state = self.__dict__.copy()
        for key in ("stop_reasons", "_values", "_decisions", "_stopped", "_trials", "_ended",
                    "_errored", "_leaving", "_loaded"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- Tune's interface ------------------------------------------------------------------------
    @property
    def metric(self) -> str:
        """The metric Tune checks every result for (TrialScheduler's public property)."""
        return self._metric

    @property
    def supports_buffered_results(self) -> bool:
        """False: one result per report, as Ray's HyperBand asks, since each may decide a rung
        (Tune reads this property before it runs the trials)."""
        return False

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return (metric in (None, self._metric)) and (mode in (None, self._mode))

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()
        member = self._member(trial)
        self._trials[member] = trial
        self._errored.discard(member)
        if trial.status == Trial.TERMINATED:
            # A finished trial of an earlier driver: done, or stopped with its arm.
            self._ended.setdefault(member, "stopped" if member[0] in self._stopped
                                   else "completed")
            return
        self._ended.pop(member, None)
        if trial.status == Trial.PENDING:
            # Tune files a trial by its status right after this call: parked (PAUSED) trials
            # start only when choose_trial_to_run releases them. Tune names a trial's folder
            # when it stages it; a parked trial gets it now (an interrupted sweep's result grid
            # reads every trial's folder).
            trial.init_local_path()
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        member = self._member(trial)
        epoch = result.get(self._time_attr)
        if epoch is None:
            return TrialScheduler.CONTINUE
        epoch = int(epoch)
        value = result.get(self._metric)
        self._record(member, trial, epoch, math.nan if value is None else float(value))
        self._decide_all(tune_controller, current=trial)
        action = TrialScheduler.CONTINUE
        if member[0] in self._stopped:
            self._note_stop(trial)
            action = TrialScheduler.STOP
        elif (rung := self._rung_at(epoch)) and self._waits(member[0], rung):
            action = TrialScheduler.PAUSE
        if action != TrialScheduler.CONTINUE or epoch >= self._planned_epochs(trial):
            self._leaving.add(trial.trial_id)
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        member = self._member(trial)
        if member[0] not in self._stopped:
            self._ended[member] = "completed"
        self._decide_all(tune_controller)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        # Decided at the next step: by then a retried trial is back through on_trial_add.
        self._errored.add(self._member(trial))

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        member = self._member(trial)
        if member[0] not in self._stopped:
            self._ended[member] = "completed" if self._done(trial) else "failed"
        self._decide_all(tune_controller)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        self._load()
        for member in list(self._errored):
            trial = self._trials.get(member)
            if trial is None or trial.status in (Trial.ERROR, Trial.TERMINATED):
                self._ended[member] = "failed"
                self._errored.discard(member)
        self._decide_all(tune_controller)
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status in (Trial.PENDING, Trial.PAUSED) and self._member(trial)[0] in \
                    self._stopped:
                self._note_stop(trial)
                tune_controller.stop_trial(trial)
        # Every PENDING trial was released here (new ones are parked in on_trial_add).
        self._leaving = {t.trial_id for t in trials
                         if t.trial_id in self._leaving and t.status == Trial.RUNNING}
        active = sum(1 for t in trials if t.status in (Trial.RUNNING, Trial.PENDING)
                     and t.trial_id not in self._leaving)
        if active >= self._cap:
            return None
        candidates = [t for t in trials if t.status == Trial.PAUSED and self._may_start(t)]
        return min(candidates, key=self._priority) if candidates else None

    def debug_string(self) -> str:
        live = [a for a in self._arms if a not in self._stopped]
        return (f"ArmScheduler({self._rule}): rungs at epochs {self._milestones}, "
                f"{len(live)} of {len(self._arms)} arms live")

    # -- state -----------------------------------------------------------------------------------
    def _member(self, trial: Trial) -> Member:
        t = trial.config["trial"]
        return str(t["arm"]), int(t["seed"])

    def _epoch(self, trial: Trial) -> int:
        return int((trial.last_result or {}).get(self._time_attr) or 0)

    def _planned_epochs(self, trial: Trial) -> int:
        t = trial.config["trial"]
        # A sweep started before the configs moved out of Tune's config carries them inline.
        return int(t["epochs"] if "epochs" in t else t["config"]["train"]["epochs"])

    def _done(self, trial: Trial) -> bool:
        return self._epoch(trial) >= self._planned_epochs(trial)

    def _rung_at(self, epoch: int) -> int:
        """The highest rung (1-based) whose milestone `epoch` has reached; 0 before the first."""
        return sum(1 for m in self._milestones if epoch >= m)

    def _record(self, member: Member, trial: Trial, epoch: int, value: float) -> None:
        recorded = self._values.setdefault(member, {})
        new = False
        for rung, milestone in enumerate(self._milestones, start=1):
            if epoch >= milestone and rung not in recorded:
                recorded[rung] = RungValue(arm=member[0], seed=member[1],
                                           trial_key=str(trial.config["trial"]["key"]),
                                           rung=rung, milestone=milestone, epoch=epoch,
                                           value=value)
                new = True
        if new and self._log_dir:
            rows = [v for m in sorted(self._values) for v in self._values[m].values()]
            rungs.write_rungs(self._log_dir, rows)

    def _priority(self, trial: Trial) -> tuple:
        """Arms that can be stopped first (their decisions free the most budget; reference arms
        never pause, so they fill the slots while others wait at a rung), then the least
        advanced, then plan order (seed-major)."""
        arm, seed = self._member(trial)
        pos = self._arms.index(arm) if arm in self._arms else len(self._arms)
        return arm in self._protected, self._epoch(trial), seed, pos

    def _may_start(self, trial: Trial) -> bool:
        """A paused trial may (re)start unless its arm stopped or it waits at its rung."""
        arm = self._member(trial)[0]
        rung = self._rung_at(self._epoch(trial))
        return arm not in self._stopped and not (rung and self._waits(arm, rung))

    def _waits(self, arm: str, rung: int) -> bool:
        """Whether a seed of `arm` at `rung` must wait for the arm's decision there. Under
        halving, an arm added to a grown study after its cohort was cut at `rung` is not judged
        there: the logged cut stands and is not remade (docs/design.md, "Growing a study")."""
        if arm in self._protected or (arm, rung) in self._decisions:
            return False
        return not (self._rule == "halving" and any(r == rung for _, r in self._decisions))

    def _rung_values(self, arm: str, rung: int) -> dict[int, float]:
        return {seed: v[rung].value for (a, seed), v in self._values.items()
                if a == arm and rung in v}

    def _group_complete(self, arm: str, rung: int) -> bool:
        """Every seed of `arm` has a value at `rung` or has ended (done or failed for good)."""
        for seed in self._seeds.get(arm, ()):
            member = (arm, seed)
            if rung in self._values.get(member, {}):
                continue
            if member in self._ended:
                continue
            return False
        return True

    # -- decisions -------------------------------------------------------------------------------
    def _decide_all(self, tune_controller: Any, current: Trial | None = None) -> None:
        """Make every decision whose groups are complete, rung by rung; then act on them."""
        if self._errored:
            return      # a failed seed may be retried: decide once Tune has said (next step)
        made: list[Decision] = []
        for rung, milestone in enumerate(self._milestones, start=1):
            live = [a for a in self._arms if a not in self._stopped]
            if self._rule == "halving":
                new = self._halving(rung, milestone, live)
                if new is None:
                    break       # later rungs wait for this one
            else:
                new = self._paired(rung, milestone, live)
            for decision in new:
                self._decisions[(decision.arm, decision.rung)] = decision
                if decision.action == "stop":
                    self._stopped.setdefault(decision.arm, decision)
            made += new
        if not made:
            return
        if self._log_dir:
            rungs.write_decisions(self._log_dir, sorted(
                self._decisions.values(), key=lambda d: (d.rung, self._arms.index(d.arm))))
        for member, trial in list(self._trials.items()):
            if trial is not current and member[0] in self._stopped \
                    and trial.status in (Trial.PAUSED, Trial.PENDING):
                self._note_stop(trial)
                tune_controller.stop_trial(trial)

    def _halving(self, rung: int, milestone: int, live: list[str]) -> list[Decision] | None:
        """The rung's decisions ([] if made already), or None while a live arm's group is open."""
        if any((a, rung) in self._decisions for a in live):
            return []
        if not all(self._group_complete(a, rung) for a in live):
            return None
        values = {a: v for a in live if (v := self._rung_values(a, rung))}
        if not values:
            return []
        return rungs.decide_halving(
            rung=rung, milestone=milestone, values=values, order=self._arms,
            references=self._references, protected=self._protected,
            reduction_factor=self._eta, mode=self._mode, metric=self._metric, margin=self._margin)

    def _paired(self, rung: int, milestone: int, live: list[str]) -> list[Decision]:
        out = []
        for arm in live:
            ref = self._references.get(arm)
            if ref is None or (arm, rung) in self._decisions:
                continue
            if not (self._group_complete(arm, rung) and self._group_complete(ref, rung)):
                continue
            arm_values = self._rung_values(arm, rung)
            if arm_values:
                out.append(rungs.decide_paired(
                    rung=rung, milestone=milestone, arm=arm, reference=ref,
                    arm_values=arm_values, ref_values=self._rung_values(ref, rung),
                    protected=self._protected, confidence=self._confidence,
                    margin=self._margin, mode=self._mode, metric=self._metric))
        return out

    def _note_stop(self, trial: Trial) -> None:
        self.stop_reasons[trial.trial_id] = self._stopped[self._member(trial)[0]].reason

    def _load(self) -> None:
        """Rebuild values and decisions from the sweep's log (once, before the first event)."""
        if self._loaded:
            return
        self._loaded = True
        for member in self._ended_before:
            self._ended.setdefault(member, "completed")
        if not self._log_dir:
            return
        values, decisions = rungs.read_log(self._log_dir)
        for v in values:
            self._values.setdefault((v.arm, int(v.seed)), {})[int(v.rung)] = v
        for d in decisions:
            self._decisions[(d.arm, int(d.rung))] = d
            if d.action == "stop":
                self._stopped.setdefault(d.arm, d)
