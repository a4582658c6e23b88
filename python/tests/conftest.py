"""Real daemons for the tests: `node dist/daemon/main.js` as a subprocess, one per setting."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import nccld

from .daemon import DAEMON_JS, REPO, WORLD, Daemon, ensure_built  # noqa: F401 - tests import them from here


def gpu_daemon_or_skip() -> Daemon:
    """A daemon on the nccl backend, or a skip saying why there can be none here."""
    if "expandable_segments:True" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        pytest.skip("PYTORCH_CUDA_ALLOC_CONF has expandable segments, which have no CUDA IPC handle")
    try:
        return Daemon(backend="nccl", ranks=None)
    except RuntimeError as exc:
        pytest.skip(f"nccld --backend nccl did not start here: {exc}")


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    """The shared host-backend daemon: 3 ranks, default limits."""
    d = Daemon()
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[nccld.Client]:
    with daemon.connect(name="pytest") as c:
        yield c


@pytest.fixture
def buffers() -> Iterator[list[nccld.HostBuffer]]:
    """One 64 KiB HostBuffer per rank, closed after the test."""
    bufs = [nccld.HostBuffer(64 << 10) for _ in range(WORLD)]
    yield bufs
    for b in bufs:
        b.close()
