"""The connection: finding and checking the socket, hello, frames, registration, many requests
in flight, context managers, closing."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

import nccld
from nccld import ErrorCode, HostBuffer, NccldError, Slot
from nccld import _wire

from .conftest import WORLD, Daemon


def test_hello(client: nccld.Client) -> None:
    h = client.hello
    assert h.protocol == 2 and h.server == "nccld" and h.backend == "host"
    assert h.world_size == WORLD == client.world_size
    assert h.max_frame_bytes == 65536 and h.max_in_flight > 0 and h.max_buffers > 0
    assert h.timeout_ms == 30000 and h.max_timeout_ms == 600000
    assert isinstance(h.version, str) and h.raw["type"] == "hello"
    # The peer is the daemon itself (started by us, so our uid).
    pid, uid, _gid = client.peer
    assert uid == os.geteuid() and pid > 0


def test_frame_encoding_matches_the_protocols_bytes() -> None:
    """docs/protocol.md's "A session, byte by byte": the register frame's exact bytes."""
    frame = _wire.encode_frame({"type": "register", "id": 1})
    assert frame == bytes.fromhex("00 00 00 13 82 a4 74 79 70 65 a8 72 65 67 69 73 74 65 72 a2 69 64 01")
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert _wire.decode_body(frame[4:]) == {"type": "register", "id": 1}
    with pytest.raises(NccldError) as e:
        _wire.decode_body(msgpack.packb([1, 2]))
    assert e.value.code == ErrorCode.BAD_FRAME
    with pytest.raises(NccldError):
        _wire.decode_body(msgpack.packb({"a": 1}) + b"\x01")  # bytes after the map


def test_socket_path_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: str) -> None:
    env = {"NCCLD_SOCKET": "/x/y.sock", "XDG_RUNTIME_DIR": "/run/user/5"}
    assert _wire.default_socket_path(env) == "/x/y.sock"
    if os.getuid() == 0:
        assert _wire.own_socket_path({}) == "/run/nccld/nccld.sock"
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    assert _wire.own_socket_path({"XDG_RUNTIME_DIR": "/run/user/1234"}) == "/run/user/1234/nccld/nccld.sock"
    assert _wire.own_socket_path({"XDG_RUNTIME_DIR": "", "TMPDIR": "/var/tmp/"}) == "/var/tmp/nccld-1234/nccld.sock"
    assert _wire.own_socket_path({"TMP": "/t2"}) == "/t2/nccld-1234/nccld.sock"
    assert _wire.own_socket_path({"TEMP": "/t3"}) == "/t3/nccld-1234/nccld.sock"
    assert _wire.own_socket_path({}) == "/tmp/nccld-1234/nccld.sock"
    # An empty NCCLD_SOCKET counts as unset; the own path is used if anything exists there.
    own_dir = os.path.join(str(tmp_path), "nccld-1234")
    os.makedirs(own_dir)
    env2 = {"NCCLD_SOCKET": "", "TMPDIR": str(tmp_path)}
    own = os.path.join(own_dir, "nccld.sock")
    if not os.path.exists(_wire.SYSTEM_SOCKET):
        assert _wire.default_socket_path(env2) == own
    open(own, "w").close()
    assert _wire.default_socket_path(env2) == own


def test_default_socket_from_environment(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCCLD_SOCKET", daemon.socket)
    with nccld.connect() as c:
        assert c.path == daemon.socket and c.world_size == WORLD


def test_connect_errors(tmp_path: str) -> None:
    with pytest.raises(NccldError) as e:
        nccld.connect(os.path.join(str(tmp_path), "nothing.sock"))
    assert e.value.code == ErrorCode.CONNECT and e.value.details["errno"] is not None


def test_trust_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    _wire.check_server("p", 0, [])
    _wire.check_server("p", os.geteuid(), [])
    _wire.check_server("p", 4242, [4242])
    with pytest.raises(NccldError) as e:
        _wire.check_server("p", 4242, [])
    assert e.value.code == ErrorCode.CONNECT and e.value.details == {"uid": 4242}
    monkeypatch.setenv("NCCLD_TRUSTED_UIDS", "7, 4242,x")
    _wire.check_server("p", 4242, None)
    assert 7 in _wire.default_trusted_uids()


_SERVER = r"""
import os, socket, sys
path = sys.argv[1]
os.setgid(65534); os.setuid(65534)         # listen() as nobody: that is what SO_PEERCRED reports
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(5)
try:
    data = c.recv(100)
except socket.timeout:
    data = b"timeout"
print(repr(data), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_untrusted_server_gets_nothing() -> None:
    d = tempfile.mkdtemp(prefix="nccld-untrusted-")
    os.chmod(d, 0o777)
    path = os.path.join(d, "evil.sock")
    p = subprocess.Popen([sys.executable, "-c", _SERVER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        with pytest.raises(NccldError) as e:
            nccld.connect(path, trusted_uids=[])
        assert e.value.code == ErrorCode.CONNECT and "65534" in e.value.message
        # The client closed without sending a byte (the hello included).
        assert p.stdout.readline().strip() == "b''"
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_host_buffer_is_a_sealed_allocated_memfd() -> None:
    with HostBuffer(12345) as b:
        seals = fcntl.fcntl(b.fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
        assert not seals & (fcntl.F_SEAL_WRITE | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10))
        st = os.fstat(b.fd)
        assert st.st_size == 12345 and st.st_blocks * 512 >= 12345  # every page allocated
        assert os.readlink(f"/proc/self/fd/{b.fd}").startswith("/memfd:")
        assert fcntl.fcntl(b.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        a = b.array("u8")
        assert a.shape == (12345,) and not a.any()
        assert b.array("f64", 3, 8).shape == (3,)
        with pytest.raises(OSError):
            os.ftruncate(b.fd, 1)
    assert b.closed
    with pytest.raises(NccldError) as e:
        b.array("u8")
    assert e.value.code == ErrorCode.BUFFER_CLOSED
    with pytest.raises(NccldError) as e:
        HostBuffer(0)
    assert e.value.code == ErrorCode.BAD_COUNT


def test_register_once_per_connection(daemon: Daemon, client: nccld.Client) -> None:
    with HostBuffer(4096) as b:
        r1 = client.register(b)
        r2 = client.register(b)
        assert r1 is r2 and r1.nbytes == 4096
        with daemon.connect() as other:
            r3 = other.register(b)
            assert r3.number != r1.number
            # A number names the registration only on the connection that made it.
            with pytest.raises(NccldError) as e:
                other.allreduce([r1, r3, r3], "u8", "sum", 1)
            assert e.value.code == ErrorCode.NO_SUCH_BUFFER
        r1.release()
        assert r1.released
        with pytest.raises(NccldError) as e:
            client.allreduce([r1.number] * 3, "u8", "sum", 1)
        assert e.value.code == ErrorCode.NO_SUCH_BUFFER
        # Named again after the release: registered again, under a new number.
        r4 = client.register(b)
        assert r4.number != r1.number and not r4.released


def test_context_managers_release(daemon: Daemon) -> None:
    with daemon.connect() as c:
        bufs = [HostBuffer(4096) for _ in range(WORLD)]
        with c.register(bufs[0]) as reg:
            n = reg.number
        assert reg.released
        with pytest.raises(NccldError) as e:
            c.allreduce([n] * 3, "u8", "sum", 1)
        assert e.value.code == ErrorCode.NO_SUCH_BUFFER
        c.allreduce(bufs, "u8", "sum", 16)  # registers each on first use
        numbers = [c.register(b).number for b in bufs]
        for b in bufs:
            b.close()  # releases it from the client, then unmaps
        with pytest.raises(NccldError) as e:
            c.request({"type": "release", "buffers": numbers})
        assert e.value.code == ErrorCode.NO_SUCH_BUFFER and sorted(e.value.details["buffers"]) == sorted(numbers)
    assert c.closed
    with pytest.raises(NccldError) as e:
        c.barrier()
    assert e.value.code in (ErrorCode.CLOSED, ErrorCode.CONNECTION_CLOSED)


def test_release_of_many_numbers_is_split(daemon: Daemon) -> None:
    with daemon.connect() as c:
        regs = []
        with HostBuffer(4096) as b:
            for _ in range(1100):
                regs.append(c.register_fd(b.fd))  # each a registration of its own
        assert len({r.number for r in regs}) == 1100
        c.release(*regs)
        assert all(r.released for r in regs)


def test_many_requests_in_flight(client: nccld.Client, buffers: list[HostBuffer]) -> None:
    for r, b in enumerate(buffers):
        b.array("i64", 1024)[:] = np.arange(1024) * (r + 1)
    futs = [client.submit_allreduce(buffers, "i64", "max", 1024) for _ in range(500)]
    futs += [client.submit_collective("barrier") for _ in range(200)]
    assert client.in_flight <= 700
    seqs = [f.result(timeout=60) for f in futs]
    assert len(set(seqs)) == 700
    # One connection's collectives run in the order sent.
    assert seqs == sorted(seqs)
    assert client.in_flight == 0
    assert (buffers[1].array("i64", 1024) == np.arange(1024) * 3).all()


def test_requests_from_many_threads(daemon: Daemon) -> None:
    bufs = [HostBuffer(1 << 16) for _ in range(WORLD)]
    with daemon.connect() as c:
        # Each thread owns a slice of every rank's registration (no overlap between threads).
        regs = [c.register(b) for b in bufs]
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                slots = [Slot(r, t * 1024) for r in regs]
                for i in range(50):
                    for rank, r in enumerate(regs):
                        r.source.array("f32", 256, t * 1024)[:] = rank + i  # type: ignore[union-attr]
                    c.collective("allreduce", slots, dtype="f32", op="sum", count=256)
                    got = regs[0].source.array("f32", 256, t * 1024)  # type: ignore[union-attr]
                    assert (got == 3 * i + 3).all()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
    for b in bufs:
        b.close()


def test_ids_are_reused_and_explicit_ids(client: nccld.Client) -> None:
    big = 4_000_000_000
    reply = client.request({"type": "collective", "collective": "barrier"}, id=big)
    assert reply["id"] == big and reply["seq"] > 0
    # Unknown keys are ignored by the daemon.
    assert client.request({"type": "collective", "collective": "barrier", "fromTheFuture": [1, 2]})["type"] == "result"


def test_close_fails_pending_requests(daemon: Daemon) -> None:
    a, b = daemon.connect(), daemon.connect()
    try:
        # A join that waits for a member who never comes: pending until the connection closes.
        fut = a.submit_join("never-formed", 2, 0, timeout_ms=60_000)
        time.sleep(0.1)
        assert not fut.done() and a.in_flight == 1
        a.close()
        with pytest.raises(NccldError) as e:
            fut.result(timeout=10)
        assert e.value.code == ErrorCode.CONNECTION_CLOSED
        # The claim was withdrawn with the connection: rank 0 is free again.
        futs = [b.submit_join("never-formed", 2, 0, timeout_ms=5000), daemon.connect().submit_join("never-formed", 2, 1, timeout_ms=5000)]
        groups = [f.result(timeout=10) for f in futs]
        assert groups[0].size == 2
        groups[1].client.close()
    finally:
        a.close()
        b.close()


def test_daemon_gone_fails_pending_requests() -> None:
    d = Daemon(ranks=2)
    try:
        c = d.connect()
        fut = c.submit_join("g", 2, 0, timeout_ms=60_000)
        d.proc.kill()
        with pytest.raises(NccldError) as e:
            fut.result(timeout=10)
        assert e.value.code == ErrorCode.CONNECTION_CLOSED
        assert c.closed
        with pytest.raises(NccldError) as e:
            c.barrier()
        assert e.value.code == ErrorCode.CONNECTION_CLOSED
        c.close()
    finally:
        d.stop()


def test_dtype_names() -> None:
    assert nccld.dtype_name(np.float32) == "f32"
    assert nccld.dtype_name(np.dtype("int8")) == "i8"
    assert nccld.dtype_name("float16") == "f16"
    assert nccld.dtype_name("bfloat16") == "bf16"
    assert nccld.dtype_name("bf16") == "bf16"
    assert nccld.dtype_name("u64") == "u64"
    assert nccld.dtype_name("nonsense") == "nonsense"  # left for the daemon to refuse
    assert nccld.itemsize("bf16") == 2 and nccld.itemsize(np.uint64) == 8
    x = np.array([1.0, -2.5, 3.140625, 65504.0], dtype=np.float32)
    assert (nccld.bf16_to_f32(nccld.f32_to_bf16(x))[:3] == x[:3]).all()


def test_error_is_one_class_and_pickles() -> None:
    import pickle

    e = NccldError(ErrorCode.MISMATCH, "m", {"mismatch": {"dtype": ["f32", "f64"]}})
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.code, e2.message, e2.details) == (e.code, e.message, e.details)
    # Every code of docs/protocol.md's table is known here.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    table = doc[doc.index("## Error codes") :]
    documented = set(re.findall(r"^\| `(NCCLD_ERR_[A-Z_]+)` \|", table, re.M))
    assert len(documented) > 40 and documented <= ErrorCode.all(), documented - ErrorCode.all()
    err = NccldError.from_reply({"type": "error", "id": 3, "code": "NCCLD_ERR_NEW_THING", "message": "x", "ranks": [1]})
    assert err.code == "NCCLD_ERR_NEW_THING" and err.details == {"ranks": [1]}
