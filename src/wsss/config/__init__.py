"""Recipe schema, loading, overrides and saving."""

from wsss.config.loading import (
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_names,
    recipe_yaml,
    save_recipe,
    to_dict,
)
from wsss.config.schema import (
    AffinityConfig,
    CamConfig,
    ClassifierConfig,
    DataConfig,
    EvalConfig,
    LabelConfig,
    RandomWalkConfig,
    Recipe,
    TrainerConfig,
)

__all__ = [
    "AffinityConfig",
    "CamConfig",
    "ClassifierConfig",
    "DataConfig",
    "EvalConfig",
    "LabelConfig",
    "RandomWalkConfig",
    "Recipe",
    "TrainerConfig",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
    "recipe_names",
    "recipe_yaml",
    "save_recipe",
    "to_dict",
]
