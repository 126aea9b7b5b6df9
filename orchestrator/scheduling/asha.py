"""ASHA that remembers why it stopped each trial.

Ray's ASHAScheduler returns STOP and forgets: the stopped trial then looks exactly like a finished
one (to Tune's result grid and to MLflow). This subclass asks the trial's bracket, before Ray
decides, which rung the result is about to be judged at and what that rung's cutoff is (Ray has
no public API for either: `_ray_compat.asha_pending_rung`), and when the decision is STOP before
max_t it records a reason such as `asha: val/top1=0.41 below rung-2 cutoff 0.63 at epoch 3`. The
driver's callback reads the reasons by trial id, so the outcome is `stopped` with that reason,
never `completed`.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from orchestrator.tune.ray_compat import asha_judging, asha_pending_rung

__all__ = ["RecordingASHA"]


class RecordingASHA(ASHAScheduler):
    """ASHAScheduler + `stop_reasons: dict[trial_id, str]` for early (before max_t) stops."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_reasons: dict[str, str] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        judging = asha_judging(self)
        t = result.get(judging.time_attr)
        pending = None
        if t is not None and judging.metric in result and t < judging.max_t:
            pending = asha_pending_rung(self, trial.trial_id, t)
        action = super().on_trial_result(tune_controller, trial, result)
        rung, cutoff = pending if pending is not None else (0, None)
        # (t and Ray's sign are set whenever there is a pending rung: said for the checker)
        if (action == TrialScheduler.STOP and cutoff is not None and t is not None
                and judging.sign is not None):
            value = float(result[judging.metric])
            # Ray compares sign * value; report both in the metric's own sign.
            shown_cutoff = cutoff * judging.sign
            relation = "below" if judging.mode == "max" else "above"
            self.stop_reasons[trial.trial_id] = (
                f"asha: {judging.metric}={value:.4g} {relation} rung-{rung} cutoff "
                f"{shown_cutoff:.4g} at epoch {int(t)}"
            )
        return action
