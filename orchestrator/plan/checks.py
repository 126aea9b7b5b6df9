"""The checks of a trial config at planning: the schema, the trainer's own checks, the metric.

Every message names the spec key that made the config. A dataset this machine cannot read may be
waived (a dry run, --smoke, a cluster whose workers hold the data): the rest of the config is
then checked against a stand-in dataset of the same image size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import PlanError
from orchestrator.spec.model import SweepSpec
from trainers.config import ConfigError, TrainConfig, format_validation_error
from trainers.data import check_data
from trainers.registry import default_img_size
from trainers.train import metric_names, validate_config

__all__ = ["check_metric", "domain_probe_values", "reported_metrics", "resolve_config",
           "run_check", "trainer_validate"]


def resolve_config(data: Mapping[str, Any], where: str) -> TrainConfig:
    """A trial's config data -> TrainConfig (the schema checked); PlanError naming `where` if
    invalid."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        lines = format_validation_error(err, TrainConfig)
        raise PlanError(f"{where}: " + "; ".join(lines)) from None


def run_check(validate: Callable[[TrainConfig], None], tc: TrainConfig, where: str, *,
               data_required: bool) -> str | None:
    """Raise PlanError if `tc` is not a valid trial; return the data problem if it was waived
    (one message for every config that shares the dataset)."""
    waived = None
    if not data_required:
        try:
            check_data(tc.data)
        except ConfigError as exc:
            waived = f"{exc} (the data is not checked on this machine)"
            tc = tc.model_copy(update={"data": _stand_in_data(tc)})
    try:
        validate(tc)
    except ConfigError as exc:
        raise PlanError(f"{where}: {_with_key_path(str(exc))}") from None
    return waived


def _stand_in_data(cfg: TrainConfig):
    """A dataset every check accepts at the same image size, for data this machine lacks: the
    rest of the config (model, image size, optimizer, batch size, augmentation) is still checked."""
    img = cfg.data.img_size or default_img_size(cfg.model.backbone)
    return cfg.data.model_copy(update={"name": "synthetic", "root": None, "img_size": img,
                                       "synthetic_train": 10**9})


def _with_key_path(message: str) -> str:
    """Model errors name knobs relative to `model` ('locality.act ...'); give the full key path."""
    if message.startswith("unknown model"):
        return f"model.backbone: {message}"
    if message.startswith(("locality", "arch")):
        return f"model.{message}"
    return message


def trainer_validate(cfg: TrainConfig) -> None:
    validate_config(cfg)


def reported_metrics(cfg: TrainConfig) -> set[str]:
    """The metric names a trial of `cfg` reports each epoch, as the trainer declares them."""
    return set(metric_names(cfg.train.ema))


def check_metric(spec: SweepSpec, configs: list[TrainConfig], source: str) -> None:
    """The metric is reported by every trial, and ASHA's first rung comes before the last epoch."""
    asha = spec.search.asha
    max_epochs = max(c.train.epochs for c in configs)
    if asha is not None and asha.grace_period > max_epochs:
        raise PlanError(
            f"{source}: search.scheduler.asha.grace_period: {asha.grace_period} is more than the "
            f"{max_epochs} epochs any trial runs, so ASHA could never stop a trial; lower it "
            f"(for example to {max(1, max_epochs // 5)})"
        )
    metric = spec.search.metric
    for cfg in configs:
        names = reported_metrics(cfg)
        if metric not in names:
            raise PlanError(
                f"{source}: search.metric: no trial of {cfg.model.backbone} "
                f"{'with train.ema=false ' if not cfg.train.ema else ''}reports {metric!r}; "
                f"pick one of {', '.join(sorted(names))}"
            )


def domain_probe_values(dom) -> list[Any]:
    """The values of a search domain worth validating: every choice, both bounds of a range."""
    return list(dom.values)
