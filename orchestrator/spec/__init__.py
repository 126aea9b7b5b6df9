"""The sweep spec, validated at the edge: `model` (the typed spec), `keys` (dotted trial-config
keys and `--set`), `load` (YAML file -> SweepSpec, the checks across fields), `smoke` (`--smoke`:
any spec shrunk to CPU minutes) and `yaml_file` (the strict YAML reader)."""

from orchestrator.spec.keys import train_keys
from orchestrator.spec.load import load_spec, spec_from_dict
from orchestrator.spec.model import (
    AshaSpec,
    DomainSpec,
    OptunaSpec,
    ResourcesSpec,
    RunSpec,
    SearchSpec,
    SweepSpec,
)

__all__ = ["AshaSpec", "DomainSpec", "OptunaSpec", "ResourcesSpec", "RunSpec", "SearchSpec",
           "SweepSpec", "load_spec", "spec_from_dict", "train_keys"]
