"""ASHA that remembers why it stopped each trial.

Ray's ASHAScheduler returns STOP and forgets: the stopped trial then looks exactly like a finished
one (to Tune's result grid and to MLflow). This subclass asks the trial's bracket, before Ray
decides, which rung the result is about to be judged at and what that rung's cutoff is, and when
the decision is STOP before max_t it records a reason such as
`asha: val/top1=0.41 below rung-2 cutoff 0.63 at epoch 3`. The driver's callback reads the
reasons by trial id, so the outcome is `stopped` with that reason, never `completed`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

__all__ = ["RecordingASHA"]


class RecordingASHA(ASHAScheduler):
    """ASHAScheduler + `stop_reasons: dict[trial_id, str]` for early (before max_t) stops."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_reasons: dict[str, str] = {}

    def _pending_rung(self, trial_id: str, t: float) -> tuple[int, float | None] | None:
        """(1-based rung number, cutoff) the result at time `t` will be judged at, if any."""
        bracket = self._trial_info.get(trial_id)
        if bracket is None:
            return None
        ascending = sorted(milestone for milestone, _ in bracket._rungs)
        for milestone, recorded in bracket._rungs:          # descending milestones, as Ray walks
            if t < milestone or trial_id in recorded:
                continue
            cutoff = bracket.cutoff(recorded)
            return ascending.index(milestone) + 1, (None if cutoff is None else float(cutoff))
        return None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        t = result.get(self._time_attr)
        pending = None
        if t is not None and self._metric in result and t < self._max_t:
            pending = self._pending_rung(trial.trial_id, t)
        action = super().on_trial_result(tune_controller, trial, result)
        rung, cutoff = pending if pending is not None else (0, None)
        # (t and Ray's metric_op are set whenever there is a pending rung: said for the checker)
        if (action == TrialScheduler.STOP and cutoff is not None and t is not None
                and self._metric_op is not None):
            value = float(result[self._metric])
            # Ray compares metric_op * value; report both in the metric's own sign.
            shown_cutoff = cutoff * self._metric_op
            relation = "below" if self._mode == "max" else "above"
            self.stop_reasons[trial.trial_id] = (
                f"asha: {self._metric}={value:.4g} {relation} rung-{rung} cutoff "
                f"{shown_cutoff:.4g} at epoch {int(t)}"
            )
        return action
