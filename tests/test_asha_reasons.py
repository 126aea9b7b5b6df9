"""Per-trial ASHA's stop reasons (orchestrator/scheduling/asha.py) on Ray's real ASHAScheduler:
the rung named is the one that judged the result (rungs at epochs 1, 2, 4 are rung-1, -2, -3), the
relation follows the mode (a loss is *above* its cutoff, an accuracy *below*), and the cutoff is
shown in the metric's own sign."""

import pytest
from ray.tune.experiment import Trial

from orchestrator.scheduling.asha import RecordingASHA

# Six trials report epochs 1-3 in turn; the values are a loss (lower is better).
CURVES = {"t0": [1.0, 0.5, 0.4], "t1": [1.1, 0.45, 0.3], "t2": [1.2, 0.9, 0.8],
          "t3": [0.9, 0.95, 0.2], "t4": [2.0, 2.0, 2.0], "t5": [1.0, 1.5, 1.4]}


def drive(mode: str, metric: str, sign: float) -> dict[str, str]:
    asha = RecordingASHA(time_attr="epoch", metric=metric, mode=mode, grace_period=1,
                         reduction_factor=2, max_t=8)
    trials = [Trial("__fake", config={}, stub=True, trial_id=k) for k in CURVES]
    for t in trials:
        asha.on_trial_add(None, t)
    for epoch in (1, 2, 3):
        for t in trials:
            if t.trial_id in asha.stop_reasons:
                continue
            action = asha.on_trial_result(None, t, {"epoch": epoch,
                                                    metric: sign * CURVES[t.trial_id][epoch - 1]})
            assert (action == "STOP") == (t.trial_id in asha.stop_reasons)
    return asha.stop_reasons


@pytest.mark.parametrize("mode,metric,sign,relation", [
    ("min", "val/loss", 1.0, "above"), ("max", "val/score", -1.0, "below")])
def test_stop_reasons_name_the_rung_the_relation_and_the_cutoff(mode, metric, sign, relation):
    reasons = drive(mode, metric, sign)

    def shown(x: float) -> str:
        return f"{sign * x:.4g}"

    assert reasons == {
        "t1": f"asha: {metric}={shown(1.1)} {relation} rung-1 cutoff {shown(1.0)} at epoch 1",
        "t2": f"asha: {metric}={shown(1.2)} {relation} rung-1 cutoff {shown(1.05)} at epoch 1",
        "t4": f"asha: {metric}={shown(2.0)} {relation} rung-1 cutoff {shown(1.05)} at epoch 1",
        "t3": f"asha: {metric}={shown(0.95)} {relation} rung-2 cutoff {shown(0.5)} at epoch 2",
        "t5": f"asha: {metric}={shown(1.5)} {relation} rung-2 cutoff {shown(0.725)} at epoch 2",
    }
