"""Built-in class lists by name, for commands that score VOC or COCO masks (issue 17: `wsss
evaluate` needed a class file of one's own for VOC)."""

from __future__ import annotations

import pytest

from wsss.data.base import class_list
from wsss.errors import DataError


def test_voc_and_coco_by_name() -> None:
    voc = class_list("voc")
    assert len(voc) == 21 and voc[0] == "background" and voc[1] == "aeroplane" and voc[20] == "tvmonitor"
    coco = class_list("COCO")
    assert len(coco) == 81 and coco[1] == "person" and coco[80] == "toothbrush"


def test_a_classes_file_or_an_error_that_says_what_to_give(tmp_path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("background\ncat\ndog\n")
    assert class_list(path) == ("background", "cat", "dog")
    with pytest.raises(DataError, match=r"class list 'vco' is neither voc nor coco nor a file"):
        class_list("vco")
