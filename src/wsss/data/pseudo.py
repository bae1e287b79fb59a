"""Images paired with label maps from a run directory (pseudo-masks or confident labels).

Training on pseudo-labels (affinity nets, segmentation) needs the dataset's images with label
PNGs from another folder, pushed through the same joint transform. The transform also carries
a constant plane so that pixels the random crop padded in can be told apart from labels that
are 255 (uncertain) — PSA ignores padding, TransCAM reads it as background.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from wsss.data.base import TaggedImageDataset
from wsss.data.images import read_image
from wsss.data.palette import IGNORE_INDEX, read_label_png
from wsss.errors import DataError


class PseudoLabelDataset(Dataset):
    """``base``'s images with ``label_dir/<name>.png`` as their mask.

    Items: ``{"name", "image", "mask" (int64 HxW), "padding" (bool HxW: filled in by the
    transform), "labels"}``.
    """

    def __init__(
        self,
        base: TaggedImageDataset,
        label_dir: str | Path,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.base = base
        self.label_dir = Path(label_dir)
        self.transform = transform
        missing = [n for n in base.names if not (self.label_dir / f"{n}.png").is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(base.names)} label maps are missing in {self.label_dir} "
                f"(e.g. {missing[0]}.png); run the stage that writes them first"
            )
        self.names = base.names
        self.class_names = base.class_names
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.base.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.base.names[i]
        image = tv_tensors.Image(
            torch.as_tensor(read_image(self.base.image_path(i))).permute(2, 0, 1).contiguous()
        )
        h, w = image.shape[-2:]
        label = torch.as_tensor(read_label_png(self.label_dir / f"{name}.png", expected_size=(h, w))).long()
        # plane 1 is 0 on real pixels; padding gets the mask fill (255)
        mask = tv_tensors.Mask(torch.stack([label, torch.zeros_like(label)]))
        sample: dict[str, Any] = {"image": image, "mask": mask}
        if self.transform is not None:
            sample = self.transform(sample)
        mask = sample["mask"]
        return {
            "name": name,
            "image": sample["image"],
            "mask": mask[0].long(),
            "padding": mask[1] == IGNORE_INDEX,
            "labels": torch.as_tensor(self.base.labels[i]),
        }
