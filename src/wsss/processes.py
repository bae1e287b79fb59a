"""Who is writing: this host and whether a process on it is still running.

The run lock and the clean-up of temporary files both decide whether a file's writer is gone.
That can only be known for a process on this host; a writer on another host (a shared file
system) is always treated as alive. Only the standard library: ``files.py`` imports this.
"""

from __future__ import annotations

import hashlib
import os
import socket


def host_name() -> str:
    """This machine's name, as the lock file records it."""
    return socket.gethostname() or "unknown-host"


def host_tag() -> str:
    """Six hex digits naming this host, short enough for a temporary file's name."""
    return hashlib.sha1(host_name().encode()).hexdigest()[:6]


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc``); None where unknown.

    A pid is reused once its process is gone: the start time tells a lock's dead holder from a
    new process that happens to have the same pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its last ")"
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].startswith("Z")


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True while process ``pid`` on this host runs (a zombie has finished: not alive).

    With ``start_ticks`` (from :func:`process_start_ticks` when the pid was recorded), a process
    that reuses the pid does not count as the recorded one.
    """
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)  # PermissionError: it exists, owned by another user (alive so far)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if not isinstance(exc, PermissionError):
            return False
    if _is_zombie(pid):
        return False
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False
    return True
