"""Arm-level decisions at a rung: pure functions of frozen per-seed values, and their log.

An arm is a config without its seed; every arm runs the same seeds, so arms are compared seed by
seed (paired, common random numbers). A rung is an epoch milestone `grace x eta^k` below max_t. A
seed's value at a rung is its metric at its first report with `epoch >= milestone`, frozen after
that. Nothing here knows Ray: `arm_scheduler.ArmScheduler` feeds values in and carries decisions
out, and replaying the same values gives the same decisions (no RNG, no arrival order, ties broken
by the arm's position in the plan).

Two rules (irace / F-Race and successive halving are the models):

- `halving`: once every live arm's seeds have reached the rung (or ended), rank the arms by their
  mean over seeds; the best ceil(n / eta) go on, the others stop with all their seeds. Reference
  arms are never stopped. Deterministic because it waits for the whole cohort, as HyperBand and
  SMAC's successive halving do; it trades error control for a guaranteed budget.
- `paired-test`: once an arm's and its reference's seeds have reached the rung, stop the arm when
  a one-sided paired t-test rejects "arm >= reference - margin" at `confidence`
  (`d + t_{conf,n-1} s_d / sqrt(n) < -margin`), irace's racing test. With 3 seeds its power is low
  (about 0.32 for a 1-SD effect at 0.95), it assumes normal differences, and with R rungs the
  chance of stopping an arm that is not worse grows to 1 - confidence^R.

A NaN or infinite value stops a non-reference arm as diverged (irace rejects infinite costs at
once). Fewer than 2 paired seeds never stop an arm under `paired-test`.

The log: `rungs.parquet` (one row per seed x rung) and `decisions.parquet` (one row per arm x
rung) in the sweep's folder, written atomically as values and decisions happen. Ray Tune does not
save a scheduler with its experiment (ray#30838), so `--resume` rebuilds the scheduler from them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator._files import atomic_write_bytes
from orchestrator.layout import DECISIONS_FILE, RUNGS_FILE

__all__ = [
    "DECISIONS_FILE",
    "RUNGS_FILE",
    "Decision",
    "RungValue",
    "decide_halving",
    "decide_paired",
    "milestones",
    "read_log",
    "write_decisions",
    "write_rungs",
]



@dataclass(frozen=True)
class RungValue:
    arm: str
    seed: int
    trial_key: str
    rung: int            # 1-based
    milestone: int       # the rung's epoch
    epoch: int           # the epoch of the report the value comes from (>= milestone)
    value: float


@dataclass(frozen=True)
class Decision:
    rung: int
    milestone: int
    arm: str
    reference: str
    rule: str                      # halving | paired-test
    action: str                    # promote | stop | protected
    n: int                         # seeds with a value at this rung
    arm_mean: float
    cutoff: float | None           # halving: mean of the last arm that goes on
    n_pairs: int                   # seeds the arm and its reference share at this rung
    diff_mean: float | None        # arm - reference, signed so that > 0 is better
    diff_sd: float | None
    t_stat: float | None
    p_value: float | None          # one-sided, "arm is worse than reference - margin"
    reason: str


def milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Rung epochs ceil(grace x eta^k) below max_t (the last epoch is not a rung: every trial
    there has ended)."""
    out: list[int] = []
    k = 0
    while True:
        m = math.ceil(grace_period * reduction_factor ** k - 1e-9)
        if m >= max_t:
            return out
        if not out or m > out[-1]:
            out.append(m)
        k += 1


def _better(mode: str) -> int:
    return 1 if mode == "max" else -1


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values and _finite(values) else math.nan


def _paired(arm: Mapping[int, float], ref: Mapping[int, float], sign: int) -> list[float]:
    """d_s = sign x (arm_s - ref_s) over the seeds both have, in seed order."""
    return [sign * (arm[s] - ref[s]) for s in sorted(set(arm) & set(ref))]


def _diff_stats(diffs: Sequence[float], margin: float
                ) -> tuple[float | None, float | None, float | None, float | None]:
    """(mean, sd, t, one-sided p of H0 'mean diff >= -margin') of paired differences."""
    if not diffs or not _finite(diffs):
        return None, None, None, None
    d = statistics.fmean(diffs)
    if len(diffs) < 2:
        return d, None, None, None
    sd = statistics.stdev(diffs)
    if sd <= 1e-12:     # equal differences up to rounding: irace's zero-variance rule
        return d, 0.0, None, (0.0 if d < -margin else 1.0)
    # SciPy (a second to import) only where a rung compares seeds: the sweep command imports
    # this module at its start, bad input and dry runs included.
    from scipy import stats

    res = stats.ttest_1samp([x + margin for x in diffs], 0.0, alternative="less")
    return d, sd, float(res.statistic), float(res.pvalue)


def _fmt(x: float | None) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}"


def decide_halving(*, rung: int, milestone: int, values: Mapping[str, Mapping[int, float]],
                   order: Sequence[str], references: Mapping[str, str],
                   protected: Sequence[str], reduction_factor: float, mode: str, metric: str,
                   margin: float = 0.0) -> list[Decision]:
    """One decision per arm in `values` (the live arms with a value at this rung).

    Arms are ranked by mean over seeds (NaN last), ties by position in `order`; the best
    ceil(n / eta) go on; protected arms always go on; diverged arms stop unless protected.
    """
    sign = _better(mode)
    pos = {a: i for i, a in enumerate(order)}
    means = {a: _mean(list(v.values())) for a, v in values.items()}
    ranked = sorted(values, key=lambda a: (not math.isfinite(means[a]),
                                           -sign * means[a] if math.isfinite(means[a]) else 0.0,
                                           pos.get(a, len(pos))))
    keep = max(1, math.ceil(len(ranked) / reduction_factor - 1e-9))
    cutoff = means[ranked[keep - 1]]
    relation = "below" if mode == "max" else "above"
    out = []
    for rank, arm in enumerate(ranked):
        ref = references.get(arm)
        diffs = _paired(values[arm], values.get(ref, {}), sign) if ref else []
        d, sd, t, p = _diff_stats(diffs, margin)
        mean = means[arm]
        if arm in protected:
            action, why = "protected", (f"reference arm: never stopped (rank {rank + 1} of "
                                        f"{len(ranked)})")
        elif not math.isfinite(mean):
            action, why = "stop", (f"arm: {arm} diverged: {metric} is not finite at rung-{rung} "
                                   f"(epoch {milestone})")
        elif rank < keep:
            action, why = "promote", f"rank {rank + 1} of {len(ranked)} (best {keep} go on)"
        else:
            action, why = "stop", (
                f"arm: {arm} mean {metric}={_fmt(mean)} over {len(values[arm])} seeds {relation} "
                f"rung-{rung} cutoff {_fmt(cutoff)} at epoch {milestone} (rank {rank + 1} of "
                f"{len(ranked)}; the best {keep} go on)")
        out.append(Decision(rung=rung, milestone=milestone, arm=arm, reference=ref or "",
                            rule="halving", action=action, n=len(values[arm]), arm_mean=mean,
                            cutoff=cutoff, n_pairs=len(diffs), diff_mean=d, diff_sd=sd, t_stat=t,
                            p_value=p, reason=why))
    return out


def decide_paired(*, rung: int, milestone: int, arm: str, reference: str,
                  arm_values: Mapping[int, float], ref_values: Mapping[int, float],
                  protected: Sequence[str], confidence: float, margin: float, mode: str,
                  metric: str) -> Decision:
    """Stop `arm` iff the one-sided paired t-test says it is worse than `reference` by more than
    `margin` at `confidence` (or it diverged); protected arms always go on."""
    sign = _better(mode)
    values = list(arm_values.values())
    mean = _mean(values)
    diffs = _paired(arm_values, ref_values, sign)
    d, sd, t, p = _diff_stats(diffs, margin)
    alpha = 1.0 - confidence
    if arm in protected:
        action, why = "protected", "reference arm: never stopped"
    elif not _finite(values):
        action, why = "stop", (f"arm: {arm} diverged: {metric} is not finite at rung-{rung} "
                               f"(epoch {milestone})")
    elif len(diffs) < 2:
        action, why = "promote", (f"only {len(diffs)} seed(s) paired with {reference}: too few "
                                  f"for a paired test, never stopped")
    elif p is not None and p < alpha:
        shown = f"p={p:.3g}" if t is not None else "every seed worse, zero variance"
        action, why = "stop", (
            f"arm: {arm} worse than {reference} at rung-{rung} (epoch {milestone}): {metric} "
            f"difference {_fmt(d)} ± {_fmt(sd)} (sd) over {len(diffs)} paired seeds, one-sided "
            f"paired t-test {shown} < {alpha:.3g}"
            + (f" with margin {margin:g}" if margin else ""))
    else:
        action, why = "promote", (f"not shown worse than {reference}: difference {_fmt(d)}, "
                                  f"p={_fmt(p)} >= {alpha:.3g}")
    return Decision(rung=rung, milestone=milestone, arm=arm, reference=reference,
                    rule="paired-test", action=action, n=len(values), arm_mean=mean, cutoff=None,
                    n_pairs=len(diffs), diff_mean=d, diff_sd=sd, t_stat=t, p_value=p, reason=why)


# ------------------------------------------------------------------------------------------ log

def _schema(cls):
    kinds = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(),
             "float | None": pa.float64()}
    return pa.schema([pa.field(f.name, kinds[str(f.type)]) for f in fields(cls)])


def _write(path: Path, cls, rows: Sequence) -> None:
    table = pa.Table.from_pylist([asdict(r) for r in rows], schema=_schema(cls))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


def write_rungs(directory: str | Path, rows: Sequence[RungValue]) -> None:
    _write(Path(directory) / RUNGS_FILE, RungValue, rows)


def write_decisions(directory: str | Path, rows: Sequence[Decision]) -> None:
    _write(Path(directory) / DECISIONS_FILE, Decision, rows)


def read_log(directory: str | Path) -> tuple[list[RungValue], list[Decision]]:
    """The rung values and decisions recorded in `directory` (empty lists if none yet)."""
    out: list[list] = []
    for name, cls in ((RUNGS_FILE, RungValue), (DECISIONS_FILE, Decision)):
        path = Path(directory) / name
        rows = pq.read_table(path).to_pylist() if path.is_file() else []
        out.append([cls(**row) for row in rows])
    return out[0], out[1]
