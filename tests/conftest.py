"""Make test modules importable by name in dask worker processes.

pytest imports test files with ``--import-mode=importlib`` as ``tests.<dir>.<file>``; a
LocalCluster worker unpickling a function defined there must import that module too, so the
project root goes on the path of this process and, through PYTHONPATH, of the workers.
"""

import os
import sys
import warnings
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)


class NoteLog:
    """The notes (:class:`psc_seg.errors.Note` warnings) that code under test gave."""

    def __init__(self, caught: list) -> None:
        self._caught = caught

    def take(self) -> list[str]:
        """The notes given since the last ``take``, in order."""
        from psc_seg.errors import Note

        messages = [str(w.message) for w in self._caught if issubclass(w.category, Note)]
        self._caught.clear()
        return messages


@pytest.fixture
def notes():
    from psc_seg.errors import Note

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Note)
        yield NoteLog(caught)


def _vivid(model):
    """``model`` with doubled weights and random batch-norm running statistics (in place):
    the coarse levels of a tiny network then visibly change its output."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def vivid():
    """:func:`_vivid`: larger weights and running statistics for a tiny network."""
    return _vivid
