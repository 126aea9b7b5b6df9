"""The sweep's error types: one base, one subclass per kind of problem.

The CLI maps `SweepError` (bad input: the spec, an override, the storage path) to exit code 2 and
prints the message as is, so every message names the file and the key path, says what is wrong and
how to fix it. Such errors are raised before anything is created on disk or launched on Ray.
"""

from __future__ import annotations

__all__ = ["SweepError", "SpecError", "PlanError", "StorageError", "ResumeError"]


class SweepError(Exception):
    """Bad input to a sweep; nothing was created or launched."""


class SpecError(SweepError):
    """The spec file (or a --set override) is not valid YAML or does not fit the schema."""


class PlanError(SweepError):
    """The spec is well-formed but some planned trial is not a valid training run."""


class StorageError(SweepError):
    """The storage root cannot be written, or a sweep of that name already lives there."""


class ResumeError(SweepError):
    """--resume was asked for a sweep that has no saved Tune state to resume from."""
