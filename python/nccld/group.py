"""A group: client processes (one per GPU, typically) taking part in collectives together, each
with its own buffer, as the ranks of an NCCL job do. Made by :meth:`Client.join`."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .dtypes import DTypeLike

if TYPE_CHECKING:
    from .buffers import BufferRef
    from .client import Client

__all__ = ["Group"]


class Group:
    """One member's view of a formed group; its requests go over the client's connection.

    The daemon runs the k-th collective of every member together, so every member must call the
    same collectives in the same order (a disagreement fails that one with
    ``NCCLD_ERR_MISMATCH``). As a context manager it leaves on exit (unless it already left or
    the connection closed), which dissolves the group for every member.
    """

    def __init__(self, client: Client, name: str, number: int, size: int, rank: int, devices: list[int]) -> None:
        self.client = client
        #: The name every member joined by.
        self.name = name
        #: The number this connection names the group by on the wire.
        self.number = number
        self.size = size
        #: This member's rank in the group.
        self.rank = rank
        #: Each group rank's world rank (the device its buffers live on).
        self.devices = devices
        self.left = False

    def submit_collective(
        self,
        collective: str,
        send: BufferRef | None = None,
        recv: BufferRef | None = None,
        *,
        dtype: DTypeLike | None = None,
        op: str | None = None,
        count: int | None = None,
        root: int | None = None,
        timeout_ms: int | None = None,
    ) -> Future[int]:
        """This member's next collective, over its own ``send`` (and ``recv``, unless in place)
        buffer; ``root`` is a group rank. The future holds the ``seq`` once every member's part
        has finished."""
        return self.submit_collective_events(
            collective, send, recv, dtype=dtype, op=op, count=count, root=root, timeout_ms=timeout_ms
        )[0]

    def submit_collective_events(
        self,
        collective: str,
        send: BufferRef | None = None,
        recv: BufferRef | None = None,
        *,
        dtype: DTypeLike | None = None,
        op: str | None = None,
        count: int | None = None,
        root: int | None = None,
        timeout_ms: int | None = None,
        wait_event: bytes | None = None,
        done_event: bytes | None = None,
    ) -> tuple[Future[int], Future[None]]:
        """:meth:`submit_collective` with CUDA events (nccl backend; docs/protocol.md, "CUDA
        events"): the rank's stream waits on ``wait_event`` (a 64-byte CUDA IPC event handle the
        caller recorded on its stream before this call) before the collective, and records
        ``done_event`` right after it.

        Returns ``(result, launched)``. ``result`` holds the ``seq`` once the collective has
        finished on every rank, as always. ``launched`` is done once ``done_event`` is recorded
        on every rank's stream (the daemon's ``launched`` note): from then on, a stream that
        waits on ``done_event`` runs after the collective. If the answer comes without that
        note (the collective failed before it was launched, or this member's deadline passed),
        ``launched`` gets the answer: its error, or None. Without ``done_event`` no note comes
        and ``launched`` completes with the answer.
        """
        from .client import _then  # noqa: PLC0415 - circular at import time

        msg = self.client._collective_message(
            collective, send, recv, dtype, op, count, root, timeout_ms, self.number, wait_event, done_event
        )
        launched: Future[None] = Future()
        reply = self.client.submit_request(msg, launched=launched)
        return _then(reply, lambda r: int(r["seq"])), launched

    def collective(
        self,
        collective: str,
        send: BufferRef | None = None,
        recv: BufferRef | None = None,
        *,
        dtype: DTypeLike | None = None,
        op: str | None = None,
        count: int | None = None,
        root: int | None = None,
        timeout_ms: int | None = None,
    ) -> int:
        """:meth:`submit_collective`, waiting (for every other member too)."""
        return self.submit_collective(
            collective, send, recv, dtype=dtype, op=op, count=count, root=root, timeout_ms=timeout_ms
        ).result()

    def allreduce(self, send: BufferRef, recv: BufferRef | None = None, *, dtype: DTypeLike, op: str, count: int, timeout_ms: int | None = None) -> int:
        return self.collective("allreduce", send, recv, dtype=dtype, op=op, count=count, timeout_ms=timeout_ms)

    def broadcast(self, send: BufferRef, recv: BufferRef | None = None, *, dtype: DTypeLike, count: int, root: int, timeout_ms: int | None = None) -> int:
        return self.collective("broadcast", send, recv, dtype=dtype, count=count, root=root, timeout_ms=timeout_ms)

    def reduce(self, send: BufferRef, recv: BufferRef | None = None, *, dtype: DTypeLike, op: str, count: int, root: int, timeout_ms: int | None = None) -> int:
        return self.collective("reduce", send, recv, dtype=dtype, op=op, count=count, root=root, timeout_ms=timeout_ms)

    def allgather(self, send: BufferRef, recv: BufferRef | None = None, *, dtype: DTypeLike, count: int, timeout_ms: int | None = None) -> int:
        return self.collective("allgather", send, recv, dtype=dtype, count=count, timeout_ms=timeout_ms)

    def reducescatter(self, send: BufferRef, recv: BufferRef | None = None, *, dtype: DTypeLike, op: str, count: int, timeout_ms: int | None = None) -> int:
        return self.collective("reducescatter", send, recv, dtype=dtype, op=op, count=count, timeout_ms=timeout_ms)

    def alltoall(self, send: BufferRef, recv: BufferRef, *, dtype: DTypeLike, count: int, timeout_ms: int | None = None) -> int:
        return self.collective("alltoall", send, recv, dtype=dtype, count=count, timeout_ms=timeout_ms)

    def barrier(self, *, timeout_ms: int | None = None) -> int:
        return self.collective("barrier", timeout_ms=timeout_ms)

    def submit_leave(self) -> Future[None]:
        """Leaves, which dissolves the group: the other members' waiting and later collectives in
        it fail with ``NCCLD_ERR_PEER_LOST``. Sent after this member's earlier requests."""
        return self.client.submit_leave(self)

    def leave(self) -> None:
        """:meth:`submit_leave`, waiting until the group's communicator is freed."""
        self.client.leave(self)

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.left and not self.client.closed:
            self.leave()

    def __repr__(self) -> str:
        return f"Group({self.name!r}, number={self.number}, rank={self.rank}/{self.size}, devices={self.devices})"
