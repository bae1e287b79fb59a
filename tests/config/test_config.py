"""Recipe schema: validation errors name the key and suggest the closest valid one."""

from __future__ import annotations

import pytest
import yaml

from wsss.config import load_recipe, recipe_from_dict, recipe_names, save_recipe, to_dict
from wsss.errors import ConfigError
from wsss.registry import Registry, check_kwargs


def test_defaults_validate() -> None:
    r = recipe_from_dict({})
    assert r.classifier.lr == pytest.approx(5e-5)
    assert r.cams.scales == [256, 512, 768]


def test_typo_names_key_path_and_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"classifier": {"learning_rate": 0.1, "epochs": 3}})
    msg = str(info.value)
    assert "'classifier.learning_rate'" in msg
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"classifer": {"lr": 0.1}})
    assert "'classifer'" in str(info.value) and "did you mean 'classifier'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"classifier": {"epoch": 3}})
    assert "did you mean 'epochs'" in str(info.value)


def test_wrong_types_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"'classifier\.epochs' must be an integer"):
        recipe_from_dict({"classifier": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"'cams\.flip' must be true or false"):
        recipe_from_dict({"cams": {"flip": "yes please"}})
    with pytest.raises(ConfigError, match=r"'classifier\.amp' must be one of"):
        recipe_from_dict({"classifier": {"amp": "bf61"}})
    with pytest.raises(ConfigError, match=r"'classifier\.resize_long' must have 2 items"):
        recipe_from_dict({"classifier": {"resize_long": [1, 2, 3]}})
    # an int is a valid float, a bool is not an int
    assert recipe_from_dict({"classifier": {"lr": 1}}).classifier.lr == 1.0
    assert recipe_from_dict({}, ["classifier.lr=3e-4"]).classifier.lr == 3e-4  # YAML 1.1 reads a string
    with pytest.raises(ConfigError):
        recipe_from_dict({"seed": True})


def test_overrides_beat_yaml_and_are_validated(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "classifier": {"epochs": 5, "lr": 0.5}}))
    r = load_recipe(path, ["classifier.epochs=7", "cams.scales=[64, 96]", "evaluate.fixed_threshold=null"])
    assert r.classifier.epochs == 7 and r.classifier.lr == 0.5
    assert r.cams.scales == [64, 96] and r.evaluate.fixed_threshold is None
    with pytest.raises(ConfigError, match="did you mean 'scales'"):
        load_recipe(path, ["cams.scale=[1]"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_recipe(path, ["cams.scales"])


def test_base_inheritance_and_roundtrip(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "b", "classifier": {"epochs": 2, "lr": 0.1}}))
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump({"base": "base.yaml", "name": "c", "classifier": {"lr": 0.2}})
    )
    r = load_recipe(tmp_path / "child.yaml")
    assert (r.name, r.classifier.epochs, r.classifier.lr) == ("c", 2, 0.2)
    out = tmp_path / "run" / "recipe.yaml"
    save_recipe(r, out)
    again = load_recipe(out)
    assert to_dict(again) == to_dict(r)


def test_unknown_recipe_suggests_shipped_one() -> None:
    names = recipe_names()
    assert names, "the package ships recipes"
    with pytest.raises(ConfigError, match="wsss recipes"):
        load_recipe(names[0] + "x")
    for name in names:  # every shipped recipe validates
        load_recipe(name)


def test_registry_unknown_name_and_kwargs() -> None:
    reg = Registry("widget")

    @reg.register("square")
    def build_square(size: int = 1, colour: str = "red") -> tuple[int, str]:
        return size, colour

    assert reg.build("square", size=3) == (3, "red")
    with pytest.raises(ConfigError, match="did you mean 'square'"):
        reg.get("squares", where="model.widget")
    with pytest.raises(ConfigError, match=r"unknown key 'cfg\.color' \(did you mean 'colour'\?\)"):
        check_kwargs(build_square, {"color": "blue"}, "cfg")


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_names_known_components(name: str) -> None:
    from wsss.pipeline import check_components, check_stages

    recipe = load_recipe(name)
    check_stages(recipe.stages)
    check_components(recipe, recipe.stages)


def test_recipes_show_prints_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    """`wsss recipes --show` prints every setting a run would use; the text loads back to the same recipe."""
    from wsss.cli import main

    assert main(["recipes", "--show", "voc/bnr", "--set", "affinity.lr=0.02"]) == 0
    text = capsys.readouterr().out
    tree = yaml.safe_load(text)
    assert tree["classifier"]["method"] == "bnr"  # from voc/bnr itself
    assert tree["affinity"]["compat"] == "authors_code"  # inherited from voc/transcam
    assert tree["labels"]["crf_label_space"] == "dataset"
    assert tree["affinity"]["lr"] == 0.02  # the override
    assert to_dict(recipe_from_dict(tree)) == to_dict(load_recipe("voc/bnr", ["affinity.lr=0.02"]))
    assert "scales: [256.0, 512.0, 768.0]" in text  # plain lists stay on one line


def _valid_keys(section: str) -> str:
    import dataclasses

    from wsss.config import schema

    cls = {"classifier": schema.ClassifierConfig, "cams": schema.CamConfig}[section]
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.init)


def test_misspelled_key_names_its_file_and_line(tmp_path) -> None:
    """Issue 17: the error named the key but not where it was written; the suggestion was 'color_jitter'."""
    path = tmp_path / "mine.yaml"
    path.write_text("base: synth/bnr-nano\nname: mine\nclassifier:\n  epochs: 1\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"unknown key 'classifier.lr_rate' in {path}, line 5 (did you mean 'lr'?); "
        f"valid keys here: {_valid_keys('classifier')}"
    )


def test_misspelled_key_in_a_base_names_the_base_file(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("name: b\n\ncams:\n  scale: [64]\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: c\nclassifier: {epochs: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "child.yaml")
    assert str(info.value).startswith(
        f"unknown key 'cams.scale' in {tmp_path.resolve() / 'base.yaml'}, line 4 (did you mean 'scales'?); "
    )


def test_misspelled_override_has_no_line(tmp_path) -> None:
    """A key that came from --set has no file line to point at: the message says only the key."""
    path = tmp_path / "r.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["classifier.lr_rate=1"])
    assert str(info.value) == (
        f"unknown key 'classifier.lr_rate' (did you mean 'lr'?); valid keys here: {_valid_keys('classifier')}"
    )


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("lr_rate", "lr"),  # a shared word beats character overlap ('color_jitter' before issue 17)
        ("jitter", "color_jitter"),
        ("lr_mult", "head_lr_mult"),
        ("batchsize", "batch_size"),
        ("epoch", "epochs"),
        ("crop", "crops"),  # one edit beats a shared word ('crop_size')
        ("weight_decy", "weight_decay"),
        ("Momentum", "momentum"),
    ],
)
def test_key_suggestion_prefers_words_and_edits_of_the_same_section(typo: str, meant: str) -> None:
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"classifier": {typo: 1}})
    assert f"unknown key 'classifier.{typo}' (did you mean '{meant}'?); valid keys here:" in str(info.value)


def test_suggest_swaps_and_unrelated_names() -> None:
    from wsss.registry import suggest

    assert suggest("dgo", ["cat", "cow", "dog"]) == " (did you mean 'dog'?)"  # neighbours swapped
    assert suggest("pas", ["label", "psa", "deeplab"]) == " (did you mean 'psa'?)"
    assert suggest("bnr-nano", ["synth/bnr", "synth/bnr-nano"]) == " (did you mean 'synth/bnr-nano'?)"
    assert suggest("learning_rate", ["lr", "epochs", "color_jitter"]) == ""


def test_real_photo_recipes_segment_from_imagenet_weights_not_from_scratch() -> None:
    """A user who adds train-seg to a coco128/folder recipe must not get a random backbone."""
    from wsss.stages.train_seg import from_scratch

    for name in ("coco128/cam-mobilenet", "coco128/spu-mobilenet", "folder/cam-mobilenet"):
        seg = load_recipe(name).segmentation
        assert seg.pretrained == "offline" and not from_scratch(seg), name
    assert from_scratch(load_recipe("coco128/cam-mobilenet", ["segmentation.pretrained=null"]).segmentation)
