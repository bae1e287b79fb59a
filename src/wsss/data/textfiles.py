"""The small text files users write by hand (split lists, class lists, tags): read them leniently
where editors differ (a UTF-8 byte-order mark, Windows line ends) and strictly where a name could
point outside the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from wsss.errors import DataError


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """The text of ``path`` (UTF-8, a leading BOM dropped); ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc})") from exc


def check_name_inside(token: str, where: str) -> None:
    """Refuse an image name or path that climbs out of the dataset (``../x``) or is no name at all.

    ``where`` says where the token was written (``"LIST, line 3"``). Names are later reduced to their
    stem and looked up inside the dataset root, so ``../../etc/x`` would silently mean ``x``: it is
    refused instead, because the list then does not say what its author thinks it says.
    """
    parts = PurePosixPath(token.replace("\\", "/")).parts
    if ".." in parts or token.strip() in ("", "."):
        raise DataError(
            f"{where}: '{token}' is not an image name inside the dataset ('..' climbs out of it); "
            "write the image's name (e.g. 2007_000032 or cat1.jpg), or a path below the dataset root"
        )
    if "\x00" in token:
        raise DataError(f"{where}: the name {token!r} holds a NUL character; remove it")
