"""What a dataset's tags let a classifier learn, told before any training.

Image-level tags only localise a class through the images that lack it: a tag that nearly every
image carries, or two tags that nearly always come together, give the classifier no contrast, and
its CAMs then fire on whatever those images share (the background, the other class). ``wsss data
check`` prints this report and every run logs its warnings before the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# a tag on more than this share of the training images gives too few images without it
FREQUENT_TAG = 0.8
# two tags whose images overlap this much, both ways, cannot be told apart by their tags
CO_OCCURRENCE = 0.9
# pairs seen on fewer images than this are too rare to warn about
MIN_PAIR_IMAGES = 5


@dataclass(frozen=True)
class TagReport:
    """Per-class tag counts and the warnings they raise, for ``num_images`` images."""

    num_images: int
    class_names: tuple[str, ...]  # foreground classes, in label order
    counts: tuple[int, ...]  # images tagged with each class
    untagged: int  # images with no foreground tag
    pairs: tuple[tuple[str, str, int, float, float], ...]  # (a, b, images with both, P(b|a), P(a|b))
    warnings: tuple[str, ...] = field(default=())

    def shares(self) -> list[tuple[str, int, float]]:
        """(class, images tagged, their share of all images) per class, in label order."""
        n = max(self.num_images, 1)
        return [(c, k, k / n) for c, k in zip(self.class_names, self.counts)]

    def table(self) -> str:
        """One line per class: index, name, images tagged and their share."""
        width = max((len(c) for c in self.class_names), default=5)
        return "\n".join(
            f"  {i:>3}  {c:<{width}}  {k:>7}  {100 * share:5.1f} %"
            for i, (c, k, share) in enumerate(self.shares(), 1)
        )

    def pair_lines(self, most: int = 5) -> list[str]:
        """The ``most`` most entangled tag pairs (by the smaller of the two conditional shares)."""
        ranked = sorted(self.pairs, key=lambda p: -min(p[3], p[4]))[:most]
        return [
            f"  {a} & {b}: {both} images; {100 * p_ba:.0f} % of {a} images also {b}, "
            f"{100 * p_ab:.0f} % of {b} images also {a}"
            for a, b, both, p_ba, p_ab in ranked
        ]


def tag_report(labels: np.ndarray, class_names: Sequence[str]) -> TagReport:
    """Tag frequencies, co-occurrence and warnings of an (N, K) multi-hot ``labels`` matrix.

    ``class_names`` are the K foreground classes (background excluded), in column order.
    """
    tags = np.asarray(labels) > 0
    if tags.ndim != 2 or tags.shape[1] != len(class_names):
        raise ValueError(f"labels must be (N, {len(class_names)}), got shape {tags.shape}")
    n = tags.shape[0]
    counts = tags.sum(axis=0).astype(np.int64)
    both = tags.T.astype(np.int64) @ tags.astype(np.int64)  # (K, K) images carrying both tags
    names = tuple(class_names)
    warnings: list[str] = [f"no image is tagged with '{c}'" for c, k in zip(names, counts) if k == 0]
    for c, k in zip(names, counts):
        if n and k / n > FREQUENT_TAG:
            warnings.append(
                f"'{c}' is tagged on {k} of {n} images ({100 * k / n:.0f} %): a classifier cannot "
                f"learn where {c} is from a tag that nearly every image carries; add images without "
                f"{c}, or leave {c} out of the tags"
            )
    pairs = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            k = int(both[a, b])
            if k == 0:
                continue
            p_ba, p_ab = k / counts[a], k / counts[b]
            pairs.append((names[a], names[b], k, float(p_ba), float(p_ab)))
            if k >= MIN_PAIR_IMAGES and min(p_ba, p_ab) >= CO_OCCURRENCE:
                warnings.append(
                    f"'{names[a]}' and '{names[b]}' come together on {k} images ({100 * p_ba:.0f} % of "
                    f"{names[a]}'s, {100 * p_ab:.0f} % of {names[b]}'s): their tags cannot tell the "
                    f"classifier which pixels are which; add images with only one of them, or merge them"
                )
    untagged = int((~tags.any(axis=1)).sum())
    return TagReport(n, names, tuple(int(k) for k in counts), untagged, tuple(pairs), tuple(warnings))
