"""Linux process plumbing: children that die with their parent, reaping orphans, and telling a
live process from a stale pid (a pid file may outlive its process, and the pid be reused).

Everything here reads ``/proc`` or calls ``prctl(2)``; on another system the prctl calls do
nothing and the ``/proc`` readers see no process.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PROC = Path("/proc")


def _prctl(option: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}): {os.strerror(errno)}")


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a child: get ``sig`` when the parent dies; exit now if it has died already.

    ``parent_pid`` is the parent's pid as the parent saw it before starting the child: the
    check closes the race of a parent that dies before the child asked to follow it.
    """
    _prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os._exit(1)


def become_subreaper(on: bool = True) -> None:
    """Orphaned descendants (a killed service's workers) become this process's children."""
    _prctl(PR_SET_CHILD_SUBREAPER, int(on))


def cmdline(pid: int) -> list[str]:
    """The arguments of a running process; empty for no such process, a zombie or a kernel
    thread."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def runs_module(args: list[str], module: str) -> bool:
    """``args`` is ``… -m <module> …`` (how every service and the supervisor are started)."""
    return any(a == "-m" and b == module for a, b in itertools.pairwise(args))


def state(pid: int) -> str | None:
    """The process state letter (``R``, ``S``, ``Z`` for a zombie …), None if there is none."""
    stat = _stat(pid)
    return stat[0] if stat else None


def parent(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[1]) if stat else None


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (zombies included)."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and parent(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (or stopped), not a zombie and not gone."""
    return state(pid) not in (None, "Z", "X")


def signal_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
