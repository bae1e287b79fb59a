"""The header-only data check the pipeline runs before its first stage (issue 17): sizes are
compared without decoding pixels, every problem is in one message, sizes are width x height."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.test_bad_input import make_voc
from wsss.data.base import check_file_headers, header_problems
from wsss.data.images import format_size
from wsss.data.palette import write_label_png
from wsss.data.voc import build_voc
from wsss.errors import DataError


def test_every_bad_header_is_named_with_both_sizes(tmp_path) -> None:
    root = make_voc(tmp_path)  # 16 wide, 12 high
    ds = build_voc(root, "train")
    assert header_problems(ds) == []
    write_label_png(root / "SegmentationClass" / "img_a.png", np.ones((12, 20), np.uint8))
    write_label_png(root / "SegmentationClass" / "img_c.png", np.ones((16, 12), np.uint8))  # H and W swapped
    (root / "JPEGImages" / "img_b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as err:
        check_file_headers(ds)
    msg = str(err.value)
    assert msg.startswith(f"{root / 'ImageSets' / 'Segmentation' / 'train.txt'}: 3 of 3 images have a bad")
    assert "(sizes WxH)" in msg
    assert f"mask {root / 'SegmentationClass' / 'img_a.png'} is 20x12 but its image" in msg
    assert f"{root / 'JPEGImages' / 'img_a.jpg'} is 16x12" in msg
    assert f"mask {root / 'SegmentationClass' / 'img_c.png'} is 12x16 but its image" in msg
    assert f"image {root / 'JPEGImages' / 'img_b.jpg'} is corrupt" in msg
    assert "re-create these files, or remove their names from the split list" in msg


def test_sizes_are_written_width_first() -> None:
    assert format_size((375, 500)) == "500x375"  # (H, W) in, as VOC's 500x375 images are known
