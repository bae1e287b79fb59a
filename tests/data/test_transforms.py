"""Joint image/mask transforms: sizes, interpolation per type, padding values and alignment."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from wsss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Cutout,
    RandomRescale,
    RandomResizeLong,
    denormalize,
    eval_transform,
    train_transform,
)

BLOCK = 8
ROWS, COLS = 5, 7


def block_pattern() -> dict:
    """Image whose colour encodes the 8x8 block it lies in; the mask holds the same block id."""
    ys, xs = torch.meshgrid(torch.arange(ROWS * BLOCK), torch.arange(COLS * BLOCK), indexing="ij")
    by, bx = ys // BLOCK, xs // BLOCK
    image = torch.stack([30 * bx + 20, 40 * by + 20, torch.full_like(bx, 128)]).to(torch.uint8)
    mask = (by * COLS + bx + 1).to(torch.int64)
    return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)}


def decode_blocks(image_uint8: torch.Tensor) -> torch.Tensor:
    bx = ((image_uint8[0].float() - 20) / 30).round().clamp(0, COLS - 1)
    by = ((image_uint8[1].float() - 20) / 40).round().clamp(0, ROWS - 1)
    return (by * COLS + bx + 1).long()


def test_image_and_mask_stay_aligned_through_resize_scale_flip_crop():
    tf = train_transform(resize_long=(40, 90), crop_size=48, flip=True, color_jitter=None, scale=(0.7, 1.3))
    agree_total, flipped_agree = [], []
    for seed in range(30):
        torch.manual_seed(seed)
        out = tf(block_pattern())
        image, mask = out["image"], out["mask"]
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
        pad = mask == 255
        assert (image[:, pad] == 0).all(), "padding must be 0 in normalised space for the image"
        valid = ~pad
        assert valid.sum() > 200
        # two bicubic resamplings blur block edges, so judge pixels away from mask edges
        interior = valid & uniform_neighbourhood(mask)
        decoded = decode_blocks(denormalize(image))
        agree_total.append((decoded[interior] == mask[interior]).float().mean().item())
        flipped_agree.append((decoded[interior] == mask.flip(-1)[interior]).float().mean().item())
    assert min(agree_total) > 0.95 and sum(agree_total) / len(agree_total) > 0.99, agree_total
    assert max(flipped_agree) < 0.6, flipped_agree


def uniform_neighbourhood(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds a single mask value."""
    m = mask.float()[None, None]
    hi = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
    lo = -torch.nn.functional.max_pool2d(-m, 3, stride=1, padding=1)
    return (hi == lo)[0, 0]


@pytest.mark.parametrize("long_side", [29, 41, 66, 99])
def test_single_resize_keeps_every_pixel_aligned(long_side):
    """Masks are sampled at pixel centres like the bicubic image (legacy 'nearest' drifts)."""
    out = RandomResizeLong(long_side, long_side)(block_pattern())
    assert torch.equal(decode_blocks(out["image"]), out["mask"].as_subclass(torch.Tensor))


def test_resize_long_range_aspect_and_nearest_mask():
    sample = block_pattern()  # 40 x 56
    tf = RandomResizeLong(30, 40)
    longs = set()
    for seed in range(200):
        torch.manual_seed(seed)
        out = tf(sample)
        h, w = out["image"].shape[-2:]
        assert out["mask"].shape == (h, w)
        assert w == max(h, w) and 30 <= w <= 40 and h == round(w * 40 / 56)
        assert set(out["mask"].unique().tolist()) <= set(range(1, 36))
        longs.add(w)
    assert longs == set(range(30, 41))


def test_resize_uses_bicubic_for_images():
    torch.manual_seed(0)
    sample = block_pattern()
    out = RandomResizeLong(70, 70)(sample)
    ref = F.resize(sample["image"], [50, 70], interpolation=InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(out["image"], ref, rtol=0, atol=0)
    nearest = F.resize(sample["image"], [50, 70], interpolation=InterpolationMode.NEAREST_EXACT)
    assert torch.equal(decode_blocks(nearest), out["mask"].as_subclass(torch.Tensor))


def test_rescale_factor_range():
    sample = block_pattern()
    for seed in range(20):
        torch.manual_seed(seed)
        h, w = RandomRescale(0.5, 1.5)(sample)["mask"].shape
        assert 20 <= h <= 60 and 28 <= w <= 84 and abs(h / w - 40 / 56) < 0.05


def test_crop_pads_with_zero_and_ignore():
    sample = {
        "image": tv_tensors.Image(torch.full((3, 10, 10), 255, dtype=torch.uint8)),
        "mask": tv_tensors.Mask(torch.ones(10, 10, dtype=torch.int64)),
    }
    out = train_transform(resize_long=None, crop_size=16, flip=False, color_jitter=None)(sample)
    assert out["mask"].shape == (16, 16)
    assert int((out["mask"] == 255).sum()) == 256 - 100 and int((out["mask"] == 1).sum()) == 100
    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    inside = out["mask"] == 1
    torch.testing.assert_close(out["image"][:, inside].mean(1), white)
    assert (out["image"][:, ~inside] == 0).all()


def test_flip_mirrors_both():
    sample = block_pattern()
    tf = train_transform(resize_long=None, crop_size=None, flip=True, color_jitter=None)
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        out = tf(sample)
        flipped = bool((out["mask"] != sample["mask"]).any())
        seen.add(flipped)
        ref_mask = sample["mask"].flip(-1) if flipped else sample["mask"]
        assert torch.equal(out["mask"], ref_mask)
        ref_img = sample["image"].flip(-1) if flipped else sample["image"]
        assert torch.equal(denormalize(out["image"]), ref_img)
    assert seen == {True, False}


def test_colour_jitter_changes_image_not_mask():
    sample = block_pattern()
    torch.manual_seed(3)
    out = train_transform(resize_long=None, crop_size=None, flip=False, color_jitter=(0.4, 0.4, 0.4, 0.1))(
        sample
    )
    assert torch.equal(out["mask"], sample["mask"])
    assert not torch.equal(denormalize(out["image"]), sample["image"])


def test_eval_transform_round_trip():
    sample = block_pattern()
    out = eval_transform()(sample)
    assert out["image"].dtype == torch.float32
    assert torch.equal(out["mask"], sample["mask"])
    assert torch.equal(denormalize(out["image"]), sample["image"])
    resized = eval_transform(resize_long=28)(sample)
    assert resized["image"].shape == (3, 20, 28) and resized["mask"].shape == (20, 28)


def test_bad_ranges():
    with pytest.raises(ValueError):
        RandomResizeLong(50, 40)
    with pytest.raises(ValueError):
        RandomRescale(0.0, 1.0)


def test_cutout_zeroes_three_clipped_squares_of_the_image_only() -> None:
    """Each hole spans size//2 either side of a uniform centre, clipped at the border (AMR's cutout):
    with one hole of 8 the zeroed box is [y−4, y+4) × [x−4, x+4) ∩ image; the mask is untouched."""
    image = tv_tensors.Image(torch.ones(3, 20, 30))
    mask = tv_tensors.Mask(torch.ones(20, 30, dtype=torch.int64))
    one = Cutout(holes=1, size=8)
    sizes = set()
    for seed in range(40):
        torch.manual_seed(seed)
        y, x = int(torch.randint(20, ())), int(torch.randint(30, ()))  # the centre the transform draws
        torch.manual_seed(seed)
        out = one({"image": image, "mask": mask})
        want = torch.zeros(20, 30, dtype=torch.bool)
        want[max(0, y - 4) : min(20, y + 4), max(0, x - 4) : min(30, x + 4)] = True
        assert torch.equal(out["image"] == 0, want.expand(3, 20, 30))
        assert torch.equal(out["mask"], mask)
        sizes.add(int(want.sum()))
    assert 64 in sizes and min(sizes) < 64  # whole 8×8 holes and clipped ones
    assert torch.equal(image, torch.ones(3, 20, 30))  # the input is not modified in place
    torch.manual_seed(0)
    three = train_transform(resize_long=None, crop_size=64, flip=False, color_jitter=None, cutout=(3, 16))
    holes = three({"image": tv_tensors.Image(torch.full((3, 64, 64), 200, dtype=torch.uint8))})["image"]
    zeroed = int((holes[0] == 0).sum())
    assert 16 * 16 <= zeroed <= 3 * 16 * 16  # three 16×16 holes, possibly overlapping or clipped
    assert torch.equal(holes[0] == 0, holes[2] == 0)  # every channel, i.e. the mean colour
