"""Can the Ray cluster ever run one trial? Checked after `ray.init`, before anything is created.

A trial asks for `run.resources_per_trial`; Ray keeps a trial that fits no node pending forever,
silently. So the driver looks first: a trial that fits an alive node is fine; one that fits a
node type the cluster's autoscaler can still add is waited for (the caller is told why); one
that fits neither is a SpecError (exit 2) naming the resource, what the cluster has and the fix.

The node types come from what the autoscaler publishes in the GCS (a Ray internal:
`_ray_compat.published_node_groups`) or, on a `ray up` head node, from the cluster config Ray
copies there (`~/ray_bootstrap_config.yaml`). Without either, a cluster can only grow by hand,
so its alive nodes are all it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

from orchestrator.errors import SpecError
from orchestrator.plan.model import Plan
from orchestrator.tune.ray_compat import published_node_groups

__all__ = ["NodeType", "check_capacity", "node_types"]

# `ray up` copies the cluster config to the head node under this name.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float] | None     # None: not stated (the provider fills it at launch)
    max_count: int                          # -1: unbounded


def _fits(resources: dict[str, float], cpu: float, gpu: float) -> bool:
    return resources.get("CPU", 0) >= cpu and resources.get("GPU", 0) >= gpu


def _published_node_types() -> list[NodeType] | None:
    groups = published_node_groups()
    if groups is None:
        return None
    return [NodeType(g.name, g.resources, g.max_count) for g in groups]


def _bootstrap_node_types(path: Path) -> list[NodeType] | None:
    path = path.expanduser()
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    head = config.get("head_node_type")
    cluster_max = config.get("max_workers")
    out = []
    for name, node in (config.get("available_node_types") or {}).items():
        node = node or {}
        # A type's max_workers counts the nodes Ray may add of it; the head is there already,
        # and Ray adds none of the head's type unless it says so.
        default = 0 if name == head else (cluster_max if cluster_max is not None else -1)
        count = node.get("max_workers", default)
        resources = node.get("resources")
        out.append(NodeType(name, {k: float(v) for k, v in resources.items()}
                            if resources else None, int(count)))
    return out or None


def node_types(bootstrap: Path = BOOTSTRAP_CONFIG) -> list[NodeType] | None:
    """The node types the cluster may add, or None when no autoscaler says."""
    return _published_node_types() or _bootstrap_node_types(bootstrap)


def _alive(nodes: Iterable[dict[str, Any]]) -> list[dict[str, float]]:
    return [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]


def check_capacity(plan: Plan, *, cluster: bool, notify: Callable[[str], None] | None = None,
                   bootstrap: Path = BOOTSTRAP_CONFIG) -> None:
    """Raise SpecError when no trial of `plan` could ever start on this Ray; `notify` (a line
    for the user) when trials will wait for the autoscaler to add a node."""
    res = plan.spec.run.resources_per_trial
    alive = _alive(ray.nodes())
    if any(_fits(n, res.cpu, res.gpu) for n in alive):
        return
    asked = f"a trial asks for {res.cpu:g} CPU and {res.gpu:g} GPU"
    cpus = max((n.get("CPU", 0) for n in alive), default=0)
    gpus = max((n.get("GPU", 0) for n in alive), default=0)
    where = f"{plan.source}: run.resources_per_trial"
    if not cluster:
        raise SpecError(
            f"{where}: {asked} but this machine's Ray has {cpus:g} CPU and {gpus:g} GPU, so no "
            f"trial could ever start; try the study here with --smoke (1 CPU per trial), lower "
            f"run.resources_per_trial (for example --set run.resources_per_trial.gpu=0), or run "
            f"on a cluster that has such nodes with --address")
    types = node_types(bootstrap)
    growable = [t for t in types or [] if t.max_count != 0
                and (t.resources is None or _fits(t.resources, res.cpu, res.gpu))]
    if growable:
        if notify is not None:
            names = ", ".join(t.name for t in growable)
            notify(f"{asked} and no node of the cluster has that now; trials wait until the "
                   f"autoscaler adds a node of type {names} (minutes on a cloud)")
        return
    offered = (f"and its autoscaler's node types ({', '.join(t.name for t in types)}) give at "
               f"most {max((t.resources or {}).get('CPU', 0) for t in types):g} CPU and "
               f"{max((t.resources or {}).get('GPU', 0) for t in types):g} GPU"
               if types else "and no autoscaler that could add nodes")
    raise SpecError(
        f"{where}: {asked} but this cluster's {len(alive)} node(s) have at most {cpus:g} CPU and "
        f"{gpus:g} GPU {offered}, so no trial could ever start; lower "
        f"run.resources_per_trial, add a node type that has them to the cluster config "
        f"(ray_cluster.yaml: available_node_types), or check the study with --smoke")
