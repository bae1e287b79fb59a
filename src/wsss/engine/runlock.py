"""One writer per run directory (or per shard of it): a lock file made with ``O_EXCL``.

Two ``wsss run`` processes on one directory would train the same model twice and overwrite each
other's checkpoints; the second one is refused with a message naming the first. Shards of a map
stage share a directory on purpose, so a shard takes ``run.shard-I-of-N.lock`` instead: shards
of one split run side by side, two copies of one shard do not, and a whole-directory run excludes
every shard (and shards split another way). The file holds the holder's pid, host, command and
start time. A lock whose holder has ended on this host (killed with SIGKILL, a crashed node's
reboot) is stale and taken over with a log line; a lock from another host is never taken over,
since this host cannot tell whether that process still runs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from wsss.errors import WsssError
from wsss.processes import host_name, host_tag, process_alive, process_start_ticks

LOCK_NAME = "run.lock"
_SHARD_LOCK = re.compile(r"run\.shard-(\d+)-of-(\d+)\.lock")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_READ_TRIES = 5  # a lock file read while its maker is still writing it reads empty: look again
_ACQUIRE_TRIES = 5


def lock_name(shard: tuple[int, int] | None) -> str:
    """The lock file's name in the run directory: one for the whole run, one per shard."""
    return LOCK_NAME if shard is None else f"run.shard-{shard[0]}-of-{shard[1]}.lock"


def current_command() -> str:
    """This process's command line, as a person would type it (``wsss run ...``)."""
    argv = list(sys.argv) or [""]
    prog = Path(argv[0]).name
    if prog == "__main__.py":  # python -m wsss
        prog = f"python -m {Path(argv[0]).parent.name}"
    return " ".join([prog, shlex.join(argv[1:])]).strip()


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the process that made it."""

    path: Path
    pid: int
    host: str
    started: str
    command: str
    proc_start: int | None
    token: str
    shard: tuple[int, int] | None = None

    @classmethod
    def from_json(cls, path: Path, data: dict[str, Any]) -> LockHolder:
        return cls(
            path=path,
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=str(data.get("started", "?")),
            command=str(data.get("command", "?")),
            proc_start=data.get("proc_start"),
            token=str(data.get("token", "")),
            shard=tuple(data["shard"]) if data.get("shard") else None,
        )

    def describe(self) -> str:
        what = f"shard {self.shard[0]}/{self.shard[1]}, " if self.shard else ""
        return f"{what}pid {self.pid} on {self.host}, started {self.started}, command: {self.command}"

    def on_this_host(self) -> bool:
        return self.host == host_name()

    def is_stale(self) -> bool:
        """True when the holder ran on this host and has ended."""
        return self.on_this_host() and not process_alive(self.pid, self.proc_start)


def _read_holder(path: Path) -> LockHolder | None:
    """The lock file's holder; None when the file is gone. An unreadable file (a maker killed
    between creating and writing it) raises WsssError saying what to do."""
    for attempt in range(_READ_TRIES):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return LockHolder.from_json(path, json.loads(text))
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05 * (attempt + 1))
    raise WsssError(
        f"lock file {path} cannot be read (empty or damaged); if no wsss process uses "
        f"{path.parent}, delete {path} and rerun"
    )


def _held_error(run_dir: Path, what: str, holder: LockHolder) -> WsssError:
    if holder.on_this_host():
        hint = (
            f"wait for it to finish, or use another --out; lock file {holder.path} "
            "(a lock whose process has ended is stale and is taken over by the next run)"
        )
    else:
        hint = (
            f"wait for it to finish, or use another --out; this host cannot tell whether a process "
            f"on {holder.host} still runs: if it does not, the lock is stale: delete {holder.path} "
            "and rerun"
        )
    return WsssError(f"{what} {run_dir} is in use by another wsss process ({holder.describe()}); {hint}")


def _remove_stale(holder: LockHolder) -> bool:
    """Remove ``holder``'s stale lock file; False if another process got there first.

    The file is first renamed to a name of our own (atomic, one process wins), then checked to
    still be the stale one: between reading and renaming, another process may have taken over
    and written a fresh lock, which is then put back.
    """
    aside = holder.path.with_name(
        f"{holder.path.name}.stale-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    try:
        os.rename(holder.path, aside)
    except FileNotFoundError:
        return False
    try:
        moved = LockHolder.from_json(holder.path, json.loads(aside.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        moved = None
    if moved is not None and moved.token != holder.token:  # someone's fresh lock: put it back
        with contextlib.suppress(OSError):  # unless yet another lock is there by now
            os.link(aside, holder.path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


class RunLock:
    """The lock of one run directory (``shard=None``) or of one shard of it.

    ``acquire`` returns the stale holders it took over (for the log); ``release`` removes the
    file if it is still ours. As a context manager it releases on any exit, errors included.
    """

    def __init__(self, run_dir: str | os.PathLike, shard: tuple[int, int] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.shard = shard
        self.path = self.run_dir / lock_name(shard)
        self.token = secrets.token_hex(8)
        self.held = False

    def _what(self) -> str:
        return (
            "run directory"
            if self.shard is None
            else f"shard {self.shard[0]}/{self.shard[1]} of run directory"
        )

    def _content(self) -> str:
        pid = os.getpid()
        return json.dumps(
            {
                "pid": pid,
                "host": host_name(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": current_command(),
                "shard": list(self.shard) if self.shard is not None else None,
                "proc_start": process_start_ticks(pid),
                "token": self.token,
            },
            indent=2,
        )

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, _CREATE, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self._content() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.held = True
        return True

    def _conflicts(self) -> list[Path]:
        """Other lock files in the directory that exclude this one."""
        found = []
        for path in sorted(self.run_dir.glob("run*.lock")):
            if path == self.path:
                continue
            match = _SHARD_LOCK.fullmatch(path.name)
            if self.shard is None:  # a whole run excludes every shard
                excludes = match is not None
            else:  # a shard excludes the whole run and shards split another way
                excludes = path.name == LOCK_NAME or (
                    match is not None and int(match.group(2)) != self.shard[1]
                )
            if excludes:
                found.append(path)
        return found

    def acquire(self) -> list[LockHolder]:
        """Take the lock or raise WsssError naming its holder; return stale holders taken over."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        taken_over: list[LockHolder] = []
        for _ in range(_ACQUIRE_TRIES):
            if not self._create():
                holder = _read_holder(self.path)
                if holder is None:
                    continue  # released meanwhile
                if not holder.is_stale():
                    raise _held_error(self.run_dir, self._what(), holder)
                if _remove_stale(holder):
                    taken_over.append(holder)
                continue
            try:
                for path in self._conflicts():
                    holder = _read_holder(path)
                    if holder is None:
                        continue
                    if not holder.is_stale():
                        raise _held_error(self.run_dir, "run directory", holder)
                    if _remove_stale(holder):
                        taken_over.append(holder)
            except BaseException:
                self.release()
                raise
            return taken_over
        raise WsssError(
            f"could not take the lock {self.path} after {_ACQUIRE_TRIES} tries (other processes keep "
            "taking it); make sure only one wsss process runs on this directory"
        )

    def release(self) -> None:
        """Remove the lock file if this lock holds it (never another process's)."""
        if not self.held:
            return
        self.held = False
        try:
            holder = _read_holder(self.path)
        except WsssError:
            return
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
