"""Every error code a client can bring about, from a real daemon, raised as NccldError."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import nccld
from nccld import ErrorCode, HostBuffer, NccldError, Slot
from nccld import _wire

from .conftest import WORLD, Daemon


def code_of(fn: Any, *args: Any, **kw: Any) -> NccldError:
    with pytest.raises(NccldError) as e:
        fn(*args, **kw)
    return e.value


@pytest.fixture
def regs(client: nccld.Client, buffers: list[HostBuffer]) -> list[nccld.Registration]:
    return [client.register(b) for b in buffers]


class Raw:
    """A bare connection, for what a well-behaved client never sends."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)

    def send(self, msg: dict[str, Any]) -> None:
        self.s.sendall(_wire.encode_frame(msg))

    def recv(self) -> dict[str, Any] | None:
        head = self.s.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return None
        (n,) = struct.unpack(">I", head)
        return msgpack.unpackb(self.s.recv(n, socket.MSG_WAITALL), raw=False)

    def closed(self) -> bool:
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[Raw]:
    r = Raw(daemon.socket)
    yield r
    r.close()


# -- frames and hello ----------------------------------------------------------------------------


def test_hello_required(raw: Raw) -> None:
    raw.send({"type": "register", "id": 5})
    reply = raw.recv()
    assert reply is not None and reply["code"] == ErrorCode.HELLO_REQUIRED and reply["id"] == 5
    raw.send({"type": "collective", "id": 6, "collective": "barrier"})
    reply = raw.recv()
    assert reply is not None and reply["code"] == ErrorCode.HELLO_REQUIRED and reply["id"] == 6
    raw.send({"type": "hello", "protocol": 2})
    assert raw.recv()["type"] == "hello"  # type: ignore[index]


def test_bad_hello_is_bad_request_and_may_be_corrected(raw: Raw) -> None:
    raw.send({"type": "hello", "protocol": "two"})
    reply = raw.recv()
    assert reply is not None and reply["code"] == ErrorCode.BAD_REQUEST
    raw.send({"type": "hello", "protocol": 2, "client": 7})
    assert raw.recv()["code"] == ErrorCode.BAD_REQUEST  # type: ignore[index]
    raw.send({"type": "hello", "protocol": 3, "client": "future client"})
    hello = raw.recv()
    assert hello is not None and hello["type"] == "hello" and hello["protocol"] == 2


def test_version(daemon: Daemon) -> None:
    e = code_of(nccld.Client, daemon.socket, protocol=1)
    assert e.code == ErrorCode.VERSION and e.details["supported"] == [2, 2]


def test_second_hello_is_unknown_type(client: nccld.Client) -> None:
    assert code_of(client.request, {"type": "hello", "protocol": 2}).code == ErrorCode.UNKNOWN_TYPE


def test_unknown_type(client: nccld.Client) -> None:
    assert code_of(client.request, {"type": "frobnicate"}).code == ErrorCode.UNKNOWN_TYPE


def test_bad_frame_keeps_the_connection(client: nccld.Client) -> None:
    client.send_raw(struct.pack(">I", 1) + b"\xc1")  # 0xc1: never used in MessagePack
    client.send_raw(_wire.HEADER.pack(3) + msgpack.packb([1, 2]))  # not a map
    for _ in range(2):
        msg = client.next_unsolicited(5)
        assert msg is not None and msg["code"] == ErrorCode.BAD_FRAME and msg["id"] is None
    assert client.barrier() > 0


def test_frame_too_large_closes(daemon: Daemon) -> None:
    c = daemon.connect()
    fut = c.submit_join("held-open", 2, 0, timeout_ms=30_000)
    c.send_raw(struct.pack(">I", 65537))
    msg = c.next_unsolicited(5)
    assert msg is not None and msg["code"] == ErrorCode.FRAME_TOO_LARGE and msg["id"] is None
    e = code_of(fut.result, timeout=10)
    assert e.code == ErrorCode.CONNECTION_CLOSED and e.details["cause"] == ErrorCode.FRAME_TOO_LARGE
    assert c.closed
    c.close()


def test_client_refuses_a_frame_above_max_frame_bytes(client: nccld.Client) -> None:
    e = code_of(client.request, {"type": "collective", "collective": "barrier", "pad": "x" * 70000})
    assert e.code == ErrorCode.FRAME_TOO_LARGE
    assert client.barrier() > 0  # nothing was sent: the connection goes on


# -- ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id, shown", [(-1, -1), (2**32, 2**32), ("seven", "seven"), (1.5, 1.5), (None, None), ([1], None)])
def test_bad_id(client: nccld.Client, bad_id: Any, shown: Any) -> None:
    msg: dict[str, Any] = {"type": "collective", "collective": "barrier"}
    if bad_id is not None:
        msg["id"] = bad_id
    client.send_raw(msg)
    reply = client.next_unsolicited(5)
    assert reply is not None and reply["code"] == ErrorCode.BAD_REQUEST and reply["id"] is None
    assert reply["invalidId"] == shown


def test_duplicate_id(client: nccld.Client) -> None:
    rid = 3_000_000_000
    fut = client.submit_request({"type": "join", "group": "dup", "size": 2, "rank": 0, "device": 0, "timeoutMs": 300}, id=rid)
    client.send_raw({"type": "nonsense", "id": rid})  # whatever else is wrong with it
    reply = client.next_unsolicited(5)
    assert reply is not None and reply["code"] == ErrorCode.DUPLICATE_ID and reply["id"] is None and reply["duplicateId"] == rid
    # The earlier request keeps its own reply: a join that nobody else joins times out.
    e = code_of(fut.result, timeout=10)
    assert e.code == ErrorCode.TIMEOUT
    # The client itself refuses an id it has in flight.
    fut2 = client.submit_request({"type": "join", "group": "dup2", "size": 2, "rank": 0, "device": 0, "timeoutMs": 300}, id=rid)
    assert code_of(client.submit_request, {"type": "collective", "collective": "barrier"}, id=rid).code == ErrorCode.DUPLICATE_ID
    assert code_of(fut2.result, timeout=10).code == ErrorCode.TIMEOUT


# -- collectives' fields -------------------------------------------------------------------------


def test_bad_dtype(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    assert code_of(client.allreduce, regs, "f128", "sum", 4).code == ErrorCode.BAD_DTYPE
    assert code_of(client.collective, "allgather", regs, dtype="complex", count=4).code == ErrorCode.BAD_DTYPE
    assert code_of(client.collective, "allgather", regs, count=4).code == ErrorCode.BAD_DTYPE  # missing


def test_bad_op(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    assert code_of(client.allreduce, regs, "f32", "xor", 4).code == ErrorCode.BAD_OP
    assert code_of(client.collective, "reducescatter", regs, dtype="f32", count=1).code == ErrorCode.BAD_OP  # missing


@pytest.mark.parametrize("count", [-1, 1.5, 2**53, "4"])
def test_bad_count(client: nccld.Client, regs: list[nccld.Registration], count: Any) -> None:
    assert code_of(client.allreduce, regs, "f32", "sum", count).code == ErrorCode.BAD_COUNT


def test_buffer_count(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    assert code_of(client.allreduce, regs[:2], "f32", "sum", 4).code == ErrorCode.BUFFER_COUNT
    assert code_of(client.collective, "broadcast", regs + regs[:1], dtype="f32", count=4, root=0).code == ErrorCode.BUFFER_COUNT
    e = code_of(client.collective, "allgather", regs, regs[:1], dtype="f32", count=4)
    assert e.code == ErrorCode.BUFFER_COUNT


def test_bad_request_shapes(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    cases: list[dict[str, Any]] = [
        {"type": "collective", "collective": "allscatter", "dtype": "f32", "count": 1, "send": [r.number for r in regs]},
        {"type": "collective", "collective": "broadcast", "dtype": "f32", "count": 1, "send": [r.number for r in regs]},  # no root
        {"type": "collective", "collective": "alltoall", "dtype": "f32", "count": 1, "send": [r.number for r in regs]},  # no recv
        {"type": "allreduce", "dtype": "f32", "op": "sum", "count": 1, "buffers": 7},
        {"type": "allreduce", "dtype": "f32", "op": "sum", "count": 1, "buffers": [r.number for r in regs], "timeoutMs": 0},
        {"type": "allreduce", "dtype": "f32", "op": "sum", "count": 1, "buffers": [r.number for r in regs], "timeoutMs": 600_001},
        {"type": "allreduce", "dtype": "f32", "op": "sum", "count": 1, "buffers": [{"buffer": regs[0].number, "offset": -4}, 1, 2]},
        {"type": "allreduce", "dtype": "f32", "op": "sum", "count": 1, "buffers": ["x", 1, 2]},
        {"type": "collective", "collective": "barrier", "group": "g"},
        {"type": "release", "buffers": []},
        {"type": "release", "buffers": list(range(1025))},
        {"type": "register"},  # host backend: no descriptor came with it
        {"type": "join", "group": "", "size": 1, "rank": 0, "device": 0},
        {"type": "join", "group": "x" * 129, "size": 1, "rank": 0, "device": 0},
        {"type": "join", "group": "g", "size": 0, "rank": 0, "device": 0},
        {"type": "join", "group": "g", "size": 2, "rank": 2, "device": 0},
        {"type": "leave", "group": "g"},
    ]
    for msg in cases:
        e = code_of(client.request, msg)
        assert e.code == ErrorCode.BAD_REQUEST, (msg, e)
    # root not below n
    e = code_of(client.broadcast, regs, dtype="f32", count=1, root=WORLD)
    assert e.code == ErrorCode.BAD_REQUEST


def test_no_such_buffer(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    e = code_of(client.allreduce, [regs[0], regs[1], 2**32 - 1], "f32", "sum", 1)
    assert e.code == ErrorCode.NO_SUCH_BUFFER
    e = code_of(client.request, {"type": "release", "buffers": [regs[0].number, 4_000_000_000, 4_000_000_001]})
    assert e.code == ErrorCode.NO_SUCH_BUFFER and sorted(e.details["buffers"]) == [4_000_000_000, 4_000_000_001]
    # Nothing was released: regs[0] still works.
    assert client.allreduce(regs, "f32", "sum", 1) > 0


def test_buffer_too_small(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    n = regs[0].nbytes // 4
    assert client.allreduce(regs, "f32", "sum", n) > 0
    assert code_of(client.allreduce, regs, "f32", "sum", n + 1).code == ErrorCode.BUFFER_TOO_SMALL
    assert code_of(client.allreduce, [Slot(r, 4) for r in regs], "f32", "sum", n).code == ErrorCode.BUFFER_TOO_SMALL
    # Checked for count 0 as well.
    assert code_of(client.allreduce, [Slot(r, regs[0].nbytes + 4) for r in regs], "f32", "sum", 0).code == ErrorCode.BUFFER_TOO_SMALL
    # allgather's recv holds count x n.
    e = code_of(client.collective, "allgather", regs, [Slot(r, 4 * (n - 2)) for r in regs], dtype="f32", count=1)
    assert e.code == ErrorCode.BUFFER_TOO_SMALL


def test_bad_alignment(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    assert code_of(client.allreduce, [Slot(r, 2) for r in regs], "f32", "sum", 1).code == ErrorCode.BAD_ALIGNMENT
    assert client.allreduce([Slot(r, 2) for r in regs], "f16", "sum", 1) > 0


def test_buffer_overlap(client: nccld.Client, regs: list[nccld.Registration]) -> None:
    assert code_of(client.allreduce, [regs[0], regs[0], regs[1]], "f32", "sum", 4).code == ErrorCode.BUFFER_OVERLAP
    e = code_of(client.allreduce, [Slot(regs[0], 0), Slot(regs[0], 8), regs[1]], "f32", "sum", 4)
    assert e.code == ErrorCode.BUFFER_OVERLAP
    # Next to each other is fine.
    assert client.allreduce([Slot(regs[0], 0), Slot(regs[0], 16), regs[1]], "f32", "sum", 4) > 0
    # send and recv sharing bytes other than in NCCL's in-place way.
    e = code_of(client.collective, "allreduce", regs, [Slot(r, 4) for r in regs], dtype="f32", op="sum", count=4)
    assert e.code == ErrorCode.BUFFER_OVERLAP


# -- registration --------------------------------------------------------------------------------


def test_wrong_backend(client: nccld.Client) -> None:
    assert code_of(client.register_ipc, b"\x00" * 64, 0).code == ErrorCode.WRONG_BACKEND
    e = code_of(client.request, {"type": "register", "ipc": b"\x01" * 63, "device": 0})
    assert e.code in (ErrorCode.BAD_REQUEST, ErrorCode.WRONG_BACKEND)


def _memfd(nbytes: int, *, allocate: bool = True, seals: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL) -> int:
    fd = os.memfd_create("bad", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if nbytes:
        os.ftruncate(fd, nbytes)
    if allocate and nbytes:
        os.posix_fallocate(fd, 0, nbytes)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_bad_buffer(client: nccld.Client) -> None:
    good = _memfd(4096)
    r, w = os.pipe()
    bad = {
        "no seals": _memfd(4096, seals=0),
        "may still grow": _memfd(4096, seals=fcntl.F_SEAL_SHRINK),
        "sparse: pages not reserved": _memfd(4096, allocate=False),
        "empty": _memfd(0),
        "write-sealed": _memfd(4096, seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE),
        "read-only": os.open(f"/proc/self/fd/{good}", os.O_RDONLY | os.O_CLOEXEC),
        "a pipe": r,
    }
    try:
        for what, fd in bad.items():
            e = code_of(client.register_fd, fd)
            assert e.code == ErrorCode.BAD_BUFFER, (what, e)
        assert client.register_fd(good).nbytes == 4096
    finally:
        for fd in [good, w, *bad.values()]:
            os.close(fd)


def test_register_with_two_descriptors_uses_the_first(client: nccld.Client) -> None:
    a, b = _memfd(4096), _memfd(8192)
    try:
        reply = client.request({"type": "register"}, [a, b])
        assert reply["bytes"] == 4096
        # The extra descriptor was closed, not kept for the next register frame.
        assert code_of(client.request, {"type": "register"}).code == ErrorCode.BAD_REQUEST
    finally:
        os.close(a)
        os.close(b)


# -- groups --------------------------------------------------------------------------------------


@pytest.fixture
def two(daemon: Daemon) -> Iterator[list[nccld.Client]]:
    cs = [daemon.connect(name=f"m{i}") for i in range(2)]
    yield cs
    for c in cs:
        c.close()


def form(clients: list[nccld.Client], name: str, devices: list[int] | None = None) -> list[nccld.Group]:
    futs = [c.submit_join(name, len(clients), r, device=None if devices is None else devices[r], timeout_ms=10_000) for r, c in enumerate(clients)]
    return [f.result(timeout=15) for f in futs]


def test_group_join_timeout(client: nccld.Client) -> None:
    t = time.monotonic()
    e = code_of(client.join, "lonely", 2, 0, timeout_ms=300)
    assert e.code == ErrorCode.TIMEOUT and time.monotonic() - t < 5
    # The claim was withdrawn: rank 0 can be claimed again.
    assert code_of(client.join, "lonely", 2, 0, timeout_ms=100).code == ErrorCode.TIMEOUT


def test_group_size(client: nccld.Client, daemon: Daemon) -> None:
    assert code_of(client.join, "big", WORLD + 1, 0, timeout_ms=100).code == ErrorCode.GROUP_SIZE
    with daemon.connect() as other:
        fut = other.submit_join("sized", 2, 0, timeout_ms=2000)
        time.sleep(0.1)
        assert code_of(client.join, "sized", 3, 1, timeout_ms=100).code == ErrorCode.GROUP_SIZE
        assert code_of(fut.result, timeout=10).code == ErrorCode.TIMEOUT


def test_group_rank_taken(two: list[nccld.Client], daemon: Daemon) -> None:
    fut = two[0].submit_join("taken", 2, 0, device=0, timeout_ms=3000)
    time.sleep(0.1)
    assert code_of(two[1].join, "taken", 2, 0, device=1, timeout_ms=100).code == ErrorCode.GROUP_RANK_TAKEN
    g1 = two[1].join("taken", 2, 1, device=1, timeout_ms=3000)
    g0 = fut.result(timeout=10)
    # A formed group takes no more members.
    with daemon.connect() as third:
        assert code_of(third.join, "taken", 2, 1, device=2, timeout_ms=100).code == ErrorCode.GROUP_RANK_TAKEN
    g0.leave()
    assert g1.number >= 0


def test_group_device_taken(two: list[nccld.Client]) -> None:
    fut = two[0].submit_join("samedev", 2, 0, device=1, timeout_ms=2000)
    time.sleep(0.1)
    assert code_of(two[1].join, "samedev", 2, 1, device=1, timeout_ms=100).code == ErrorCode.GROUP_DEVICE_TAKEN
    assert code_of(fut.result, timeout=10).code == ErrorCode.TIMEOUT


def test_wrong_device(client: nccld.Client) -> None:
    # A device not below the world's size is a wrong device.
    assert code_of(client.join, "nodev", 1, 0, device=WORLD, timeout_ms=100).code == ErrorCode.WRONG_DEVICE
    # Leaving device out is a malformed join, not a wrong device.
    assert code_of(client.request, {"type": "join", "group": "nodev", "size": 1, "rank": 0}).code == ErrorCode.BAD_REQUEST


def test_no_such_group(client: nccld.Client, two: list[nccld.Client]) -> None:
    assert code_of(client.request, {"type": "collective", "collective": "barrier", "group": 123456}).code == ErrorCode.NO_SUCH_GROUP
    assert code_of(client.leave, 123456).code == ErrorCode.NO_SUCH_GROUP
    # A group number names the group only on the connection that joined it.
    g0, _ = form(two, "mine")
    assert code_of(client.request, {"type": "collective", "collective": "barrier", "group": g0.number}).code == ErrorCode.NO_SUCH_GROUP


def test_mismatch(two: list[nccld.Client]) -> None:
    groups = form(two, "mismatch")
    bufs = [HostBuffer(4096) for _ in range(2)]
    try:
        f0 = groups[0].submit_collective("allreduce", bufs[0], dtype="f32", op="sum", count=4)
        f1 = groups[1].submit_collective("allreduce", bufs[1], dtype="f64", op="max", count=4)
        for f in (f0, f1):
            e = code_of(f.result, timeout=10)
            assert e.code == ErrorCode.MISMATCH
            assert e.details["mismatch"]["dtype"] == ["f32", "f64"] and e.details["mismatch"]["op"] == ["sum", "max"]
        # In place or not is part of the agreement too.
        f0 = groups[0].submit_collective("allreduce", bufs[0], dtype="f32", op="sum", count=4)
        f1 = groups[1].submit_collective("allreduce", bufs[1], Slot(bufs[1], 64), dtype="f32", op="sum", count=4)
        assert code_of(f0.result, timeout=10).code == ErrorCode.MISMATCH
        assert code_of(f1.result, timeout=10).code == ErrorCode.MISMATCH
        # The group goes on with the next one.
        assert len({f.result(timeout=10) for f in [g.submit_collective("barrier") for g in groups]}) == 1
    finally:
        for b in bufs:
            b.close()


def test_peer_lost(two: list[nccld.Client]) -> None:
    g0, g1 = form(two, "lost")
    waiting = g0.submit_collective("barrier")
    time.sleep(0.1)
    g1.leave()
    assert g1.left
    e = code_of(waiting.result, timeout=10)
    assert e.code == ErrorCode.PEER_LOST
    assert code_of(g0.barrier).code == ErrorCode.PEER_LOST
    # A member disconnecting does the same.
    h0, h1 = form(two, "lost-2")
    waiting = h1.submit_collective("barrier")
    two[0].close()
    assert code_of(waiting.result, timeout=10).code == ErrorCode.PEER_LOST


def test_group_collective_timeout(two: list[nccld.Client]) -> None:
    g0, g1 = form(two, "slow-peer")
    e = code_of(g0.barrier, timeout_ms=200)
    assert e.code == ErrorCode.TIMEOUT
    # It still runs once the other member sends its part.
    assert g1.barrier(timeout_ms=5000) > 0


def test_group_context_manager_leaves(two: list[nccld.Client]) -> None:
    g0, g1 = form(two, "ctx")
    with g0:
        pass
    assert g0.left
    assert code_of(g1.barrier).code == ErrorCode.PEER_LOST


def test_group_root_is_a_group_rank(two: list[nccld.Client]) -> None:
    g0, g1 = form(two, "root")
    bufs = [HostBuffer(4096) for _ in range(2)]
    try:
        e = code_of(g0.broadcast, bufs[0], dtype="u8", count=4, root=2)
        assert e.code == ErrorCode.BAD_REQUEST
    finally:
        for b in bufs:
            b.close()


# -- limits and the daemon's state: daemons of their own -------------------------------------------


@pytest.fixture(scope="module")
def small() -> Iterator[Daemon]:
    d = Daemon("--max-buffers", "2", "--max-connections", "3", "--hello-timeout-ms", "300", "--max-timeout-ms", "5000", "--timeout-ms", "2000", ranks=2)
    yield d
    d.stop()


def test_too_many_buffers(small: Daemon) -> None:
    with small.connect() as c:
        bufs = [HostBuffer(4096) for _ in range(3)]
        a, b = c.register(bufs[0]), c.register(bufs[1])
        assert code_of(c.register, bufs[2]).code == ErrorCode.TOO_MANY_BUFFERS
        a.release()
        assert c.register(bufs[2]).number > b.number
        for x in bufs:
            x.close()


def test_timeout_above_the_maximum(small: Daemon) -> None:
    with small.connect() as c:
        assert c.hello.max_timeout_ms == 5000 and c.hello.timeout_ms == 2000
        assert code_of(c.barrier, timeout_ms=5001).code == ErrorCode.BAD_REQUEST
        assert c.barrier(timeout_ms=5000) > 0


def test_hello_timeout(small: Daemon) -> None:
    r = Raw(small.socket)
    try:
        msg = r.recv()  # nothing sent: the daemon gives up after 300 ms
        assert msg is not None and msg["code"] == ErrorCode.HELLO_TIMEOUT and msg["id"] is None
        assert r.closed()
    finally:
        r.close()


def test_too_many_connections(small: Daemon) -> None:
    clients = [small.connect() for _ in range(3)]
    try:
        e = code_of(small.connect)
        assert e.code == ErrorCode.TOO_MANY_CONNECTIONS
    finally:
        for c in clients:
            c.close()
    time.sleep(0.2)
    small.connect().close()


def test_busy() -> None:
    d = Daemon("--max-in-flight", "2", ranks=2)
    try:
        a, b = d.connect(), d.connect()
        buf = HostBuffer(4096)
        reg = a.register(buf)
        g0, g1 = form([a, b], "busy")
        # Two collectives waiting for the other member: this process has 2 unfinished.
        waiting = [g0.submit_collective("barrier"), g0.submit_collective("barrier")]
        time.sleep(0.1)
        e = code_of(a.barrier)
        assert e.code == ErrorCode.BUSY
        # A release is never refused for it.
        reg.release()
        assert reg.released
        buf.close()
        # Member 1 is in this process too, so it cannot send its part (nor leave: BUSY as well);
        # its connection closing dissolves the group and ends the waiting collectives.
        assert code_of(g1.barrier).code == ErrorCode.BUSY
        b.close()
        for f in waiting:
            assert code_of(f.result, timeout=10).code == ErrorCode.PEER_LOST
        assert a.barrier() > 0
    finally:
        d.stop()


def test_shutting_down() -> None:
    d = Daemon("--enable-fault-injection", ranks=2)
    try:
        c = d.connect()
        bufs = [HostBuffer(4096) for _ in range(3)]
        spare = c.register(bufs[2])
        assert "hang" in d.debug("inject 0 hang")
        stuck = c.submit_allreduce(bufs[:2], "f32", "sum", 4)  # keeps the daemon busy while it stops
        time.sleep(0.2)
        d.terminate()
        time.sleep(0.3)
        e = code_of(c.barrier)
        assert e.code == ErrorCode.SHUTTING_DOWN
        # A release is never refused during shutdown.
        spare.release()
        # The stuck collective fails when the device processes are stopped. (docs/protocol.md says
        # DEVICE_LOST; this daemon answers SHUTTING_DOWN with `ranks`.)
        e = code_of(stuck.result, timeout=30)
        assert e.code in (ErrorCode.DEVICE_LOST, ErrorCode.SHUTTING_DOWN), e
        c.close()
    finally:
        d.stop()


def test_world_failures() -> None:
    """Faults injected through the debug socket: DEVICE_LOST, the hang watchdog's TIMEOUT with
    ranks, WORLD_FAILED once the restart budget is spent."""
    d = Daemon("--enable-fault-injection", "--hang-timeout-ms", "500", "--restart-limit", "2", ranks=2)
    try:
        with d.connect() as c:
            bufs = [HostBuffer(4096) for _ in range(2)]
            assert c.allreduce(bufs, "f32", "sum", 4) > 0
            d.debug("inject 1 crash")
            e = code_of(c.allreduce, bufs, "f32", "sum", 4)
            assert e.code == ErrorCode.DEVICE_LOST and e.details["ranks"] == [1]
            assert c.allreduce(bufs, "f32", "sum", 4, timeout_ms=20_000) > 0  # waits for the rebuilt world
            d.debug("inject 0 hang")
            e = code_of(c.allreduce, bufs, "f32", "sum", 4, timeout_ms=20_000)
            assert e.code == ErrorCode.TIMEOUT and e.details["ranks"] == [0]
            # An injection sent while the world is still being rebuilt can be lost: wait for it.
            deadline = time.monotonic() + 30
            while "world: ready" not in d.debug("status") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.allreduce(bufs, "f32", "sum", 4, timeout_ms=20_000) > 0
            d.debug("inject 0 crash-loop")
            codes = []
            for _ in range(10):
                try:
                    c.allreduce(bufs, "f32", "sum", 4, timeout_ms=20_000)
                except NccldError as err:
                    codes.append(err.code)
                    if err.code == ErrorCode.WORLD_FAILED:
                        break
            assert codes[-1] == ErrorCode.WORLD_FAILED, codes
            for b in bufs:
                b.close()
    finally:
        d.stop()
