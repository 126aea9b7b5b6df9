"""The sweep spec's types: one YAML file as a frozen pydantic model, checked field by field.

A spec has four roles (docs/design.md): `base` (the fixed trial config), the design (`baseline`,
`axes`, `arms`, `design`, `seeds`), `search` (metric, ASHA, an optional Optuna space) and `run`
(resources, concurrency, storage). Checks across fields are in `orchestrator.spec.load`; whether
every planned trial is a valid training run (model exists, layer range fits, ...) is checked by
`orchestrator.plan.design.build_plan`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.spec.questions import check_compare
from trainers.config import TrainConfig, train_config_from_dict

__all__ = ["TUNE_STORAGE_SCHEMES", "AshaSpec", "BudgetSpec", "DomainSpec", "OptunaSpec",
           "ResourcesSpec", "RunSpec", "SchedulerSpec", "SearchSpec", "SeedRule", "SweepSpec"]

class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class AshaSpec(_Strict):
    """Successive halving in epochs: rungs at grace_period x reduction_factor^k below max_t (the
    trial config's train.epochs).

    `unit` says what is judged at a rung. `arm` (the default for a designed study with more than
    one seed): whole arms, on their mean over seeds, once every live arm's seeds have reached the
    rung; an arm goes on or stops with all its seeds, and the reference arms (baseline, base arm,
    every arm named in `references`) always go on (orchestrator/scheduling/arm_scheduler.py).
    `trial` (the default for a search or a single seed): Ray's asynchronous ASHA, each trial on its
    own. `rule` (arm unit only): `halving` keeps the top 1/reduction_factor of the live arms at each
    rung; `paired-test` stops an arm when a one-sided paired t-test over its seeds says it is worse
    than its reference by more than `margin` (metric units) at `confidence`.
    """

    grace_period: int = Field(default=1, gt=0, le=100_000)
    reduction_factor: float = Field(default=3, gt=1)
    unit: Literal["auto", "arm", "trial"] = "auto"
    rule: Literal["halving", "paired-test"] = "halving"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    margin: float = Field(default=0.0, ge=0.0)


class SchedulerSpec(_Strict):
    asha: AshaSpec | None = None


class OptunaSpec(_Strict):
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(default=0, ge=0)


class AlgorithmSpec(_Strict):
    optuna: OptunaSpec | None = None


_DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


class DomainSpec(_Strict):
    """One searched key: exactly one of the five kinds."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    grid: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    # Inclusive bounds [low, high].
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DomainSpec:
        given = [k for k in _DOMAINS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_DOMAINS)} (got {given or 'none'})")
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind} needs [low, high] with low < high but got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform needs low > 0 but got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _DOMAINS if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        return getattr(self, self.kind)


class SearchSpec(_Strict):
    metric: str = "val/top1"
    mode: Literal["max", "min"] = "max"
    # `none` (or null) runs every trial to train.epochs; {asha: {...}} stops hopeless ones early.
    scheduler: Literal["none"] | None | SchedulerSpec = None
    # Hyper-parameters to search (dotted TrainConfig keys); empty for a planned design.
    space: dict[str, DomainSpec] = Field(default_factory=dict)
    algorithm: Literal["none"] | None | AlgorithmSpec = None
    # Samples drawn from `space` (each grid point counts once per sample without an algorithm).
    num_samples: int = Field(default=1, gt=0, le=100_000)

    @property
    def asha(self) -> AshaSpec | None:
        return self.scheduler.asha if isinstance(self.scheduler, SchedulerSpec) else None

    @property
    def optuna(self) -> OptunaSpec | None:
        return self.algorithm.optuna if isinstance(self.algorithm, AlgorithmSpec) else None


# URI schemes pyarrow (and so Ray Tune) can store an experiment at.
TUNE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")


class ResourcesSpec(_Strict):
    cpu: float = Field(default=1, gt=0)
    # Fractional GPUs (0.5) pack several trials on one device.
    gpu: float = Field(default=0, ge=0)


class BudgetSpec(_Strict):
    """The most a study that adds seeds (`seeds: {start, max}`) may spend; exactly one of:
    `trial_epochs` (epochs summed over its trials, stopped ones counting the epochs they ran) or
    `gpu_hours` (trial wall time x GPUs per trial). A batch of added seeds starts only if the
    spent amount plus the batch's most (its trials x train.epochs; for GPU-hours at the mean
    hours per trial-epoch so far) fits."""

    trial_epochs: int | None = Field(default=None, gt=0)
    gpu_hours: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSpec:
        if (self.trial_epochs is None) == (self.gpu_hours is None):
            raise ValueError("give exactly one of trial_epochs or gpu_hours")
        return self


class RunSpec(_Strict):
    resources_per_trial: ResourcesSpec = Field(default_factory=ResourcesSpec)
    # None: as many as the cluster's resources allow.
    max_concurrent: int | None = Field(default=None, gt=0)
    storage: str = "./sweeps"
    # Where Ray Tune keeps the experiment state and the trials' checkpoints. None: the sweep's
    # own folder (`<storage>/<name>/tune`), which only one machine sees. On a cluster of several
    # nodes it must be storage every node reaches: a shared mount, or an s3:// / gs:// URI
    # (pyarrow filesystems, as Ray Tune uses them). Parquet, spec.yaml, the report and the
    # default MLflow store stay in `storage`, on the driver's machine.
    tune_storage: str | None = None
    # Times a failed trial is retried from its last checkpoint before it counts as failed.
    max_failures: int = Field(default=0, ge=0, le=1000)
    checkpoints_to_keep: int = Field(default=1, gt=0)
    # The most a study that adds seeds may spend (BudgetSpec); None: up to `seeds.max`.
    budget: BudgetSpec | None = None

    @field_validator("tune_storage")
    @classmethod
    def _tune_storage_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", value)
        if not value.strip():
            raise ValueError("must not be empty; leave it out to keep Tune's state in the sweep's "
                             "folder")
        if scheme is None:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", value):
                raise ValueError(f"{value!r} looks like a URI with a missing slash; write "
                                 f"s3://bucket/prefix or gs://bucket/prefix")
            return value
        if scheme.group(1).lower() not in TUNE_STORAGE_SCHEMES:
            raise ValueError(f"{value!r}: Ray Tune cannot keep checkpoints at a "
                             f"{scheme.group(1)}:// address; use a folder every node sees or "
                             f"one of {', '.join(s + '://' for s in TUNE_STORAGE_SCHEMES)}")
        if not scheme.group(2).strip("/"):
            raise ValueError(f"{value!r} names no bucket; write {scheme.group(1)}://bucket/prefix")
        return value.rstrip("/")


MAX_ADAPTIVE_SEEDS = 1000


class SeedRule(_Strict):
    """`seeds: {start: 3, max: 10}`: paired seeds added until each question is decided
    (docs/statistics_sequential.md). Every arm runs seeds 0..start-1; then, while a question of
    the study (`compare`) is undecided, its arm and its reference get the next `batch` seeds
    together, up to `max`, and the sequential rule (group-sequential, Lan-DeMets `spending` at
    family-wise two-sided `alpha`, Holm-type recycling over the questions) decides it. The look
    schedule (start, start + batch, ..., max) is fixed here, before any data."""

    start: int = Field(ge=2, le=MAX_ADAPTIVE_SEEDS)
    max: int = Field(ge=2, le=MAX_ADAPTIVE_SEEDS)
    batch: int = Field(default=1, ge=1, le=MAX_ADAPTIVE_SEEDS)
    # Kim & DeMets' power family with rho 8 keeps most of alpha for the last look: at 3-10 and
    # 3-8 seeds it loses at most 3 points of power against a fixed max-seed design, where
    # O'Brien-Fleming-type spending loses 6-7 (benchmarks/RESULTS.md, sequential_sim).
    spending: str = "power:8"
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> SeedRule:
        if self.max < self.start:
            raise ValueError(f"max ({self.max}) must be at least start ({self.start})")
        power = re.fullmatch(r"power:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", self.spending)
        if self.spending not in ("obrien-fleming", "pocock") and not (
                power and float(power.group(1)) > 0):
            raise ValueError(f"spending must be obrien-fleming, pocock or power:<rho> with "
                             f"rho > 0 (orchestrator/sequential/bounds.py) but got "
                             f"{self.spending!r}")
        return self

    @property
    def seeds(self) -> list[int]:
        """Every seed the study may run: 0..max-1."""
        return list(range(self.max))


class SweepSpec(_Strict):
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    baseline: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    design: Literal["ofat", "factorial"] = "ofat"
    # Name of the arm that is base itself (the centre point of an ofat design).
    base_arm: str = "base"
    # A list of seeds every arm runs, or a SeedRule ({start, max}) adding paired seeds until
    # each question is decided.
    seeds: list[int] | SeedRule = Field(default_factory=lambda: [0])
    # arm -> the arm it is measured against (its own backbone's baseline, for instance); every
    # other arm is measured against `baseline`. Reference arms are never stopped early.
    references: dict[str, str] = Field(default_factory=dict)
    # The study's questions (orchestrator/spec/questions.py): a rule (`references`, `leaves`) or a
    # list of {arm: reference} pairs; absent: every arm against its reference.
    compare: str | list[dict[str, str]] | None = None
    search: SearchSpec = Field(default_factory=SearchSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    @field_validator("compare", mode="before")
    @classmethod
    def _compare_shape(cls, value: Any) -> Any:
        return check_compare(value)

    # `base` as a TrainConfig, set by the spec's checks (orchestrator.spec.load) when they
    # validate it, so that the plan starts from it instead of validating base again.
    _base_config: TrainConfig | None = PrivateAttr(default=None)

    @property
    def base_config(self) -> TrainConfig:
        """`base` as a validated TrainConfig (trainers.config.ConfigError if it is not one)."""
        if self._base_config is None:
            self._base_config = train_config_from_dict(self.base, source="base")
        return self._base_config

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds_shape(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one seed (seeds: [0]) or a rule "
                             "(seeds: {start: 3, max: 10})")
        if isinstance(value, dict):
            try:
                return SeedRule.model_validate(value)
            except ValidationError as exc:
                problems = "; ".join(
                    (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "")
                    + e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise ValueError(f"{problems} (a rule is {{start: 3, max: 10}}, optionally "
                                 f"with batch, spending, alpha)") from None
        if value is not None and not isinstance(value, (list, SeedRule)):
            raise ValueError(f"give a list of seeds (seeds: [0, 1, 2]) or a rule (seeds: "
                             f"{{start: 3, max: 10}}) but got {value!r}")
        return value

    @property
    def seed_rule(self) -> SeedRule | None:
        """The rule that adds seeds, or None for a fixed list."""
        return self.seeds if isinstance(self.seeds, SeedRule) else None

    @property
    def seed_list(self) -> list[int]:
        """Every seed an arm may run: the list, or 0..max-1 under a rule."""
        return self.seeds.seeds if isinstance(self.seeds, SeedRule) else list(self.seeds)

    @property
    def asha_unit(self) -> str | None:
        """`arm`, `trial`, or None without ASHA; `auto` resolved (arm for a designed study with
        more than one seed)."""
        asha = self.search.asha
        if asha is None:
            return None
        if asha.unit != "auto":
            return asha.unit
        return "arm" if not self.search.space and len(self.seed_list) > 1 else "trial"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
