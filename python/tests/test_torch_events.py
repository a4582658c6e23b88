"""The client's side of CUDA events (what the torch backend's CUDA path stands on), without a GPU:
``waitEvent``/``doneEvent`` in a group collective, and the daemon's ``launched`` note, which
carries the request's id but must not answer it. A scripted server stands in for a GPU daemon;
the real host-backend daemon refuses events."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import nccld
from nccld import ErrorCode, NccldError, _wire

from .conftest import Daemon


class ScriptedDaemon:
    """Speaks just enough of the protocol: hello (nccl backend, one GPU), join, collectives.

    A collective's ``count`` picks what comes back: 1: launched, then (once ``release`` is set)
    the result; 2: an error and no launched; 3: the result without a launched note; 4: a
    launched note although no doneEvent was sent, then the result.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="nccld-scripted-")
        self.path = os.path.join(self.dir, "s.sock")
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(1)
        self.release = threading.Event()
        self.seen: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket) -> dict[str, Any] | None:
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return None
        (n,) = _wire.HEADER.unpack(head)
        return _wire.decode_body(conn.recv(n, socket.MSG_WAITALL))

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        send = lambda m: conn.sendall(_wire.encode_frame(m))  # noqa: E731
        with conn:
            self._read(conn)
            send({"type": "hello", "protocol": 2, "server": "scripted", "version": "0", "backend": "nccl", "worldSize": 1,
                  "devices": [0], "deviceUuids": ["GPU-00000000-0000-0000-0000-000000000000"], "maxFrameBytes": 65536,
                  "maxInFlight": 1024, "maxBuffers": 4096, "timeoutMs": 30000, "maxTimeoutMs": 600000})
            while True:
                msg = self._read(conn)
                if msg is None:
                    return
                self.seen.append(msg)
                rid = msg["id"]
                if msg["type"] == "join":
                    send({"type": "result", "id": rid, "group": 5, "size": 1, "rank": 0, "devices": [0]})
                elif msg["type"] == "leave":
                    send({"type": "result", "id": rid})
                elif msg["type"] == "collective":
                    count = msg.get("count")
                    if count == 1:
                        send({"type": "launched", "id": rid})
                        self.release.wait(10)
                        send({"type": "result", "id": rid, "seq": 10})
                    elif count == 2:
                        send({"type": "error", "id": rid, "code": "NCCLD_ERR_NCCL", "message": "scripted failure", "ranks": [0]})
                    elif count == 3:
                        send({"type": "result", "id": rid, "seq": 11})
                    elif count == 4:
                        send({"type": "launched", "id": rid})
                        send({"type": "result", "id": rid, "seq": 12})

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def scripted() -> Iterator[ScriptedDaemon]:
    s = ScriptedDaemon()
    yield s
    s.close()


WAIT = bytes(range(64))
DONE = bytes(range(64, 128))


def test_launched_is_a_note_not_the_answer(scripted: ScriptedDaemon) -> None:
    with nccld.connect(scripted.path) as client:
        group = client.join("g", 1, 0, device=0)
        result, launched = group.submit_collective_events("allreduce", 7, dtype="f32", op="sum", count=1, wait_event=WAIT, done_event=DONE)
        assert launched.result(timeout=10) is None
        # The note came; the request is still unanswered (its id in use) until the result.
        assert not result.done() and client.in_flight == 1
        scripted.release.set()
        assert result.result(timeout=10) == 10
        assert client.in_flight == 0
        assert client.next_unsolicited(timeout=0.1) is None  # the note went nowhere else
        sent = scripted.seen[-1]
        assert sent["waitEvent"] == WAIT and sent["doneEvent"] == DONE and sent["group"] == 5


def test_an_answer_without_a_note_completes_launched(scripted: ScriptedDaemon) -> None:
    with nccld.connect(scripted.path) as client:
        group = client.join("g", 1, 0, device=0)
        result, launched = group.submit_collective_events("allreduce", 7, dtype="f32", op="sum", count=2, wait_event=WAIT, done_event=DONE)
        for fut in (launched, result):
            with pytest.raises(NccldError) as e:
                fut.result(timeout=10)
            assert e.value.code == ErrorCode.NCCL and e.value.details["ranks"] == [0]
        result, launched = group.submit_collective_events("allreduce", 7, dtype="f32", op="sum", count=3, done_event=DONE)
        assert result.result(timeout=10) == 11 and launched.result(timeout=10) is None


def test_a_note_for_a_request_that_asked_for_none(scripted: ScriptedDaemon) -> None:
    with nccld.connect(scripted.path) as client:
        group = client.join("g", 1, 0, device=0)
        assert group.submit_collective("allreduce", 7, dtype="f32", op="sum", count=4).result(timeout=10) == 12
        assert client.next_unsolicited(timeout=0.1) is None


def test_launched_fails_when_the_connection_closes(scripted: ScriptedDaemon) -> None:
    client = nccld.connect(scripted.path)
    group = client.join("g", 1, 0, device=0)
    result, launched = group.submit_collective_events("allreduce", 7, dtype="f32", op="sum", count=99, done_event=DONE)
    client.close()
    for fut in (launched, result):
        with pytest.raises(NccldError) as e:
            fut.result(timeout=10)
        assert e.value.code in (ErrorCode.CONNECTION_CLOSED, ErrorCode.CLOSED)


def test_event_handles_must_be_64_bytes(scripted: ScriptedDaemon) -> None:
    with nccld.connect(scripted.path) as client:
        group = client.join("g", 1, 0, device=0)
        with pytest.raises(NccldError) as e:
            group.submit_collective_events("barrier", wait_event=b"short")
        assert e.value.code == ErrorCode.BAD_REQUEST and "64-byte" in e.value.message
        assert client.in_flight == 0


def test_the_host_backend_refuses_events(daemon: Daemon) -> None:
    with daemon.connect() as client, nccld.HostBuffer(4096) as buf:
        group = client.join("events-on-host", 1, 0, timeout_ms=5000)
        result, launched = group.submit_collective_events("allreduce", buf, dtype="f32", op="sum", count=4, wait_event=WAIT, done_event=DONE)
        for fut in (result, launched):
            with pytest.raises(NccldError) as e:
                fut.result(timeout=10)
            assert e.value.code == ErrorCode.WRONG_BACKEND
        # Without events the same collective runs.
        assert group.allreduce(buf, dtype="f32", op="sum", count=4) > 0
        group.leave()
