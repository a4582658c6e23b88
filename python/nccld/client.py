"""The connection to a daemon: one Unix socket, many requests in flight, replies matched by id.

A reader thread reads every frame the daemon sends and completes the
:class:`concurrent.futures.Future` of the request with that id. ``submit_*`` methods send a
request and return its future at once; the other methods send and wait for the reply.
Callbacks added to those futures run on the reader thread: keep them short, and do not wait on
another reply from inside one.
"""

from __future__ import annotations

import array
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _wire
from .buffers import IPC_HANDLE_BYTES, BufferRef, CudaAllocation, HostBuffer, Registration, Slot, cuda_allocation
from .dtypes import DTypeLike, dtype_name
from .errors import ErrorCode, NccldError
from .group import Group

__all__ = ["Client", "Hello", "connect", "PROTOCOL_VERSION", "MAX_RELEASE_BUFFERS"]

PROTOCOL_VERSION = _wire.PROTOCOL_VERSION
#: Most registration numbers one release request may carry; longer lists are split.
MAX_RELEASE_BUFFERS = 1024

T = TypeVar("T")
U = TypeVar("U")
Message = dict[str, Any]


@dataclass(frozen=True)
class Hello:
    """What the daemon said of itself in its hello reply."""

    protocol: int
    server: str
    version: str
    #: ``"host"`` (shared memory, reductions on the CPU) or ``"nccl"`` (GPUs).
    backend: str
    #: Ranks in the world: a single-client collective names one buffer per rank.
    world_size: int
    #: Each rank's CUDA ordinal as the daemon numbers GPUs (``None`` entries on the host backend).
    devices: list[int | None] | None
    #: Each rank's GPU UUID, ``"GPU-..."`` (``None`` entries on the host backend).
    device_uuids: list[str | None] | None
    max_frame_bytes: int
    max_in_flight: int
    max_buffers: int
    timeout_ms: int
    max_timeout_ms: int
    #: The reply as sent, unknown keys included.
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_reply(cls, msg: Mapping[str, Any]) -> Hello:
        return cls(
            protocol=int(msg.get("protocol", 0)),
            server=str(msg.get("server", "")),
            version=str(msg.get("version", "")),
            backend=str(msg.get("backend", "")),
            world_size=int(msg.get("worldSize", 0)),
            devices=msg.get("devices"),
            device_uuids=msg.get("deviceUuids"),
            max_frame_bytes=int(msg.get("maxFrameBytes", 65536)),
            max_in_flight=int(msg.get("maxInFlight", 0)),
            max_buffers=int(msg.get("maxBuffers", 0)),
            timeout_ms=int(msg.get("timeoutMs", 0)),
            max_timeout_ms=int(msg.get("maxTimeoutMs", 0)),
            raw=dict(msg),
        )


def _then(fut: Future[T], fn: Callable[[T], U]) -> Future[U]:
    """A future for ``fn(fut.result())``; an exception of either is the new future's."""
    out: Future[U] = Future()

    def done(f: Future[T]) -> None:
        try:
            out.set_result(fn(f.result()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            out.set_exception(exc)

    fut.add_done_callback(done)
    return out


def _all(futs: Sequence[Future[Any]]) -> Future[None]:
    """Done when every one is; the first exception (in order) is its exception."""
    out: Future[None] = Future()
    if not futs:
        out.set_result(None)
        return out
    left = [len(futs)]
    lock = threading.Lock()

    def done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        for f in futs:
            if f.exception() is not None:
                out.set_exception(f.exception())
                return
        out.set_result(None)

    for f in futs:
        f.add_done_callback(done)
    return out


class Client:
    """One connection to nccld.

    Connecting finds the socket (``path``, else docs/protocol.md's "Finding the socket"), checks
    with ``SO_PEERCRED`` that root, this user or a trusted uid serves it (else
    ``NCCLD_ERR_CONNECT`` and nothing is sent), and completes the hello exchange.

    ``trusted_uids`` replaces the default extra trusted users (the ``nccld`` user from
    /etc/passwd and ``NCCLD_TRUSTED_UIDS``); root and this process's effective uid are always
    trusted. ``protocol`` is the highest version announced in the hello (2; lower values are for
    testing the daemon's refusal). As a context manager, the client closes on exit, which
    releases everything registered on the connection.

    Do not share a Client across ``fork()``: make one in each process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        trusted_uids: Iterable[int] | None = None,
        protocol: int = PROTOCOL_VERSION,
    ) -> None:
        self.path = os.fspath(path) if path is not None else _wire.default_socket_path()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Future[Message]] = {}
        # Futures for the `launched` notes of collectives sent with a doneEvent, by request id.
        self._launched: dict[int, Future[None]] = {}
        self._next_id = 1
        self._closed: NccldError | None = None
        self._closing = False
        self._unsolicited: queue.Queue[Message] = queue.Queue()
        self._last_connection_error: Message | None = None
        # Registrations of this connection by what was registered (a HostBuffer, or a CUDA
        # allocation's (device, handle)), as futures so that concurrent users share one.
        self._registrations: dict[object, Future[Registration]] = {}
        self._local_devices: dict[str, int] | None = None
        self._buf = bytearray()

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock = sock
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                raise NccldError(
                    ErrorCode.CONNECT,
                    f"cannot reach nccld at {self.path}: {exc.strerror or exc}",
                    {"errno": exc.errno, "path": self.path},
                ) from None
            #: (pid, uid, gid) of whoever listens on the socket.
            self.peer = _wire.peer_credentials(sock)
            _wire.check_server(self.path, self.peer[1], trusted_uids)
            hello: Message = {"type": "hello", "protocol": protocol}
            if name is not None:
                hello["client"] = name
            try:
                sock.sendall(_wire.encode_frame(hello))
                reply = self._read_frame()
            except socket.timeout:
                raise NccldError(ErrorCode.CONNECT, f"no hello from nccld at {self.path} within {timeout} s") from None
            except OSError as exc:
                raise NccldError(ErrorCode.CONNECTION_CLOSED, f"the connection to nccld at {self.path} failed: {exc}") from None
            if reply is None:
                raise NccldError(ErrorCode.CONNECTION_CLOSED, f"nccld at {self.path} closed the connection before its hello")
            if reply.get("type") == "error":
                raise NccldError.from_reply(reply)
            if reply.get("type") != "hello":
                raise NccldError(ErrorCode.BAD_FRAME, f"nccld answered the hello with {reply.get('type')!r}")
            #: The daemon's hello reply.
            self.hello = Hello.from_reply(reply)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._reader = threading.Thread(target=self._read_loop, name=f"nccld-reader-{self.path}", daemon=True)
        self._reader.start()

    # -- properties ----------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.hello.world_size

    @property
    def backend(self) -> str:
        return self.hello.backend

    @property
    def closed(self) -> bool:
        return self._closed is not None or self._closing

    @property
    def in_flight(self) -> int:
        """Requests sent on this connection and not yet answered."""
        with self._lock:
            return len(self._pending)

    # -- frames --------------------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_frame(self) -> Message | None:
        """The next frame's message; None at the end of the stream."""
        while True:
            head = self._read_exact(4)
            if head is None:
                return None
            (length,) = _wire.HEADER.unpack(head)
            if length > _wire.MAX_REPLY_BYTES:
                raise NccldError(ErrorCode.FRAME_TOO_LARGE, f"nccld sent a frame of {length} bytes")
            body = self._read_exact(length)
            if body is None:
                return None
            try:
                return _wire.decode_body(body)
            except NccldError:
                continue  # a frame we cannot read names no request: skip it

    def _read_loop(self) -> None:
        why: NccldError | None = None
        try:
            while True:
                msg = self._read_frame()
                if msg is None:
                    break
                self._dispatch(msg)
        except NccldError as exc:
            why = exc
        except OSError as exc:
            why = NccldError(ErrorCode.CONNECTION_CLOSED, f"the connection to nccld failed: {exc}")
        finally:
            self._on_closed(why)

    def _dispatch(self, msg: Message) -> None:
        sent_id = msg.get("id")
        kind = msg.get("type")
        fut = None
        launched: Future[None] | None = None
        rid = sent_id if isinstance(sent_id, int) and not isinstance(sent_id, bool) else None
        if kind == "launched" and rid is not None:
            # A note that a collective is on every rank's stream (its doneEvent recorded): it
            # carries the request's id but is not its answer; the request stays pending.
            with self._lock:
                launched = self._launched.pop(rid, None)
                known = launched is not None or rid in self._pending
            if launched is not None:
                if not launched.done():
                    launched.set_result(None)
                return
            if known:
                return  # a request sent without asking for the note: nothing waits on it
        if kind in ("result", "error") and rid is not None:
            with self._lock:
                fut = self._pending.pop(rid, None)
                if fut is not None:
                    launched = self._launched.pop(rid, None)
        if launched is not None and not launched.done():
            # Answered without a launched note (failed before it was launched, or this member's
            # own deadline): the note will not come; its waiters get the answer.
            if kind == "error":
                launched.set_exception(NccldError.from_reply(msg))
            else:
                launched.set_result(None)
        if fut is None:
            # An error about the connection or a request without a usable id (id: null), or
            # the reply to a frame sent with send_raw().
            if msg.get("type") == "error" and sent_id is None:
                self._last_connection_error = msg
            self._unsolicited.put(msg)
            return
        if msg.get("type") == "error":
            fut.set_exception(NccldError.from_reply(msg))
        else:
            fut.set_result(msg)

    def _on_closed(self, why: NccldError | None) -> None:
        # The daemon's own last word, if it said why it closed (FRAME_TOO_LARGE, SHUTTING_DOWN...).
        last = self._last_connection_error
        if why is None:
            if last is not None:
                why = NccldError(
                    ErrorCode.CONNECTION_CLOSED,
                    f"nccld closed the connection after {last.get('code')}: {last.get('message')}",
                    {"cause": last.get("code")},
                )
            else:
                why = NccldError(ErrorCode.CONNECTION_CLOSED, "the connection to nccld closed")
        with self._lock:
            self._closed = why
            pending: list[Future[Any]] = [*self._pending.values(), *self._launched.values()]
            self._pending.clear()
            self._launched.clear()
            regs = list(self._registrations.items())
            self._registrations.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(why)
        for key, rf in regs:
            if isinstance(key, HostBuffer):
                key._forget(self)
            if rf.done() and rf.exception() is None:
                rf.result().released = True

    def _send(self, frame: bytes, fds: Sequence[int] = ()) -> None:
        with self._send_lock:
            if fds:
                # The descriptors ride on the frame's own bytes: one sendmsg (docs/protocol.md).
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sent = self._sock.sendmsg([frame], anc)
                if sent < len(frame):
                    self._sock.sendall(frame[sent:])
            else:
                self._sock.sendall(frame)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._closing:
            raise NccldError(ErrorCode.CLOSED, "this client is closed")

    # -- requests ------------------------------------------------------------------------------

    def submit_request(
        self,
        msg: Mapping[str, Any],
        fds: Sequence[int] = (),
        *,
        id: int | None = None,
        launched: Future[None] | None = None,
    ) -> Future[Message]:
        """Sends any request (``id`` is filled in unless given) and returns the future of its reply.

        The future's result is the ``{type: "result", ...}`` map; an error reply sets an
        :class:`NccldError`. For new request types and protocol tests; ``fds`` go with the frame.
        ``launched``, for a collective sent with a ``doneEvent``, is completed by the daemon's
        ``{type: "launched", id}`` note (or, if the answer comes without one, by the answer:
        its error, or None).
        """
        self._check_open()
        fut: Future[Message] = Future()
        with self._lock:
            if id is None:
                id = self._take_id()
            elif id in self._pending:
                raise NccldError(ErrorCode.DUPLICATE_ID, f"request id {id} is already in flight on this connection", {"duplicateId": id})
            self._pending[id] = fut
            if launched is not None:
                self._launched[id] = launched
        body = dict(msg)
        body["id"] = id
        frame = _wire.encode_frame(body)
        limit = self.hello.max_frame_bytes
        if len(frame) - 4 > limit:
            with self._lock:
                self._pending.pop(id, None)
                self._launched.pop(id, None)
            raise NccldError(ErrorCode.FRAME_TOO_LARGE, f"the request is {len(frame) - 4} bytes; nccld accepts at most {limit}")
        try:
            self._send(frame, fds)
        except OSError as exc:
            with self._lock:
                self._pending.pop(id, None)
                self._launched.pop(id, None)
            raise NccldError(ErrorCode.CONNECTION_CLOSED, f"cannot send to nccld: {exc}") from None
        return fut

    def request(self, msg: Mapping[str, Any], fds: Sequence[int] = (), *, id: int | None = None) -> Message:
        """:meth:`submit_request`, waiting for the reply."""
        return self.submit_request(msg, fds, id=id).result()

    def _take_id(self) -> int:
        while True:
            rid = self._next_id
            self._next_id = 0 if rid >= _wire.MAX_REQUEST_ID else rid + 1
            if rid not in self._pending:
                return rid

    def send_raw(self, data: bytes | Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """Sends bytes, or a map as one frame, exactly as given: no id, no checks, no future.

        Replies to it, and errors with ``id: null``, come out of :meth:`next_unsolicited`. For
        protocol tests; do not reuse ids that the client picks (it counts up from 1).
        """
        self._check_open()
        frame = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else _wire.encode_frame(data)
        try:
            self._send(frame, fds)
        except OSError as exc:
            raise NccldError(ErrorCode.CONNECTION_CLOSED, f"cannot send to nccld: {exc}") from None

    def next_unsolicited(self, timeout: float | None = None) -> Message | None:
        """The next message that answered no pending request: an error with ``id: null``
        (BAD_FRAME, DUPLICATE_ID, a bad id, ...) or a reply to :meth:`send_raw`. None on timeout."""
        try:
            return self._unsolicited.get(timeout=timeout)
        except queue.Empty:
            return None

    # -- registration --------------------------------------------------------------------------

    def submit_register(self, buffer: HostBuffer | Any) -> Future[Registration]:
        """Registers a :class:`HostBuffer` (host backend) or a CUDA torch tensor's allocation
        (nccl backend) on this connection. Once per connection: registering it again gives the
        same registration."""
        if isinstance(buffer, HostBuffer):
            key: object = buffer
            make: Callable[[], Future[Message]] = lambda: self.submit_request({"type": "register"}, [buffer.fd])
            source: object = buffer
        elif isinstance(buffer, CudaAllocation) or getattr(buffer, "is_cuda", False):
            alloc = buffer if isinstance(buffer, CudaAllocation) else cuda_allocation(buffer)
            key = self._key(alloc)
            device = self.hello.devices[self.world_rank_of(alloc.local_device)] if self.hello.devices else None
            make = lambda: self.submit_request({"type": "register", "ipc": alloc.handle, "device": device})
            source = alloc
        else:
            raise NccldError(ErrorCode.BAD_REQUEST, f"cannot register a {type(buffer).__name__}: give a HostBuffer or a CUDA tensor")
        self._check_open()
        with self._lock:
            known = self._registrations.get(key)
            if known is not None:
                return known
            mine: Future[Registration] = Future()
            self._registrations[key] = mine
        try:
            reply = make()
        except BaseException as exc:
            with self._lock:
                if self._registrations.get(key) is mine:
                    del self._registrations[key]
            mine.set_exception(exc)
            raise

        def done(f: Future[Message]) -> None:
            exc = f.exception()
            if exc is not None:
                with self._lock:
                    if self._registrations.get(key) is mine:
                        del self._registrations[key]
                mine.set_exception(exc)
                return
            msg = f.result()
            reg = Registration(self, int(msg["buffer"]), int(msg["bytes"]), source)
            if isinstance(source, HostBuffer):
                source._registered_with(self)
            mine.set_result(reg)

        reply.add_done_callback(done)
        return mine

    def register(self, buffer: HostBuffer | Any) -> Registration:
        """:meth:`submit_register`, waiting for the reply."""
        return self.submit_register(buffer).result()

    def register_fd(self, fd: int) -> Registration:
        """Registers a descriptor you made yourself (it must be a memfd made as docs/protocol.md
        says). Not cached: each call is a new registration."""
        msg = self.request({"type": "register"}, [fd])
        return Registration(self, int(msg["buffer"]), int(msg["bytes"]))

    def register_ipc(self, handle: bytes, device: int) -> Registration:
        """Registers GPU memory by its 64-byte CUDA IPC handle; ``device`` as the daemon numbers GPUs."""
        msg = self.request({"type": "register", "ipc": bytes(handle), "device": device})
        return Registration(self, int(msg["buffer"]), int(msg["bytes"]))

    @staticmethod
    def _key(ref: Any) -> object:
        """What this connection's registrations are filed under: the HostBuffer itself, or a
        CUDA allocation's (device, handle), which every tensor in it shares."""
        if isinstance(ref, HostBuffer):
            return ref
        alloc = ref if isinstance(ref, CudaAllocation) else cuda_allocation(ref)
        return ("cuda", alloc.local_device, alloc.handle)

    def _ensure_registered(self, ref: HostBuffer | CudaAllocation) -> Registration:
        """The registration of ``ref`` on this connection, registering it now if need be."""
        if threading.current_thread() is self._reader:
            with self._lock:
                known = self._registrations.get(self._key(ref))
            if known is None or not known.done():
                raise NccldError(ErrorCode.BAD_REQUEST, "register buffers before using them from a future's callback")
        return self.submit_register(ref).result()

    def _take_registration(self, ref: Any) -> Registration | None:
        """Forgets the registration of a HostBuffer or tensor here (for a release); None if none."""
        with self._lock:
            known = self._registrations.pop(self._key(ref), None)
        if known is None:
            return None
        try:
            return known.result()
        except NccldError:
            return None

    def submit_release(self, *buffers: Registration | HostBuffer | int | Any) -> Future[None]:
        """Releases registrations of this connection: Registrations, numbers, HostBuffers or
        tensors (those not registered here are skipped). It takes effect at once for later
        requests; the reply comes once the daemon has let the memory go."""
        numbers: list[int] = []
        regs: list[Registration] = []
        for b in buffers:
            if isinstance(b, Registration):
                if b.released:
                    continue
                with self._lock:
                    for key, rf in list(self._registrations.items()):
                        if rf.done() and rf.exception() is None and rf.result() is b:
                            del self._registrations[key]
                regs.append(b)
                numbers.append(b.number)
            elif isinstance(b, int) and not isinstance(b, bool):
                numbers.append(b)
            else:
                reg = self._take_registration(b)
                if reg is not None:
                    regs.append(reg)
                    numbers.append(reg.number)
            if isinstance(b, HostBuffer):
                b._forget(self)
        futs = [
            self.submit_request({"type": "release", "buffers": numbers[i : i + MAX_RELEASE_BUFFERS]})
            for i in range(0, len(numbers), MAX_RELEASE_BUFFERS)
        ]
        for r in regs:
            r.released = True
        return _all(futs)

    def release(self, *buffers: Registration | HostBuffer | int | Any) -> None:
        """:meth:`submit_release`, waiting for the reply."""
        self.submit_release(*buffers).result()

    def _release_on_close(self, buffer: HostBuffer) -> None:
        """A HostBuffer closing: release it here if this connection still holds it."""
        if self.closed:
            return
        try:
            self.release(buffer)
        except NccldError as exc:
            if exc.code not in (ErrorCode.CONNECTION_CLOSED, ErrorCode.CLOSED):
                raise

    # -- devices -------------------------------------------------------------------------------

    def world_rank_of(self, local_device: int) -> int:
        """The world rank whose GPU is this process's CUDA device ``local_device`` (matched by UUID).

        On the host backend, ``local_device`` is taken as the world rank."""
        uuids = self.hello.device_uuids
        if self.backend != "nccl" or not uuids or all(u is None for u in uuids):
            return local_device
        if self._local_devices is None:
            import torch  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - only on the GPU path

            self._local_devices = {
                "GPU-" + str(torch.cuda.get_device_properties(i).uuid).removeprefix("GPU-"): i
                for i in range(torch.cuda.device_count())
            }
        for rank, uuid in enumerate(uuids):
            if uuid is not None and self._local_devices.get(uuid) == local_device:
                return rank
        raise NccldError(ErrorCode.WRONG_DEVICE, f"no rank of nccld runs on this process's cuda:{local_device}")

    # -- collectives ---------------------------------------------------------------------------

    def _slot(self, ref: BufferRef, extra: int = 0) -> int | dict[str, int]:
        """The wire slot for a buffer reference, registering HostBuffers and tensors first."""
        if isinstance(ref, Slot):
            return self._slot(ref.buffer, extra + ref.offset)
        if isinstance(ref, bool):
            raise NccldError(ErrorCode.BAD_REQUEST, "a buffer cannot be a bool")
        if isinstance(ref, int):
            number = ref
        elif isinstance(ref, Registration):
            number = ref.number
        elif isinstance(ref, HostBuffer):
            number = self._ensure_registered(ref).number
        elif getattr(ref, "is_cuda", False):
            alloc = cuda_allocation(ref)
            import torch  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415 - the daemon's stream does not wait for ours

            torch.cuda.synchronize(alloc.local_device)
            number = self._ensure_registered(alloc).number
            extra += alloc.offset
        else:
            raise NccldError(ErrorCode.BAD_REQUEST, f"a buffer must be a HostBuffer, Registration, number, Slot or CUDA tensor, not {type(ref).__name__}")
        return {"buffer": number, "offset": extra} if extra else number

    def _collective_message(
        self,
        collective: str,
        send: Any,
        recv: Any,
        dtype: DTypeLike | None,
        op: str | None,
        count: int | None,
        root: int | None,
        timeout_ms: int | None,
        group: int | None,
        wait_event: bytes | None = None,
        done_event: bytes | None = None,
    ) -> Message:
        msg: Message = {"type": "collective", "collective": collective}
        if group is not None:
            msg["group"] = group
        if collective != "barrier":
            if dtype is not None:
                msg["dtype"] = dtype_name(dtype)
            if count is not None:
                msg["count"] = count
            if op is not None:
                msg["op"] = op
            if root is not None:
                msg["root"] = root
            if group is not None:
                if send is not None:
                    msg["send"] = self._slot(send)
                if recv is not None:
                    msg["recv"] = self._slot(recv)
            else:
                if send is not None:
                    msg["send"] = [self._slot(b) for b in send] if isinstance(send, (list, tuple)) else send
                if recv is not None:
                    msg["recv"] = [self._slot(b) for b in recv] if isinstance(recv, (list, tuple)) else recv
        if timeout_ms is not None:
            msg["timeoutMs"] = timeout_ms
        for field, handle in (("waitEvent", wait_event), ("doneEvent", done_event)):
            if handle is not None:
                handle = bytes(handle)
                if len(handle) != IPC_HANDLE_BYTES:
                    raise NccldError(ErrorCode.BAD_REQUEST, f"{field} must be a {IPC_HANDLE_BYTES}-byte CUDA IPC event handle, not {len(handle)} bytes")
                msg[field] = handle
        return msg

    def submit_collective(
        self,
        collective: str,
        send: Sequence[BufferRef] | None = None,
        recv: Sequence[BufferRef] | None = None,
        *,
        dtype: DTypeLike | None = None,
        op: str | None = None,
        count: int | None = None,
        root: int | None = None,
        timeout_ms: int | None = None,
    ) -> Future[int]:
        """Sends one collective over every rank's buffers and returns the future of its ``seq``.

        ``send`` (and ``recv``, unless in place) hold one buffer per rank, in rank order;
        ``count`` is NCCL's count argument for the collective (docs/protocol.md). HostBuffers
        and tensors not yet registered on this connection are registered first (that part
        waits). The future is done once every rank has finished: the buffers hold the result.
        """
        msg = self._collective_message(collective, send, recv, dtype, op, count, root, timeout_ms, None)
        return _then(self.submit_request(msg), lambda r: int(r["seq"]))

    def collective(
        self,
        collective: str,
        send: Sequence[BufferRef] | None = None,
        recv: Sequence[BufferRef] | None = None,
        *,
        dtype: DTypeLike | None = None,
        op: str | None = None,
        count: int | None = None,
        root: int | None = None,
        timeout_ms: int | None = None,
    ) -> int:
        """:meth:`submit_collective`, waiting for the reply; returns the collective's ``seq``."""
        return self.submit_collective(
            collective, send, recv, dtype=dtype, op=op, count=count, root=root, timeout_ms=timeout_ms
        ).result()

    def submit_allreduce(
        self,
        buffers: Sequence[BufferRef],
        dtype: DTypeLike,
        op: str,
        count: int,
        *,
        offset: int = 0,
        timeout_ms: int | None = None,
    ) -> Future[int]:
        """An ``allreduce`` request: in place over one buffer per rank, ``offset`` bytes into each
        (added to a Slot's own). Returns the future of its ``seq``."""
        msg: Message = {
            "type": "allreduce",
            "dtype": dtype_name(dtype),
            "op": op,
            "count": count,
            "buffers": [self._slot(b, offset) for b in buffers] if isinstance(buffers, (list, tuple)) else buffers,
        }
        if timeout_ms is not None:
            msg["timeoutMs"] = timeout_ms
        return _then(self.submit_request(msg), lambda r: int(r["seq"]))

    def allreduce(
        self,
        buffers: Sequence[BufferRef],
        dtype: DTypeLike,
        op: str,
        count: int,
        *,
        offset: int = 0,
        timeout_ms: int | None = None,
    ) -> int:
        """:meth:`submit_allreduce`, waiting: every buffer holds the reduction when it returns."""
        return self.submit_allreduce(buffers, dtype, op, count, offset=offset, timeout_ms=timeout_ms).result()

    def broadcast(self, send: Sequence[BufferRef], recv: Sequence[BufferRef] | None = None, *, dtype: DTypeLike, count: int, root: int, timeout_ms: int | None = None) -> int:
        """Every rank's ``recv`` (or ``send``, in place) gets rank ``root``'s ``send``."""
        return self.collective("broadcast", send, recv, dtype=dtype, count=count, root=root, timeout_ms=timeout_ms)

    def reduce(self, send: Sequence[BufferRef], recv: Sequence[BufferRef] | None = None, *, dtype: DTypeLike, op: str, count: int, root: int, timeout_ms: int | None = None) -> int:
        """Rank ``root``'s ``recv`` (or ``send``, in place) gets the reduction of every ``send``."""
        return self.collective("reduce", send, recv, dtype=dtype, op=op, count=count, root=root, timeout_ms=timeout_ms)

    def allgather(self, send: Sequence[BufferRef], recv: Sequence[BufferRef] | None = None, *, dtype: DTypeLike, count: int, timeout_ms: int | None = None) -> int:
        """Every ``recv`` (count × n elements) gets rank 0's ``send``, then rank 1's, ..."""
        return self.collective("allgather", send, recv, dtype=dtype, count=count, timeout_ms=timeout_ms)

    def reducescatter(self, send: Sequence[BufferRef], recv: Sequence[BufferRef] | None = None, *, dtype: DTypeLike, op: str, count: int, timeout_ms: int | None = None) -> int:
        """Rank r's ``recv`` (count elements) gets the reduction of block r of every ``send`` (count × n)."""
        return self.collective("reducescatter", send, recv, dtype=dtype, op=op, count=count, timeout_ms=timeout_ms)

    def alltoall(self, send: Sequence[BufferRef], recv: Sequence[BufferRef], *, dtype: DTypeLike, count: int, timeout_ms: int | None = None) -> int:
        """Block j of rank r's ``recv`` gets block r of rank j's ``send`` (blocks of ``count``)."""
        return self.collective("alltoall", send, recv, dtype=dtype, count=count, timeout_ms=timeout_ms)

    def barrier(self, *, timeout_ms: int | None = None) -> int:
        """Returns once every rank has reached it."""
        return self.collective("barrier", timeout_ms=timeout_ms)

    # -- groups --------------------------------------------------------------------------------

    def submit_join(self, name: str, size: int, rank: int, *, device: int | None = None, timeout_ms: int | None = None) -> Future[Group]:
        """Joins the named group as ``rank`` of ``size``; the future is done once every member has
        joined. ``device`` is the world rank whose device this member's buffers live on (default:
        ``rank``; on the nccl backend use :meth:`world_rank_of`)."""
        msg: Message = {"type": "join", "group": name, "size": size, "rank": rank}
        if device is None and isinstance(rank, int) and 0 <= rank < self.world_size:
            device = rank
        if device is not None:
            msg["device"] = device
        if timeout_ms is not None:
            msg["timeoutMs"] = timeout_ms
        return _then(
            self.submit_request(msg),
            lambda r: Group(self, name, int(r["group"]), int(r["size"]), int(r["rank"]), list(r.get("devices") or [])),
        )

    def join(self, name: str, size: int, rank: int, *, device: int | None = None, timeout_ms: int | None = None) -> Group:
        """:meth:`submit_join`, waiting until the group is formed."""
        return self.submit_join(name, size, rank, device=device, timeout_ms=timeout_ms).result()

    def submit_leave(self, group: Group | int) -> Future[None]:
        """Leaves (and so dissolves) a group; done once its communicator is freed."""
        number = group.number if isinstance(group, Group) else group
        fut = _then(self.submit_request({"type": "leave", "group": number}), lambda _r: None)
        if isinstance(group, Group):
            group.left = True
        return fut

    def leave(self, group: Group | int) -> None:
        """:meth:`submit_leave`, waiting for the reply."""
        self.submit_leave(group).result()

    # -- closing -------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Closes the connection. The daemon releases every registration of it and leaves its
        groups; requests still unanswered fail with ``NCCLD_ERR_CONNECTION_CLOSED``."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_WR)  # the daemon sees the end and closes its side
        except OSError:
            pass
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)
            if self._reader.is_alive():
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._reader.join()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.backend}, {self.world_size} ranks"
        return f"Client({self.path!r}, {state})"


def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    timeout: float = 10.0,
    trusted_uids: Iterable[int] | None = None,
) -> Client:
    """Connects to nccld (``path``, else the socket docs/protocol.md's rules find)."""
    return Client(path, name=name, timeout=timeout, trusted_uids=trusted_uids)
