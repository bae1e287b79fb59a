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


def test_foreground_only_and_background_first_files_name_the_same_classes(tmp_path) -> None:
    """The folder dataset's convention everywhere: a leading 'background' line is optional, so the
    same masks get the same class names from either file (a shifted table was issue 16's bug)."""
    fg, full = tmp_path / "fg.txt", tmp_path / "full.txt"
    fg.write_text("cat\ndog\n")
    full.write_text("background\ncat\ndog\n")
    assert class_list(fg) == class_list(full) == ("background", "cat", "dog")
