"""Multi-scale + flip CAM inference: batched passes equal one-at-a-time passes; the resize kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from wsss.cams.inference import (
    minmax_normalise,
    multiscale_cams,
    normalise_image,
    resize_image,
    scaled_size,
)
from wsss.errors import ConfigError


class TinyCam(nn.Module):
    """A fully convolutional stride-16 CAM net (eval mode: no batch dependence)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=4, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_batched_equals_sequential() -> None:
    net = TinyCam().eval()
    g = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, 40, 56), generator=g, dtype=torch.uint8),
        torch.randint(0, 256, (3, 64, 48), generator=g, dtype=torch.uint8),
    ]
    labels = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])]
    for mode, scales in (("square", [32.0, 48.0, 64.0]), ("relative", [0.5, 1.0, 1.5])):
        kw = dict(scale_mode=mode, flip=True, output_stride=16)
        a = multiscale_cams(net, images, labels, scales, batched=True, **kw)
        b = multiscale_cams(net, images, labels, scales, batched=False, **kw)
        for x, y, img in zip(a, b, images):
            assert x.shape == (3, *img.shape[-2:])
            assert torch.allclose(x, y, atol=1e-5)
        # absent classes are exactly zero
        assert a[0][1].abs().max() == 0 and a[1][0].abs().max() == 0


def test_flip_is_undone() -> None:
    """A net whose CAM is its input's red channel: flip passes must add the same map back."""

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        r = nn.functional.avg_pool2d(x[:, :1], 16)
        return torch.cat([torch.zeros_like(r), r], 1)

    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[0, :, :16] = 255  # left half red
    out = multiscale_cams(cam_fn, [img], [torch.tensor([1.0])], [32.0], flip=True)[0]
    single = multiscale_cams(cam_fn, [img], [torch.tensor([1.0])], [32.0], flip=False)[0]
    assert torch.allclose(out, 2 * single, atol=1e-5)
    assert out[0, :, :8].mean() > out[0, :, 24:].mean()


def test_target_stride_and_sizes() -> None:
    assert scaled_size((375, 500), 256, "square") == (256, 256)
    assert scaled_size((375, 500), 0.5, "relative") == (188, 250)
    net = TinyCam().eval()
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = multiscale_cams(net, [img], [torch.ones(3)], [64.0], target_stride=4)[0]
    assert out.shape == (3, 13, 18)  # ceil(50/4), ceil(70/4)


def test_minmax_normalise() -> None:
    x = torch.tensor([[[-1.0, 0.0], [2.0, 4.0]], [[1.0, 1.0], [3.0, 5.0]]])
    y = minmax_normalise(x)
    assert torch.allclose(y.flatten(1).max(1).values, torch.ones(2), atol=1e-4)
    assert y.min() == 0
    # class 2: (3 - 1 - eps)/(5 - 1 + eps)
    assert abs(float(y[1, 1, 0]) - (2 - 1e-5) / (4 + 1e-5)) < 1e-6


def test_batched_equals_sequential_for_nano_transcam() -> None:
    """The real CAM path: a nano TransCAM in eval mode, A*·M maps, 2 images x 2 scales x flip."""
    from wsss.registry import CAM_MODELS

    torch.manual_seed(0)
    # float64, so that float32 kernel noise (batch size changes the summation order) does not
    # hide a real difference: random-init maps are ~1e5 with a spread of ~10
    model = CAM_MODELS.build("transcam", backbone="conformer_nano", num_classes=4).double().eval()
    g = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, 50, 70), generator=g, dtype=torch.uint8) for _ in range(2)]
    labels = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])]
    for method in ("transcam", "conv"):

        def fn(x: torch.Tensor, method: str = method) -> torch.Tensor:
            return model.extract(x.double(), method)

        a = multiscale_cams(fn, images, labels, [48.0, 64.0], flip=True, batched=True)
        b = multiscale_cams(fn, images, labels, [48.0, 64.0], flip=True, batched=False)
        for x, y in zip(a, b):
            # random-init maps reach ~1e5: compare relative to the scale, and the stored
            # (min-max normalised) maps absolutely
            scale = float(x.abs().max())
            assert scale > 0
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-5 * scale)
            assert torch.allclose(minmax_normalise(x), minmax_normalise(y), atol=1e-5)


def test_max_normalise() -> None:
    from wsss.cams.inference import max_normalise

    x = torch.tensor([[[-1.0, 1.0], [2.0, 4.0]]])
    y = max_normalise(x)
    assert torch.allclose(y, torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# resize kernel
# ---------------------------------------------------------------------------------------------


def _recording_net(seen: list[torch.Tensor]):
    """A CAM function that keeps every batch it is given (one zero fg map at stride 16)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        h, w = -(-x.shape[-2] // 16), -(-x.shape[-1] // 16)
        return torch.zeros(x.shape[0], 2, h, w)

    return fn


def _pil_bicubic(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference resize: PIL bicubic on the HWC uint8 array, written out here independently."""
    pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("batched", [True, False])
def test_pil_resize_feeds_the_network_pils_bicubic(batched: bool) -> None:
    """The normalised inputs equal PIL's uint8 bicubic resize, normalised by the same function, exactly."""
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 256, (3, 37, 58), generator=g, dtype=torch.uint8)  # non-square
    for mode, scale, size in (
        ("square", 48.0, (48, 48)),
        ("relative", 1.5, (56, 87)),
        ("relative", 0.5, (18, 29)),
    ):
        assert scaled_size((37, 58), scale, mode) == size
        seen: list[torch.Tensor] = []
        multiscale_cams(
            _recording_net(seen), [img], [torch.ones(1)], [scale], scale_mode=mode, batched=batched
        )
        inputs = torch.cat(seen)  # plain pass, then its flip
        expected = normalise_image(_pil_bicubic(img, size))
        assert inputs.shape == (2, 3, *size)
        assert torch.equal(inputs[0], expected)
        assert torch.equal(inputs[1], expected.flip(-1))
        # and the test can tell the kernels apart: torchvision's bicubic gives another input
        other = normalise_image(
            TF.resize(img, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        )
        assert not torch.equal(other, expected)


def test_torch_resize_is_torchvisions_antialiased_bicubic() -> None:
    g = torch.Generator().manual_seed(4)
    img = torch.randint(0, 256, (3, 37, 58), generator=g, dtype=torch.uint8)
    for mode, scale, size in (("square", 48.0, (48, 48)), ("relative", 0.5, (18, 29))):
        seen: list[torch.Tensor] = []
        multiscale_cams(
            _recording_net(seen), [img], [torch.ones(1)], [scale], scale_mode=mode, resize="torch"
        )
        tv = TF.resize(img, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        assert torch.equal(seen[0][0], normalise_image(tv))
        assert not torch.equal(seen[0][0], normalise_image(_pil_bicubic(img, size)))


def test_resize_image_kernels_and_errors() -> None:
    img = torch.zeros(3, 6, 5, dtype=torch.uint8)
    img[:, :, 2] = 200  # a bright column
    for kernel in ("pil", "torch"):
        out = resize_image(img, (6, 5), kernel)
        assert out.dtype == torch.uint8 and torch.equal(out, img)  # same size: unchanged
        flat = resize_image(torch.full((3, 7, 9), 77, dtype=torch.uint8), (4, 13), kernel)
        assert flat.shape == (3, 4, 13) and bool((flat == 77).all())  # weights sum to one
    with pytest.raises(ConfigError, match="did you mean 'pil'"):
        resize_image(img, (3, 3), "pill")
    with pytest.raises(ConfigError, match="resize kernel"):
        multiscale_cams(_recording_net([]), [img], [torch.ones(1)], [4.0], resize="bicubic")
    with pytest.raises(ValueError, match="uint8"):
        resize_image(img.float(), (3, 3), "pil")
