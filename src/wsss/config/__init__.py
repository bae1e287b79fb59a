"""Recipe schema, loading, overrides and saving."""

from wsss.config.loading import (
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_names,
    save_recipe,
    to_dict,
)
from wsss.config.schema import (
    CamConfig,
    ClassifierConfig,
    DataConfig,
    EvalConfig,
    LabelConfig,
    Recipe,
)

__all__ = [
    "CamConfig",
    "ClassifierConfig",
    "DataConfig",
    "EvalConfig",
    "LabelConfig",
    "Recipe",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
    "recipe_names",
    "save_recipe",
    "to_dict",
]
