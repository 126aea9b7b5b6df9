"""The LocalViT sweep orchestrator: one YAML spec -> Ray Tune trials -> MLflow, Parquet, a report.

The public API, imported on first use so that `import orchestrator` (and the sweep CLI's start)
does not pay for Ray, MLflow or the plotting stack:

    import orchestrator
    spec = orchestrator.load_spec("search_spaces/quickstart.yaml", ["seeds=[0]"])
    plan = orchestrator.build_plan(spec, source="quickstart.yaml")
    result = orchestrator.run_sweep(plan)                  # Ray Tune, MLflow and Parquet sinks
    orchestrator.write_report("sweeps/quickstart")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "SweepSpec": "orchestrator.spec.model",
    "load_spec": "orchestrator.spec.load",
    "spec_from_dict": "orchestrator.spec.load",
    "Plan": "orchestrator.plan.model",
    "PlannedTrial": "orchestrator.plan.model",
    "build_plan": "orchestrator.plan.design",
    "SweepResult": "orchestrator.tune.runner",
    "run_sweep": "orchestrator.tune.runner",
    "Report": "orchestrator.report.writer",
    "write_report": "orchestrator.report.writer",
    "PlanError": "orchestrator.errors",
    "SpecError": "orchestrator.errors",
    "SweepError": "orchestrator.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    # `X as X`: an explicit re-export (PEP 484), which tells linters the import is used.
    from orchestrator.errors import (
        PlanError as PlanError,
        SpecError as SpecError,
        SweepError as SweepError,
    )
    from orchestrator.plan.design import build_plan as build_plan
    from orchestrator.plan.model import Plan as Plan, PlannedTrial as PlannedTrial
    from orchestrator.report.writer import Report as Report, write_report as write_report
    from orchestrator.spec.load import load_spec as load_spec, spec_from_dict as spec_from_dict
    from orchestrator.spec.model import SweepSpec as SweepSpec
    from orchestrator.tune.runner import SweepResult as SweepResult, run_sweep as run_sweep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
