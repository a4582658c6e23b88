"""A group of 2 client processes, each with its own buffer, as the ranks of an NCCL job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import Daemon

MEMBER = Path(__file__).with_name("group_member.py")


def test_two_processes(daemon: Daemon) -> None:
    procs = [
        subprocess.Popen([sys.executable, str(MEMBER), daemon.socket, "two-procs", "2", str(rank)], stdout=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    outs = []
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0, stdout
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    for out in outs:
        assert out["devices"] == [0, 1]
        assert out["allreduce_ok"] is True
        assert out["allgather"] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert out["left"] is True
    # Each member's k-th barrier ran as one collective: the same seqs, in order.
    assert outs[0]["seqs"] == outs[1]["seqs"] == sorted(outs[0]["seqs"])


def test_three_processes_on_a_world_of_three(daemon: Daemon) -> None:
    procs = [
        subprocess.Popen([sys.executable, str(MEMBER), daemon.socket, "three-procs", "3", str(rank)], stdout=subprocess.PIPE, text=True)
        for rank in range(3)
    ]
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0, stdout
        out = json.loads(stdout.strip().splitlines()[-1])
        assert out["allreduce_ok"] is True and out["allgather"] == [0] * 4 + [1] * 4 + [2] * 4
