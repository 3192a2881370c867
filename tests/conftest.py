"""Make test modules importable by name in dask worker processes; predict's auto precision float32.

pytest imports test files with ``--import-mode=importlib`` as ``tests.<dir>.<file>``; a
LocalCluster worker unpickling a function defined there must import that module too, so the
project root goes on the path of this process and, through PYTHONPATH, of the workers.
"""

import http.server
import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
# predict's precision "auto" is float32 on every machine (in subprocesses too): results compared
# to float32 references must not depend on whether the CPU has bfloat16 instructions; the tests
# of auto's choice (tests/engine/test_precision.py) lift it
os.environ["PSC_SEG_AUTO_BF16"] = "0"


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


@pytest.fixture(scope="session")
def s3_server():
    """An S3 server on 127.0.0.1 (moto's server mode, in a thread of this process), named by
    ``AWS_ENDPOINT_URL`` and dummy credentials in the environment of this process and of the
    commands it starts; yields its endpoint URL. Offline: nothing leaves the machine."""
    import socket

    try:
        from moto.moto_server import threaded_moto_server
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("the S3 tests need moto's server: pip install 'moto[server]' (or pip install '.[test]')")

    class Handler(threaded_moto_server.MotoRequestHandler):
        def setup(self):  # replies go out at once, not after the client's delayed ACK (40 ms a request)
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    threaded_moto_server.MotoRequestHandler = Handler
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in (*env, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """``s3_bucket(suffix="")``: a new, empty bucket on :func:`s3_server`, named after the test
    (and ``suffix``); returns ``s3://<name>``."""
    import re

    try:
        import s3fs
    except ImportError:
        pytest.fail("the S3 tests need s3fs: pip install s3fs (or pip install '.[test]')")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})

    def make(suffix: str = "") -> str:
        name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + suffix
        if fs.exists(name):
            fs.rm(name, recursive=True)
        fs.mkdir(name)
        fs.invalidate_cache()
        return f"s3://{name}"

    return make


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """``serve(folder) -> "http://127.0.0.1:<port>"``: python's HTTP server on ``folder``, in a
    thread, stopped after the test (a stand-in for an https:// store, offline)."""
    import functools
    import threading

    servers = []

    def serve(folder) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
