"""Reading a spec file: PyYAML's safe loader, made strict where a silent choice would mislead.

Duplicate keys are an error (PyYAML keeps the last one, so two `model.locality.act` axes would
quietly become one), and `1e-3` is read as the float a researcher means (YAML 1.1 reads a
mantissa without a dot as a string). Syntax errors name the file, line and column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

__all__ = ["read_yaml"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads `1e-3` as a float (YAML 1.2 style)."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; keep only one", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a spec file; SpecError naming the file (and line:column) otherwise."""
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file; give the path to a sweep YAML "
                        f"(for example search_spaces/quickstart.yaml)")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: YAML syntax error: {problem}; fix the YAML there "
                        f"(indentation, quoting, a missing ':')") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path.name}: a sweep spec is a mapping with name, base, axes, seeds, "
                        f"search and run but the file holds {type(data).__name__}")
    return data
