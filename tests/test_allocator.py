"""keep_freed_memory: large tensors come from the heap afterwards (checked in a fresh process)."""

import ctypes
import subprocess
import sys

import pytest

from psc_seg.allocator import keep_freed_memory

PROBE = """
import ctypes
import torch
from psc_seg.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped_by_a_large_tensor():
    before = libc.mallinfo2().hblks
    big = torch.empty(64 * 2**20, dtype=torch.uint8)  # above glibc's 32 MiB mmap ceiling
    return libc.mallinfo2().hblks - before

"""


def _probe(code: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE + code], capture_output=True, text=True,
                          check=True).stdout.split()


def test_large_tensors_come_from_the_heap_after_keep_freed_memory():
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    out = _probe("print(mapped_by_a_large_tensor(), keep_freed_memory(), mapped_by_a_large_tensor())")
    assert out == ["1", "True", "0"]  # one fresh mmap before, none after


def test_the_psc_seg_command_applies_it():
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    out = _probe("from typer.testing import CliRunner\n"
                 "from psc_seg.cli.main import app\n"
                 "print(mapped_by_a_large_tensor(), CliRunner().invoke(app, ['models', 'list']).exit_code, "
                 "mapped_by_a_large_tensor())")
    assert out == ["1", "0", "0"]


def test_psc_seg_malloc_system_opts_out(monkeypatch):
    monkeypatch.setenv("PSC_SEG_MALLOC", "system")
    assert keep_freed_memory() is False
