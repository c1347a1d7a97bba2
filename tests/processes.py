"""Processes a test started, and only those: found through /proc by parent pid."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        child = int(stat.parent.name)
        ppid = int(text.rsplit(")", 1)[1].split()[1])  # the name may contain spaces and ')'
        parents.setdefault(ppid, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def freeze(pid: int) -> None:
    """Stop ``pid`` where it is (SIGSTOP), so that what it wrote can be counted before the kill."""
    os.kill(pid, signal.SIGSTOP)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def holding(root: int, path) -> list[int]:
    """Processes below ``root`` that have the file ``path`` open (e.g. the worker decoding it)."""
    found = []
    for pid in descendants(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def resume(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
