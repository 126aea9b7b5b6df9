"""Reading a spec file with the trainers' strict YAML loader (trainers/_yaml.py).

Duplicate keys are an error (PyYAML keeps the last one, so two `model.locality.act` axes would
quietly become one), and `1e-3` is read as the float a researcher means. Syntax errors name the
file, line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError
from trainers._yaml import load_yaml, yaml_error_where

__all__ = ["read_yaml"]


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a spec file; SpecError naming the file (and line:column) otherwise."""
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file; give the path to a sweep YAML "
                        f"(for example search_spaces/quickstart.yaml)")
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file; give the path to a sweep YAML "
                        f"(for example search_spaces/quickstart.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a sweep spec "
                        f"is a YAML text file such as search_spaces/quickstart.yaml") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror}); check the path "
                        f"and its permissions") from None
    if "\x00" in text:
        raise SpecError(f"{path}: not a text file (it holds NUL bytes); a sweep spec is a YAML "
                        f"text file such as search_spaces/quickstart.yaml")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        where, problem = yaml_error_where(exc, path.name)
        raise SpecError(f"{where}: YAML syntax error: {problem}; fix the YAML there "
                        f"(indentation, quoting, a missing ':')") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path.name}: a sweep spec is a mapping with name, base, axes, seeds, "
                        f"search and run but the file holds {type(data).__name__}")
    return data
