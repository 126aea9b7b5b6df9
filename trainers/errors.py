"""The errors of the models and the trainer: every one says what is wrong and how to fix it."""

from __future__ import annotations

__all__ = ["ConfigError", "ModelConfigError"]


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key path and how to fix it."""


class ModelConfigError(ConfigError):
    """A model name, locality knob or architecture override is not valid for the model."""
