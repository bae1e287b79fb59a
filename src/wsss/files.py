"""Atomic file output: write to a temporary name in the same folder, then rename.

A stage interrupted at any moment leaves either the old file or the complete new one,
never a truncated file; resumable stages rely on this to treat "file exists" as "done".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from wsss.processes import host_tag, process_alive

# Every temporary name carries this marker, so leftovers of a killed process can be recognised;
# after it come the writer's host tag and pid, so that a writer's own leftovers can be told from
# those of another process still writing into the same folder (shards).
TEMP_MARKER = ".wsss-tmp."
_OWNER = re.compile(re.escape(TEMP_MARKER) + r"([0-9a-f]{6})-(\d+)-")

_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new, empty temporary file; return (descriptor, path).

    Unlike ``tempfile.mkstemp`` (always 0600) the file gets mode 0666 minus the umask, as
    ``open()`` would give it, so outputs are as readable as any other file the user makes.
    """
    owner = f"{host_tag()}-{os.getpid()}-"
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{owner}{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, _CREATE_FLAGS, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {prefix}*{suffix} in {folder}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, f".{path.name}{TEMP_MARKER}", ".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for libraries that insist on writing by name (PIL, numpy, torch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, f".{path.stem}{TEMP_MARKER}", path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temp_file_owner(path: str | os.PathLike) -> tuple[str, int] | None:
    """(host tag, pid) of the process that created temporary file ``path``; None if unknown."""
    match = _OWNER.search(Path(path).name)
    return (match.group(1), int(match.group(2))) if match else None


def _writer_gone(path: Path) -> bool:
    """True when ``path``'s writer was this process or has ended (both on this host)."""
    owner = temp_file_owner(path)
    if owner is None or owner[0] != host_tag():
        return False  # a name without an owner, or a writer on another host: it may be writing
    return owner[1] == os.getpid() or not process_alive(owner[1])


def remove_stale_temp_files(root: str | os.PathLike, *, all_writers: bool = True) -> list[Path]:
    """Delete the temporary files killed writers left under ``root``; return what was removed.

    ``all_writers=True`` removes every one, which is only safe while no other process writes
    into ``root`` (the pipeline's sole writer, holding the run lock). ``all_writers=False``
    removes only those of this process and of ended processes on this host, which is safe
    beside other live writers (shards, ranks). The finished files themselves are never touched.
    """
    removed = []
    for path in Path(root).rglob(f".*{TEMP_MARKER}*"):
        if path.is_file() and (all_writers or _writer_gone(path)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty JSON (keys in insertion order)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
