"""LocalViT (Li et al., arXiv 2104.05707): locality vision transformers and their trainer.

Models, the locality feed-forward block, named training recipes and a trainer that runs on a
laptop without Ray or MLflow. Importing the package registers every variant with timm, so
`timm.create_model("localvit_tiny")` works after `import trainers`.

    import trainers
    model = trainers.create_model("localvit_tiny", locality={"act": "hs+eca"})
    cfg = trainers.train_config_from_dict({"model": {"backbone": "localvit_micro"},
                                           "data": {"name": "digits"}})   # recipe digits_cpu
    result = trainers.train(cfg)                                           # TrialResult
"""

from trainers import timm_models  # noqa: F401  registers every variant with timm
from trainers.config import (
    AugConfig,
    DataConfig,
    LocalityConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    train_config_from_dict,
)
from trainers.errors import ConfigError, ModelConfigError
from trainers.locality import LocalityFeedForward, LocalitySpec
from trainers.profile import count_macs, count_params, count_trainable_params
from trainers.recipes import RECIPES, Recipe, get_recipe, recipe_for_data
from trainers.registry import create_model, get_variant, list_models
from trainers.train import Reporter, TrialDiverged, TrialResult, train, validate_config

__all__ = [
    "AugConfig",
    "ConfigError",
    "DataConfig",
    "LocalityConfig",
    "LocalityFeedForward",
    "LocalitySpec",
    "ModelConfig",
    "ModelConfigError",
    "OptimConfig",
    "RECIPES",
    "Recipe",
    "Reporter",
    "TrainConfig",
    "TrialDiverged",
    "TrialResult",
    "count_macs",
    "count_params",
    "count_trainable_params",
    "create_model",
    "get_recipe",
    "get_variant",
    "list_models",
    "recipe_for_data",
    "train",
    "train_config_from_dict",
    "validate_config",
]
