# torch's stubs describe ProcessGroup's C++ overloads; the Python overrides below are the
# trampoline's (torch/csrc/distributed/c10d/PyProcessGroup.hpp).
# mypy: disable-error-code="override,assignment,call-arg"
"""A ``torch.distributed`` backend named ``"nccld"``: collectives of a PyTorch job run by nccld.

>>> import nccld.torch                      # registers the backend
>>> dist.init_process_group("nccld", init_method="file:///tmp/rdv", rank=r, world_size=n)
>>> dist.all_reduce(t)                       # CPU tensors (host backend) or CUDA tensors (nccl)

Every process group (the default one and each ``new_group``) is one nccld group: rank 0 of the
group picks a unique name and puts it in the group's store, the others read it there, and each
member joins the daemon's group with its group rank. Each process group has its own connection
to the daemon (``NCCLD_SOCKET``, else the client's default socket; or ``Options(socket=...)``
as ``pg_options``).

**CPU tensors (host backend).** The daemon reads and writes sealed memfds only, so each
collective copies its inputs into a staging buffer (a :class:`HostBuffer` from the process
group's pool: registered once, grown as needed, reused), and its results back out of it when
the daemon answers (on the client's reader thread, before the Work completes). Tensors may be
non-contiguous.

**CUDA tensors (nccl backend).** The daemon reads and writes the tensors themselves (their
caching-allocator segment, registered once per connection by CUDA IPC handle); only list
variants (``all_gather``, ``reduce_scatter`` ...) and non-contiguous tensors go through a
temporary buffer. Nothing waits on the host: the process group records an interprocess CUDA
event on the current stream and sends it as ``waitEvent`` (the daemon's stream waits on it
before the collective), and sends a second one as ``doneEvent`` (the daemon records it after
the collective). ``Work.wait()`` waits for the daemon's ``launched`` note, then makes the
current stream wait on the done event, as NCCL's Work does; ``Work.is_completed()`` and the
Work's future report the daemon's answer (the collective has finished on the GPUs).

See docs/python.md ("PyTorch").
"""

from __future__ import annotations

import ctypes
import os
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ._cuda import CudaDriver as _CudaDriver
from .buffers import CudaAllocation, HostBuffer, Registration, Slot
from .client import Client
from .errors import ErrorCode, NccldError
from .group import Group

__all__ = ["BACKEND_NAME", "Options", "NccldProcessGroup", "NccldWork", "register"]

BACKEND_NAME = "nccld"
#: Key, in each process group's store, under which rank 0 leaves the daemon group's name.
STORE_KEY = "nccld/group-name"
#: Smallest staging buffer (bytes); larger ones are the next power of two of what a collective needs.
MIN_STAGING_BYTES = 64 << 10
_ALIGN = 256

_R = dist.ReduceOp
_OPS: dict[Any, str] = {_R.SUM: "sum", _R.PRODUCT: "prod", _R.MIN: "min", _R.MAX: "max", _R.AVG: "avg"}
_BITWISE = {_R.BAND: "BAND", _R.BOR: "BOR", _R.BXOR: "BXOR"}

#: torch dtype -> the protocol's element type.
_WIRE: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.int32: "i32",
    torch.int64: "i64",
}
for _name, _wire_name in (("uint32", "u32"), ("uint64", "u64")):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _WIRE[getattr(torch, _name)] = _wire_name
#: Complex types are reduced as pairs of their real type (sums and averages only).
_COMPLEX: dict[torch.dtype, str] = {torch.complex64: "f32", torch.complex128: "f64"}
if isinstance(getattr(torch, "complex32", None), torch.dtype):
    _COMPLEX[torch.complex32] = "f16"


@dataclass
class Options:
    """``pg_options`` for ``init_process_group("nccld", ...)`` and ``new_group(...)``."""

    #: The daemon's socket; default ``NCCLD_SOCKET``, else the client's default path.
    socket: str | None = None
    #: Client name the daemon logs and shows on its debug socket.
    client_name: str | None = None


# ---------------------------------------------------------------------------------------------
# Element types and reduction ops


def _op_name(red: Any) -> str:
    """The protocol op for a torch ReduceOp (or its RedOpType)."""
    kind = getattr(red, "op", red)
    if kind in _OPS:
        return _OPS[kind]
    if kind in _BITWISE:
        raise NccldError(
            ErrorCode.BAD_OP,
            f"ReduceOp.{_BITWISE[kind]} is not supported by the nccld backend: NCCL has no bitwise "
            "reductions (supported: SUM, PRODUCT, MIN, MAX, AVG)",
        )
    if kind == _R.PREMUL_SUM:
        factor = _premul_factor(red)
        if isinstance(factor, (int, float)) and factor == 1:
            return "sum"
        shown = "a factor this torch does not expose" if factor is None else f"factor {factor!r}"
        raise NccldError(
            ErrorCode.BAD_OP,
            f"ReduceOp.PREMUL_SUM ({shown}) is not supported by the nccld backend: the daemon "
            "has no pre-multiplied sum; scale the tensor yourself and use SUM",
        )
    raise NccldError(ErrorCode.BAD_OP, f"reduce op {red!r} is not supported by the nccld backend (SUM, PRODUCT, MIN, MAX, AVG)")


def _premul_factor(red: Any) -> Any:
    """A PREMUL_SUM's factor as a number, if this torch shows it (``.factor``, or its pickled state)."""
    factor = getattr(red, "factor", None)
    if factor is None:
        try:
            state = red.__getstate__()
            factor = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        except Exception:  # noqa: BLE001 - older torch: no way to read it
            factor = None
    if isinstance(factor, torch.Tensor) and factor.numel() == 1:
        factor = factor.item()
    return factor if isinstance(factor, (int, float)) else None


def _reducing(dtype: torch.dtype, numel: int, red: Any) -> tuple[str, int, str]:
    """(wire dtype, wire count, wire op) for reducing ``numel`` elements of ``dtype``."""
    op = _op_name(red)
    if dtype in _WIRE:
        return _WIRE[dtype], numel, op
    if dtype == torch.bool:
        # As ProcessGroupNCCL does: bytes, with logical or for SUM and logical and for PRODUCT.
        if op == "avg":
            raise NccldError(ErrorCode.BAD_OP, "ReduceOp.AVG is not supported on torch.bool tensors")
        return "u8", numel, {"sum": "max", "prod": "min"}.get(op, op)
    if dtype in _COMPLEX:
        if op not in ("sum", "avg"):
            raise NccldError(ErrorCode.BAD_OP, f"ReduceOp {op.upper()} is not defined for complex tensors ({dtype})")
        return _COMPLEX[dtype], numel * 2, op
    raise NccldError(
        ErrorCode.BAD_DTYPE,
        f"{dtype} cannot be reduced by nccld (element types: {', '.join(str(d) for d in _WIRE)}, bool, complex)",
    )


def _moving(dtype: torch.dtype, numel: int) -> tuple[str, int]:
    """(wire dtype, wire count) for collectives that only move elements: any dtype, as bytes if need be."""
    if dtype in _WIRE:
        return _WIRE[dtype], numel
    return "u8", numel * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _ms(timeout: timedelta | None) -> int | None:
    if timeout is None:
        return None
    ms = int(timeout.total_seconds() * 1000)
    return ms if ms > 0 else None


# ---------------------------------------------------------------------------------------------
# CUDA: segments by IPC handle, without torch's own IPC bookkeeping


class _Events:
    """Two interprocess events (waitEvent, doneEvent) and a marker: where the client's stream
    passed its wait on the done event."""

    __slots__ = ("wait", "done", "marker", "wait_handle", "done_handle")

    def __init__(self, device: int) -> None:
        with torch.cuda.device(device):
            self.wait = torch.cuda.Event(enable_timing=False, blocking=False, interprocess=True)
            self.done = torch.cuda.Event(enable_timing=False, blocking=False, interprocess=True)
            self.marker = torch.cuda.Event(enable_timing=False)
            # ipc_handle() creates the events now. The done event is only ever recorded by the
            # daemon: without this, torch would treat it as never created and skip waits on it.
            self.wait_handle = bytes(self.wait.ipc_handle())
            self.done_handle = bytes(self.done.ipc_handle())


class _EventPool:
    """Events for the collectives of one process group. A pair goes back to the pool when its
    collective's answer has come; it is reused once the streams that waited on its done event
    have passed that wait (so the daemon never records it again under a pending wait)."""

    def __init__(self, device: int) -> None:
        self.device = device
        self._free: list[_Events] = []
        self._lock = threading.Lock()
        self.created = 0

    def take(self) -> _Events:
        with self._lock:
            for i, ev in enumerate(self._free):
                if ev.marker.query():
                    return self._free.pop(i)
        self.created += 1
        return _Events(self.device)

    def give(self, ev: _Events) -> None:
        with self._lock:
            self._free.append(ev)


# ---------------------------------------------------------------------------------------------
# Host backend: staging memfds


class _Staging:
    """The process group's staging HostBuffers (host backend): registered once on its connection,
    handed to one collective at a time, and grown (a new buffer of the next power of two, the
    smaller free ones released) when a collective needs more than any free one holds."""

    def __init__(self, client: Client, label: str) -> None:
        self._client = client
        self._label = label
        self._free: list[HostBuffer] = []
        self._bytes: dict[HostBuffer, _Views] = {}
        self._regs: dict[HostBuffer, Registration] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, nbytes: int) -> tuple[HostBuffer, _Views, Registration]:
        """A registered buffer of at least ``nbytes`` bytes, views of it, and its registration on
        the process group's connection."""
        nbytes = max(nbytes, 1)
        with self._lock:
            fits = [b for b in self._free if b.nbytes >= nbytes]
            if fits:
                b = min(fits, key=lambda x: x.nbytes)
                self._free.remove(b)
                return b, self._bytes[b], self._regs[b]
            small = [b for b in self._free if b.nbytes < nbytes]
            for b in small:
                self._free.remove(b)
                del self._bytes[b]
                del self._regs[b]
        for b in small:
            b.close()  # released from the daemon (waits for its reply), then unmapped
        size = max(MIN_STAGING_BYTES, 1 << (nbytes - 1).bit_length())
        b = HostBuffer(size, name=f"nccld-torch-{self._label}-{size}")
        try:
            reg = self._client.register(b)
        except BaseException:
            b.close()
            raise
        view = _Views(torch.frombuffer(b.memory, dtype=torch.uint8))
        with self._lock:
            self._bytes[b] = view
            self._regs[b] = reg
        return b, view, reg

    def give(self, b: HostBuffer) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(b)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._bytes)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            bufs = list(self._bytes)
            self._bytes.clear()
            self._regs.clear()
            self._free.clear()
        for b in bufs:
            try:
                b.close()
            except NccldError:
                pass


def _region(u8: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """``like``'s shape and dtype over bytes ``offset``... of the uint8 tensor ``u8``."""
    n = _nbytes(like)
    return u8[offset : offset + n].view(like.dtype).view(like.shape)


class _Views:
    """Views of one staging buffer, kept: a job repeats the same shapes (DDP's buckets)."""

    __slots__ = ("u8", "cache")
    MAX = 256

    def __init__(self, u8: torch.Tensor) -> None:
        self.u8 = u8
        self.cache: dict[tuple[int, torch.dtype, torch.Size], torch.Tensor] = {}

    def region(self, offset: int, like: torch.Tensor) -> torch.Tensor:
        key = (offset, like.dtype, like.shape)
        v = self.cache.get(key)
        if v is None:
            if len(self.cache) >= self.MAX:
                self.cache.clear()
            v = self.cache[key] = _region(self.u8, offset, like)
        return v


# ---------------------------------------------------------------------------------------------
# Work


class NccldWork(dist._Work):  # type: ignore[misc, name-defined]
    """The Work of one nccld collective.

    ``is_completed()`` is true once the daemon has answered (every rank has finished; results
    copied out); ``get_future()`` resolves to the output tensors then. ``wait()``: on the host
    backend, waits for the answer; with CUDA tensors, waits only until the collective is on
    the daemon's streams (its ``launched`` note), then makes the current CUDA stream wait on the
    collective's done event, so the host goes on while the GPU works.
    """

    def __init__(self, pg: NccldProcessGroup, outputs: Any, *, events: _Events | None = None, device: int | None = None) -> None:
        super().__init__()
        self._pg = weakref.ref(pg)
        self._outputs = outputs
        # Made on the first get_future() (most callers never ask for it: it is not free).
        self._future: torch.futures.Future[Any] | None = None
        self._finished = False  # set with the outcome, under the lock; _done is set after it
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._events = events
        self._device = device
        self._launched: Future[None] | None = None
        self._copy_out: Callable[[], None] | None = None  # CUDA: temporaries -> outputs, once
        self._keep: list[Any] = []  # tensors the daemon uses, alive until the answer
        self._seq: int | None = None

    # -- completion (the client's reader thread) ------------------------------------------------

    def _finish(self, error: BaseException | None, seq: int | None = None, copy: Callable[[], None] | None = None) -> None:
        pg = self._pg()
        with self._lock:
            if error is None:
                try:
                    if copy is not None:
                        copy()
                    self._run_copy_out_on_side_stream(pg)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiters
                    error = exc
            self._error = error
            self._seq = seq
            events, self._events = self._events, None
            self._keep = []
            self._finished = True
            future = self._future
        if events is not None and pg is not None:
            pg._event_pool_give(events)
        if future is not None:
            self._complete(future)
        # Last: a waiter woken now finds nothing left for this thread (the client's reader) to
        # do but go back to its socket, so the two do not take turns at the GIL.
        self._done.set()

    def _complete(self, future: torch.futures.Future[Any]) -> None:
        if self._error is None:
            future.set_result(self._outputs)
        else:
            future.set_exception(self._error)

    def _run_copy_out_on_side_stream(self, pg: NccldProcessGroup | None) -> None:
        """CUDA: the answer came before any wait(): the GPU has finished, so copy the temporaries
        out on a side stream and finish that copy before the Work completes."""
        copy, self._copy_out = self._copy_out, None
        if copy is None:
            return
        assert self._device is not None
        side = pg._side_stream() if pg is not None else torch.cuda.Stream(self._device)
        with torch.cuda.device(self._device), torch.cuda.stream(side):
            copy()
        side.synchronize()

    # -- torch's Work API -------------------------------------------------------------------------

    def wait(self, timeout: timedelta | None = None) -> bool:
        seconds = None
        if isinstance(timeout, timedelta) and timeout.total_seconds() > 0:
            seconds = timeout.total_seconds()
        if self._launched is not None:
            try:
                self._launched.result(seconds)
            except FutureTimeout:
                raise NccldError(ErrorCode.TIMEOUT, f"collective not launched within {timeout}") from None
            with self._lock:
                if not self._finished and self._events is not None:
                    stream = torch.cuda.current_stream(self._device)
                    stream.wait_event(self._events.done)
                    copy, self._copy_out = self._copy_out, None
                    if copy is not None:
                        with torch.cuda.stream(stream):
                            copy()
                    self._events.marker.record(stream)
            if self._finished and self._error is not None:
                raise self._error
            return True
        if not self._done.wait(seconds):
            raise NccldError(ErrorCode.TIMEOUT, f"collective not finished within {timeout}")
        if self._error is not None:
            raise self._error
        return True

    def synchronize(self) -> None:
        self.wait()

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self) -> BaseException | None:
        return self._error

    def get_future(self) -> torch.futures.Future[Any]:
        with self._lock:
            if self._future is not None:
                return self._future
            future: torch.futures.Future[Any] = torch.futures.Future()
            self._future = future
            finished = self._finished
        if finished:
            self._complete(future)
        return future

    def result(self) -> Any:
        self.wait()
        return self._outputs

    @property
    def seq(self) -> int | None:
        """The daemon's number for the collective, once answered."""
        return self._seq

    def __repr__(self) -> str:
        state = "done" if self._done.is_set() else "pending"
        return f"NccldWork({state}, seq={self._seq})"


# ---------------------------------------------------------------------------------------------
# The process group


class NccldProcessGroup(dist.ProcessGroup):  # type: ignore[misc]
    """One nccld group behind a torch.distributed process group (see the module's docstring)."""

    def __init__(
        self,
        store: Any,
        rank: int,
        size: int,
        timeout: timedelta | None = None,
        *,
        group_id: str = "",
        options: Options | None = None,
    ) -> None:
        super().__init__(rank, size)
        self._rank = rank
        self._size = size
        opts = options or Options()
        self._timeout = timeout if isinstance(timeout, timedelta) else timedelta(minutes=30)
        path = opts.socket or os.environ.get("NCCLD_SOCKET") or None
        self._client = Client(path, name=opts.client_name or f"torch-{os.getpid()}-pg{group_id}-r{rank}")
        self._closed = False
        self._side: torch.cuda.Stream | None = None
        try:
            hello = self._client.hello
            max_ms = hello.max_timeout_ms or 600_000
            self._timeout_ms = min(_ms(self._timeout) or max_ms, max_ms)
            self._cuda_device: int | None = None
            if hello.backend == "nccl":
                if not torch.cuda.is_available():
                    raise NccldError(ErrorCode.GPU_UNAVAILABLE, "nccld runs its nccl backend but this process has no CUDA")
                self._cuda_device = torch.cuda.current_device()
                device = self._client.world_rank_of(self._cuda_device)
            else:
                if rank >= hello.world_size:
                    raise NccldError(
                        ErrorCode.WRONG_DEVICE,
                        f"rank {rank} of a process group of {size}: nccld's host backend at {self._client.path} "
                        f"has {hello.world_size} ranks, so groups of at most {hello.world_size} processes "
                        f"(start it with --ranks {size} or more)",
                    )
                device = rank
            # Rendezvous: rank 0 names the daemon's group, everyone finds the name in the store.
            if rank == 0:
                name = f"torch-{uuid.uuid4().hex}-{group_id}"[:128]
                store.set(STORE_KEY, name)
            else:
                store.wait([STORE_KEY])
                name = store.get(STORE_KEY).decode()
            self.group_name_in_daemon = name
            self._group: Group = self._client.join(name, size, rank, device=device, timeout_ms=self._timeout_ms)
            if rank == 0:
                # Formed: every member has read the name. Gone from the store, a store used again
                # (init_process_group after destroy_process_group) cannot hand out a stale name.
                try:
                    store.delete_key(STORE_KEY)
                except Exception:  # noqa: BLE001 - a store without delete_key
                    pass
        except BaseException:
            self._client.close()
            raise
        self._staging = _Staging(self._client, f"{os.getpid()}-{group_id}") if self._cuda_device is None else None
        self._events = _EventPool(self._cuda_device) if self._cuda_device is not None else None
        self._segments: dict[int, tuple[int, Registration]] = {}  # CUDA: buffer id -> (base, registration)
        weakref.finalize(self, Client.close, self._client)

    # -- torch's ProcessGroup API: identity -------------------------------------------------------

    def getBackendName(self) -> str:  # noqa: N802 - torch's name
        return BACKEND_NAME

    def getRank(self) -> int:  # noqa: N802
        return self._rank

    def getSize(self) -> int:  # noqa: N802
        return self._size

    def __repr__(self) -> str:
        return f"NccldProcessGroup(rank={self._rank}/{self._size}, {self.group_name_in_daemon!r}, {self._client.backend})"

    @property
    def client(self) -> Client:
        return self._client

    @property
    def nccld_group(self) -> Group:
        return self._group

    @property
    def staging_bytes(self) -> int:
        """Bytes of staging memfds this process group holds (host backend)."""
        return self._staging.total_bytes if self._staging is not None else 0

    @property
    def events_created(self) -> int:
        """Interprocess event pairs made so far (nccl backend): the pool's size."""
        return self._events.created if self._events is not None else 0

    def release_cuda_segments(self) -> int:
        """Releases every CUDA segment this process group registered with the daemon, waiting
        until the daemon has let go of them (after the collectives that use them end); later
        collectives register what they use again. Call it before ``torch.cuda.empty_cache()``
        (or anything else that makes PyTorch free its cached segments): CUDA leaves freeing
        memory that another process has mapped undefined. Returns how many were released."""
        regs = {id(reg): reg for _, reg in self._segments.values()}
        self._segments.clear()
        if regs and not self._client.closed:
            self._client.release(*regs.values())
        return len(regs)

    def shutdown(self) -> None:
        """Leaves the daemon's group and closes the connection (``destroy_process_group``)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._client.closed and not self._group.left:
                self._group.submit_leave().result(timeout=30)
        except Exception:  # noqa: BLE001 - leaving is best effort; closing dissolves the group anyway
            pass
        if self._staging is not None:
            self._staging.close()
        self._client.close()

    def abort(self) -> None:
        self._closed = True
        self._client.close()

    # -- internals --------------------------------------------------------------------------------

    def _event_pool_give(self, ev: _Events) -> None:
        if self._events is not None:
            self._events.give(ev)

    def _side_stream(self) -> torch.cuda.Stream:
        if self._side is None:
            self._side = torch.cuda.Stream(self._cuda_device)
        return self._side

    def _check(self, tensors: Sequence[torch.Tensor]) -> None:
        if self._closed:
            raise NccldError(ErrorCode.CLOSED, "this nccld process group was shut down")
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                raise NccldError(ErrorCode.BAD_REQUEST, f"expected a tensor, not {type(t).__name__}")
            if self._cuda_device is None:
                if t.device.type != "cpu":
                    raise NccldError(
                        ErrorCode.WRONG_BACKEND,
                        f"a {t.device} tensor: nccld at {self._client.path} runs its host backend, which takes CPU tensors only",
                    )
            elif t.device.type != "cuda":
                raise NccldError(ErrorCode.WRONG_BACKEND, f"a {t.device} tensor: nccld runs its nccl backend, which takes CUDA tensors only")
            elif t.device.index != self._cuda_device:
                raise NccldError(
                    ErrorCode.WRONG_DEVICE,
                    f"a tensor on {t.device}: this process group's member sits on cuda:{self._cuda_device} "
                    "(set the current device before init_process_group/new_group)",
                )

    @staticmethod
    def _one(tensors: Sequence[torch.Tensor], what: str) -> torch.Tensor:
        if len(tensors) != 1:
            raise NccldError(ErrorCode.BUFFER_COUNT, f"{what}: the nccld backend takes one tensor per process, not {len(tensors)}")
        return tensors[0]

    def _timeout_of(self, opts: Any) -> int:
        ms = _ms(getattr(opts, "timeout", None))
        return min(ms, self._timeout_ms) if ms else self._timeout_ms

    def _cuda_slot(self, t: torch.Tensor) -> Slot:
        """The slot of a CUDA tensor: its segment's registration on this connection, and where it
        starts. Segments are known by the driver's buffer id (never reused in a process, so a
        segment freed and another allocated at the same address is not mistaken for it); the
        IPC handle is asked for and the segment registered once per segment."""
        device = self._cuda_device
        assert device is not None
        ptr = t.data_ptr()
        driver = _CudaDriver.get()
        base, _size, bid = driver.locate(ptr, device)
        known = self._segments.get(bid) if bid else None
        if known is not None and known[0] == base and not known[1].released:
            return Slot(known[1], ptr - base)
        handle = driver.ipc_handle(base, device)
        reg: Registration = self._client.submit_register(CudaAllocation(handle=handle, local_device=device, offset=0)).result()
        if bid:
            self._segments[bid] = (base, reg)
        return Slot(reg, ptr - base)

    def _run(
        self,
        collective: str,
        *,
        outputs: Any,
        wire: str | None = None,
        count: int | None = None,
        op: str | None = None,
        root: int | None = None,
        send_bytes: int = 0,
        recv_bytes: int | None = None,
        ins: Sequence[tuple[torch.Tensor, int]] = (),
        outs: Sequence[tuple[torch.Tensor, int]] = (),
        in_place: torch.Tensor | None = None,
        timeout_ms: int,
    ) -> NccldWork:
        """One collective of this member.

        ``send_bytes`` and ``recv_bytes`` (None: in place) size the buffers the daemon sees;
        ``ins`` are (tensor, byte offset) copied into the send buffer first, ``outs`` (tensor,
        byte offset) copied out of the receive buffer (the send buffer, in place) after.
        ``in_place`` names the tensor that is itself the whole buffer of an in-place collective
        when it can be handed over as it is (CUDA, contiguous).
        """
        if collective == "barrier":
            fut = self._group.submit_collective("barrier", timeout_ms=timeout_ms)
            work = NccldWork(self, outputs)
            fut.add_done_callback(lambda f: work._finish(f.exception(), None if f.exception() else f.result()))
            return work
        if self._cuda_device is None:
            return self._run_host(collective, outputs, wire, count, op, root, send_bytes, recv_bytes, ins, outs, timeout_ms)
        return self._run_cuda(collective, outputs, wire, count, op, root, send_bytes, recv_bytes, ins, outs, in_place, timeout_ms)

    def _run_host(self, collective: str, outputs: Any, wire: Any, count: Any, op: Any, root: Any, send_bytes: int,
                  recv_bytes: int | None, ins: Sequence[tuple[torch.Tensor, int]], outs: Sequence[tuple[torch.Tensor, int]],
                  timeout_ms: int) -> NccldWork:
        assert self._staging is not None
        recv_at = _align(send_bytes) if recv_bytes is not None else 0
        total = recv_at + recv_bytes if recv_bytes is not None else send_bytes
        buf, views, reg = self._staging.take(total)
        try:
            for t, off in ins:
                views.region(off, t).copy_(t)
            fut = self._group.submit_collective(
                collective,
                reg,
                Slot(reg, recv_at) if recv_bytes is not None else None,
                dtype=wire,
                op=op,
                count=count,
                root=root,
                timeout_ms=timeout_ms,
            )
        except BaseException:
            self._staging.give(buf)
            raise
        work = NccldWork(self, outputs)
        staging = self._staging

        def copy() -> None:
            for t, off in outs:
                t.copy_(views.region(recv_at + off, t))

        def done(f: Future[int]) -> None:
            err = f.exception()
            try:
                work._finish(err, None if err else f.result(), copy if err is None else None)
            finally:
                staging.give(buf)

        fut.add_done_callback(done)
        return work

    def _run_cuda(self, collective: str, outputs: Any, wire: Any, count: Any, op: Any, root: Any, send_bytes: int,
                  recv_bytes: int | None, ins: Sequence[tuple[torch.Tensor, int]], outs: Sequence[tuple[torch.Tensor, int]],
                  in_place: torch.Tensor | None, timeout_ms: int) -> NccldWork:
        assert self._cuda_device is not None and self._events is not None
        device = self._cuda_device
        stream = torch.cuda.current_stream(device)
        keep: list[Any] = []
        copy_ins: list[tuple[torch.Tensor, int]] = []
        copy_outs: list[tuple[torch.Tensor, int]] = []

        def direct(pairs: Sequence[tuple[torch.Tensor, int]], nbytes: int) -> torch.Tensor | None:
            if len(pairs) == 1:
                t, off = pairs[0]
                if off == 0 and _nbytes(t) == nbytes and nbytes > 0 and t.is_contiguous():
                    return t
            return None

        send_t: torch.Tensor | None
        recv_t: torch.Tensor | None = None
        scratch: torch.Tensor | None = None
        recv_at = 0
        if recv_bytes is None:  # in place: one buffer
            send_t = in_place if in_place is not None and in_place.is_contiguous() and _nbytes(in_place) == send_bytes and send_bytes > 0 else None
            if send_t is None:
                with torch.cuda.device(device):
                    scratch = torch.empty(max(send_bytes, 1), dtype=torch.uint8, device=f"cuda:{device}")
                send_t = scratch
                copy_ins, copy_outs = list(ins), list(outs)
        else:
            send_t = direct(ins, send_bytes)
            recv_t = direct(outs, recv_bytes)
            need = (0 if send_t is not None else _align(max(send_bytes, 1))) + (0 if recv_t is not None else max(recv_bytes, 1))
            if need:
                with torch.cuda.device(device):
                    scratch = torch.empty(need, dtype=torch.uint8, device=f"cuda:{device}")
                at = 0
                if send_t is None:
                    send_t = scratch[: max(send_bytes, 1)]
                    copy_ins = list(ins)
                    at = _align(max(send_bytes, 1))
                if recv_t is None:
                    recv_t = scratch[at:]
                    recv_at = at
                    copy_outs = list(outs)
        keep += [send_t, recv_t, scratch, *(t for t, _ in ins), *(t for t, _ in outs)]
        # Copies into the temporary buffer run on the current stream, before the wait event.
        if copy_ins:
            assert scratch is not None
            for t, off in copy_ins:
                _region(scratch, off, t).copy_(t)
        assert send_t is not None
        send_slot = self._cuda_slot(send_t)
        recv_slot = self._cuda_slot(recv_t) if recv_t is not None else None
        events = self._events.take()
        events.wait.record(stream)
        try:
            result, launched = self._group.submit_collective_events(
                collective,
                send_slot,
                recv_slot,
                dtype=wire,
                op=op,
                count=count,
                root=root,
                timeout_ms=timeout_ms,
                wait_event=events.wait_handle,
                done_event=events.done_handle,
            )
        except BaseException:
            self._events.give(events)
            raise
        work = NccldWork(self, outputs, events=events, device=device)
        work._launched = launched
        work._keep = keep
        if copy_outs:
            assert scratch is not None
            base = recv_at if recv_bytes is not None else 0
            sc = scratch

            def copy_out() -> None:
                for t, off in copy_outs:
                    t.copy_(_region(sc, base + off, t))

            work._copy_out = copy_out
        result.add_done_callback(lambda f: work._finish(f.exception(), None if f.exception() else f.result()))
        return work

    # -- collectives ------------------------------------------------------------------------------

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.AllreduceOptions()
        t = self._one(tensors, "allreduce")
        self._check([t])
        wire, count, op = _reducing(t.dtype, t.numel(), opts.reduceOp)
        n = _nbytes(t)
        return self._run("allreduce", outputs=tensors, wire=wire, count=count, op=op, send_bytes=n,
                         ins=[(t, 0)], outs=[(t, 0)], in_place=t, timeout_ms=self._timeout_of(opts))

    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.BroadcastOptions()
        t = self._one(tensors, "broadcast")
        self._check([t])
        root = int(opts.rootRank)
        wire, count = _moving(t.dtype, t.numel())
        me = root == self._rank
        return self._run("broadcast", outputs=tensors, wire=wire, count=count, root=root, send_bytes=_nbytes(t),
                         ins=[(t, 0)] if me else [], outs=[] if me else [(t, 0)], in_place=t,
                         timeout_ms=self._timeout_of(opts))

    def reduce(self, tensors: list[torch.Tensor], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.ReduceOptions()
        t = self._one(tensors, "reduce")
        self._check([t])
        root = int(opts.rootRank)
        wire, count, op = _reducing(t.dtype, t.numel(), opts.reduceOp)
        return self._run("reduce", outputs=tensors, wire=wire, count=count, op=op, root=root, send_bytes=_nbytes(t),
                         ins=[(t, 0)], outs=[(t, 0)] if root == self._rank else [], in_place=t,
                         timeout_ms=self._timeout_of(opts))

    def allgather(self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.AllgatherOptions()  # type: ignore[attr-defined]
        t = self._one(input_tensors, "all_gather")
        outs: Sequence[torch.Tensor] = self._one(output_tensors, "all_gather")  # type: ignore[arg-type]
        self._check([t, *outs])
        self._same_blocks("all_gather", t, outs)
        n = _nbytes(t)
        wire, count = _moving(t.dtype, t.numel())
        return self._run("allgather", outputs=output_tensors, wire=wire, count=count, send_bytes=n, recv_bytes=n * self._size,
                         ins=[(t, 0)], outs=[(o, i * n) for i, o in enumerate(outs)], timeout_ms=self._timeout_of(opts))

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> NccldWork:  # noqa: A002
        opts = opts if opts is not None else dist.AllgatherOptions()  # type: ignore[attr-defined]
        self._check([output, input])
        if output.numel() != input.numel() * self._size or output.dtype != input.dtype:
            raise NccldError(ErrorCode.BAD_COUNT, f"all_gather_into_tensor: the output needs {self._size} x {input.numel()} elements of {input.dtype}, not {output.numel()} of {output.dtype}")
        n = _nbytes(input)
        wire, count = _moving(input.dtype, input.numel())
        return self._run("allgather", outputs=[output], wire=wire, count=count, send_bytes=n, recv_bytes=n * self._size,
                         ins=[(input, 0)], outs=[(output, 0)], timeout_ms=self._timeout_of(opts))

    _allgather_base = all_gather_single  # torch < 2.12

    def reduce_scatter(self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        t = self._one(output_tensors, "reduce_scatter")
        ins: Sequence[torch.Tensor] = self._one(input_tensors, "reduce_scatter")  # type: ignore[arg-type]
        self._check([t, *ins])
        self._same_blocks("reduce_scatter", t, ins)
        n = _nbytes(t)
        wire, count, op = _reducing(t.dtype, t.numel(), opts.reduceOp)
        return self._run("reducescatter", outputs=output_tensors, wire=wire, count=count, op=op, send_bytes=n * self._size,
                         recv_bytes=n, ins=[(x, i * n) for i, x in enumerate(ins)], outs=[(t, 0)],
                         timeout_ms=self._timeout_of(opts))

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> NccldWork:  # noqa: A002
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        self._check([output, input])
        if input.numel() != output.numel() * self._size or output.dtype != input.dtype:
            raise NccldError(ErrorCode.BAD_COUNT, f"reduce_scatter_tensor: the input needs {self._size} x {output.numel()} elements of {output.dtype}, not {input.numel()} of {input.dtype}")
        n = _nbytes(output)
        wire, count, op = _reducing(output.dtype, output.numel(), opts.reduceOp)
        return self._run("reducescatter", outputs=[output], wire=wire, count=count, op=op, send_bytes=n * self._size,
                         recv_bytes=n, ins=[(input, 0)], outs=[(output, 0)], timeout_ms=self._timeout_of(opts))

    _reduce_scatter_base = reduce_scatter_single  # torch < 2.12

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: list[int],  # noqa: A002
                          input_split_sizes: list[int], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.AllToAllOptions()
        self._check([output, input])
        n = self._size
        if output.numel() != input.numel() or output.dtype != input.dtype:
            raise NccldError(ErrorCode.BAD_COUNT, f"all_to_all_single: input and output must have the same size and dtype ({input.numel()} {input.dtype} vs {output.numel()} {output.dtype})")
        rows_in = input.shape[0] if input.dim() else 1
        rows_out = output.shape[0] if output.dim() else 1
        for what, splits, rows in (("input", input_split_sizes, rows_in), ("output", output_split_sizes, rows_out)):
            if splits and (len(splits) != n or any(int(s) * n != rows for s in splits)):
                raise NccldError(
                    ErrorCode.BAD_COUNT,
                    f"all_to_all_single with unequal {what} splits {list(splits)}: nccld's alltoall moves equal blocks "
                    f"only ({rows} rows over {n} ranks: {rows // n if rows % n == 0 else 'not divisible'} each)",
                )
        if input.numel() % n:
            raise NccldError(ErrorCode.BAD_COUNT, f"all_to_all_single: {input.numel()} elements do not split into {n} equal blocks")
        nb = _nbytes(input)
        wire, count = _moving(input.dtype, input.numel() // n)
        return self._run("alltoall", outputs=[output], wire=wire, count=count, send_bytes=nb, recv_bytes=nb,
                         ins=[(input, 0)], outs=[(output, 0)], timeout_ms=self._timeout_of(opts))

    alltoall_base = all_to_all_single  # torch < 2.12

    def alltoall(self, output_tensors: list[torch.Tensor], input_tensors: list[torch.Tensor], opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.AllToAllOptions()
        self._check([*output_tensors, *input_tensors])
        n = self._size
        if len(output_tensors) != n or len(input_tensors) != n:
            raise NccldError(ErrorCode.BUFFER_COUNT, f"all_to_all needs {n} input and {n} output tensors")
        first = input_tensors[0]
        for x in [*input_tensors, *output_tensors]:
            if x.numel() != first.numel() or x.dtype != first.dtype:
                raise NccldError(ErrorCode.BAD_COUNT, "all_to_all with tensors of different sizes: nccld's alltoall moves equal blocks only")
        b = _nbytes(first)
        wire, count = _moving(first.dtype, first.numel())
        return self._run("alltoall", outputs=output_tensors, wire=wire, count=count, send_bytes=b * n, recv_bytes=b * n,
                         ins=[(x, i * b) for i, x in enumerate(input_tensors)],
                         outs=[(x, i * b) for i, x in enumerate(output_tensors)], timeout_ms=self._timeout_of(opts))

    def gather(self, output_tensors: list[list[torch.Tensor]], input_tensors: list[torch.Tensor], opts: Any = None) -> NccldWork:
        """An allgather of which only the root keeps the result (nccld has no gather)."""
        opts = opts if opts is not None else dist.GatherOptions()
        t = self._one(input_tensors, "gather")
        root = int(opts.rootRank)
        outs = output_tensors[0] if output_tensors else []
        self._check([t, *outs])
        if self._rank == root:
            self._same_blocks("gather", t, outs)
        n = _nbytes(t)
        wire, count = _moving(t.dtype, t.numel())
        return self._run("allgather", outputs=output_tensors, wire=wire, count=count, send_bytes=n, recv_bytes=n * self._size,
                         ins=[(t, 0)], outs=[(o, i * n) for i, o in enumerate(outs)] if self._rank == root else [],
                         timeout_ms=self._timeout_of(opts))

    def scatter(self, output_tensors: list[torch.Tensor], input_tensors: list[list[torch.Tensor]], opts: Any = None) -> NccldWork:
        """A broadcast of the root's blocks, of which each rank keeps its own (nccld has no scatter)."""
        opts = opts if opts is not None else dist.ScatterOptions()
        t = self._one(output_tensors, "scatter")
        root = int(opts.rootRank)
        ins = input_tensors[0] if input_tensors else []
        self._check([t, *ins])
        if self._rank == root:
            self._same_blocks("scatter", t, ins)
        n = _nbytes(t)
        wire, count = _moving(t.dtype, t.numel() * self._size)
        return self._run("broadcast", outputs=output_tensors, wire=wire, count=count, root=root, send_bytes=n * self._size,
                         ins=[(x, i * n) for i, x in enumerate(ins)] if self._rank == root else [],
                         outs=[(t, self._rank * n)], timeout_ms=self._timeout_of(opts))

    def barrier(self, opts: Any = None) -> NccldWork:
        opts = opts if opts is not None else dist.BarrierOptions()
        self._check([])
        return self._run("barrier", outputs=[], timeout_ms=self._timeout_of(opts))

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int = 0) -> NccldWork:
        raise NccldError(ErrorCode.BAD_REQUEST, "send/recv are not supported by the nccld backend: the daemon runs collectives only")

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int = 0) -> NccldWork:
        raise NccldError(ErrorCode.BAD_REQUEST, "send/recv are not supported by the nccld backend: the daemon runs collectives only")

    def _same_blocks(self, what: str, t: torch.Tensor, blocks: Sequence[torch.Tensor]) -> None:
        if len(blocks) != self._size:
            raise NccldError(ErrorCode.BUFFER_COUNT, f"{what}: {len(blocks)} tensors in the list, the group has {self._size} ranks")
        for b in blocks:
            if b.numel() != t.numel() or b.dtype != t.dtype:
                raise NccldError(ErrorCode.BAD_COUNT, f"{what}: every tensor of the list must have {t.numel()} elements of {t.dtype} (uneven sizes are not supported)")


# ---------------------------------------------------------------------------------------------
# Registration with torch.distributed


def _create(dist_opts: Any, backend_options: Any = None) -> NccldProcessGroup:
    """torch's creator for the backend (extended API: ``_DistributedBackendOptions``)."""
    if backend_options is not None and not isinstance(backend_options, Options):
        raise NccldError(ErrorCode.BAD_REQUEST, f"pg_options for the nccld backend must be nccld.torch.Options, not {type(backend_options).__name__}")
    return NccldProcessGroup(
        dist_opts.store,
        dist_opts.group_rank,
        dist_opts.group_size,
        dist_opts.timeout,
        group_id=str(getattr(dist_opts, "group_id", "") or ""),
        options=backend_options,
    )


def register() -> None:
    """Registers the ``"nccld"`` backend with torch.distributed (done on import; idempotent)."""
    if BACKEND_NAME.upper() in getattr(dist.Backend, "_plugins", {}):
        return
    try:
        dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=["cpu", "cuda"])
    except TypeError:  # torch without the devices argument
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True)


register()
