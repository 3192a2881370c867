"""Make test modules importable by name in dask worker processes.

pytest imports test files with ``--import-mode=importlib`` as ``tests.<dir>.<file>``; a
LocalCluster worker unpickling a function defined there must import that module too, so the
project root goes on the path of this process and, through PYTHONPATH, of the workers.
"""

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
