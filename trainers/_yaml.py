"""Reading YAML strictly: PyYAML's safe loader, made strict where a silent choice would mislead.

Duplicate keys are an error (PyYAML keeps the last one, so two `train.lr` keys would quietly
become one), and `1e-3` is read as the float a researcher means (YAML 1.1 reads a mantissa
without a dot as a string). Used for trainer configs here and for sweep specs
(orchestrator/spec/yaml_file.py), so both read a file the same way.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["StrictLoader", "load_yaml", "yaml_error_where"]


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads `1e-3` as a float (YAML 1.2 style)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; keep only one", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with StrictLoader (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=StrictLoader)


def yaml_error_where(exc: yaml.YAMLError, name: str) -> tuple[str, str]:
    """(`name:line:column` or `name`, the problem) of a YAML error, for messages."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
    return where, getattr(exc, "problem", None) or str(exc)
