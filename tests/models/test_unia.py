"""UniA's network: shapes, the CAM contract, the affinity head, the optimiser groups, the quirk switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.cams.inference import multiscale_cams, normalise_image
from wsss.errors import ConfigError
from wsss.registry import CAM_MODELS

HEAD = {
    "num_heads": 4,
    "pooling_size": 4,
    "hidden_dim": 32,
    "proj_hidden": 48,
    "proj_bottleneck": 16,
    "mask_heads": 4,
}


def _tiny(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {
        "backbone": "vit_tiny",
        "num_classes": 4,
        "img_size": 32,
        "decoder_channels": 16,
        "head_args": HEAD,
    }
    return CAM_MODELS.build("unia", where="classifier.model", **{**args, **kw})


def test_forward_shapes_and_the_zero_background_channel() -> None:
    model = _tiny().train()
    out = model(torch.randn(2, 3, 32, 48))
    assert out.cam.shape == out.aux_cam.shape == (2, 4, 4, 6)
    assert out.logits.shape == out.aux_logits.shape == (2, 4)
    assert out.seg.shape == (2, 4, 4, 6)
    assert out.features.shape == (2, 64, 4, 6)
    assert out.affinity.shape == (2, 24, 24)
    assert out.sampled_mean.shape == (2, 4, 6)
    assert torch.equal(out.cam[:, 0], torch.zeros_like(out.cam[:, 0]))
    assert torch.equal(out.logits[:, 0], torch.zeros(2))


def test_logits_are_the_classifier_on_max_pooled_features() -> None:
    model = _tiny().eval()
    out = model(torch.randn(2, 3, 32, 32))
    pooled = F.adaptive_max_pool2d(out.features, 1)
    assert torch.allclose(out.logits[:, 1:], model.classifier(pooled).flatten(1), atol=1e-6)
    # and the CAM is the same bias-free classifier applied at every position
    assert torch.allclose(out.cam[:, 1:], model.classifier(out.features), atol=1e-6)


def test_affinity_is_symmetric_and_in_the_unit_interval() -> None:
    with torch.no_grad():
        out = _tiny().eval()(torch.randn(1, 3, 32, 32))
    assert torch.allclose(out.affinity, out.affinity.transpose(1, 2), atol=1e-6)
    assert float(out.affinity.min()) > 0 and float(out.affinity.max()) < 1


def test_cam_path_matches_the_full_forward_in_eval_mode() -> None:
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    cam, aux = model.cam_maps(x)
    out = model(x)
    assert torch.allclose(cam, out.cam[:, 1:], atol=1e-5)
    assert torch.allclose(aux, out.aux_cam[:, 1:], atol=1e-5)
    assert torch.allclose(model.segment(x), out.seg, atol=1e-5)
    assert torch.equal(model.extract(x, "cam"), torch.relu(torch.cat([torch.zeros_like(cam[:, :1]), cam], 1)))


def test_extract_takes_any_image_size_on_the_make_cams_grid() -> None:
    model = _tiny().eval()
    assert model.output_stride == 8  # make-cams maps cells back to pixels with it (not the CNN default 16)
    x = torch.randn(1, 3, 37, 50)  # not multiples of the patch (8): zero-padded to 40x56
    maps = model.extract(x)
    assert maps.shape == (1, 4, 5, 7)
    padded = torch.nn.functional.pad(x, (0, 6, 0, 3))
    assert torch.allclose(maps, model.extract(padded), atol=1e-6)
    with pytest.raises(ConfigError, match="'cam' and 'aux'"):
        model.extract(torch.randn(1, 3, 32, 32), "rv")


def test_double_features_is_the_released_x4_doubling() -> None:
    x = torch.randn(1, 3, 32, 32)
    plain, doubled = _tiny().eval(), _tiny(double_features=True).eval()
    assert torch.allclose(doubled(x).cam, 2 * plain(x).cam, atol=1e-5)


def test_optimizer_groups_cover_every_parameter_once_with_heads_at_ten_times() -> None:
    model = _tiny()
    groups = model.optimizer_groups(1e-3, 0.01, 10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(ids) == len(set(ids))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.encoder.blocks[0].attn.qkv.weight)] == pytest.approx(1e-3)
    assert lr_of[id(model.encoder.norm.weight)] == pytest.approx(1e-3)
    for head in (model.classifier, model.aux_classifier, model.attn_proj, model.uncertainty, model.decoder):
        assert all(lr_of[id(p)] == pytest.approx(1e-2) for p in head.parameters() if p.requires_grad)
    assert all(g["weight_decay"] == 0.01 for g in groups)


def test_gradients_reach_encoder_and_every_head() -> None:
    model = _tiny().train()
    out = model(torch.randn(2, 3, 32, 32))
    (
        out.logits.sum() + out.aux_logits.sum() + out.seg.sum() + out.affinity.sum() + out.sampled_mean.sum()
    ).backward()
    for name in (
        "encoder.patch_embed.proj.weight",
        "classifier.weight",
        "aux_classifier.weight",
        "attn_proj.proj.weight",
        "decoder.cls_conv.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_bad_class_count() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        _tiny(num_classes=1)


def test_make_cams_places_the_maps_on_the_image() -> None:
    """make-cams' multi-scale routine with the model's own output_stride gives, at one scale without
    flip, exactly the model's CAM upsampled to the image (with the CNN default stride 16 it stretched
    the top-left quarter of a patch-8 map over the image)."""
    model = _tiny().eval()
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    labels = torch.tensor([1.0, 1.0, 1.0])
    with torch.no_grad():
        (got,) = multiscale_cams(
            lambda batch: model.extract(batch),
            [image],
            [labels],
            [1.0],
            scale_mode="relative",
            flip=False,
            output_stride=model.output_stride,
            resize="torch",
        )
        cam = model.extract(normalise_image(image)[None])[:, 1:]
    want = F.interpolate(cam, size=(40, 48), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(got, want, atol=1e-5)
