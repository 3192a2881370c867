"""Resident memory of a process tree, shared by the benchmark scripts (psutil)."""

from __future__ import annotations

import psutil


def children_rss(process: psutil.Process) -> int:
    """Bytes resident in all descendants of ``process`` (processes that exit meanwhile count 0)."""
    total = 0
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss(pid: int) -> int:
    """Bytes resident in process ``pid`` and all its descendants; 0 if it has exited."""
    try:
        root = psutil.Process(pid)
        return root.memory_info().rss + children_rss(root)
    except psutil.NoSuchProcess:
        return 0
