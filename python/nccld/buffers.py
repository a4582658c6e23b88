"""Memory the daemon can use: sealed memfds (host backend) and CUDA allocations (nccl backend)."""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .dtypes import DTypeLike, numpy_dtype
from .errors import ErrorCode, NccldError

if TYPE_CHECKING:
    from .client import Client

__all__ = ["HostBuffer", "Registration", "Slot", "BufferRef", "CudaAllocation", "cuda_allocation"]

IPC_HANDLE_BYTES = 64
_names = itertools.count(1)


class HostBuffer:
    """A sealed memfd mapped into this process: host-backend memory for collectives.

    Made exactly as docs/protocol.md's register section requires: ``memfd_create`` with
    ``MFD_CLOEXEC | MFD_ALLOW_SEALING``, ``ftruncate``, ``posix_fallocate`` (every page reserved
    now), sealed with ``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``, mapped shared read-write. Its
    bytes start zeroed. Register it with :meth:`Client.register` (or name it in a collective,
    which registers it on first use); the descriptor travels with the register frame.

    As a context manager it closes on exit: released from every client that registered it, then
    unmapped. The daemon keeps its own reference to the memory until the release's reply.
    """

    def __init__(self, nbytes: int, *, name: str | None = None) -> None:
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
            raise NccldError(ErrorCode.BAD_COUNT, f"HostBuffer needs a positive byte count, not {nbytes!r}")
        self.name = name or f"nccld-py-{os.getpid()}-{next(_names)}"
        fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, nbytes)
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as exc:
                code = ErrorCode.RESOURCE_EXHAUSTED if exc.errno in (errno.ENOSPC, errno.ENOMEM) else ErrorCode.BAD_BUFFER
                raise NccldError(code, f"cannot reserve {nbytes} bytes for {self.name}: {exc.strerror}", {"errno": exc.errno}) from None
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._mmap: mmap.mmap | None = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.nbytes = nbytes
        self._lock = threading.Lock()
        # Clients this buffer is registered with: close() releases it from each first.
        self._clients: weakref.WeakSet[Client] = weakref.WeakSet()

    @property
    def fd(self) -> int:
        """The memfd (owned by this object: do not close it)."""
        if self._fd < 0:
            raise NccldError(ErrorCode.BUFFER_CLOSED, f"{self.name} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def memory(self) -> mmap.mmap:
        """The shared mapping itself."""
        if self._mmap is None:
            raise NccldError(ErrorCode.BUFFER_CLOSED, f"{self.name} is closed")
        return self._mmap

    def array(self, dtype: DTypeLike, count: int | None = None, offset: int = 0) -> np.ndarray[Any, Any]:
        """A numpy array over the shared memory: ``count`` elements (default: as many as fit) from byte ``offset``.

        Writes through it are what the daemon reads; after a collective's reply it shows the result.
        ``bf16`` gives ``uint16`` words (see :func:`nccld.dtypes.bf16_to_f32`).
        """
        dt = numpy_dtype(dtype)
        if count is None:
            count = (self.nbytes - offset) // dt.itemsize
        return np.frombuffer(self.memory, dtype=dt, count=count, offset=offset)

    def _registered_with(self, client: Client) -> None:
        with self._lock:
            self._clients.add(client)

    def _forget(self, client: Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def close(self) -> None:
        """Releases this buffer from every client that registered it, then unmaps it and closes the memfd.

        numpy arrays taken from :meth:`array` keep the mapping alive until they are gone; the
        memory is unmapped then.
        """
        if self._fd < 0:
            return
        with self._lock:
            clients = list(self._clients)
            self._clients.clear()
        for client in clients:
            client._release_on_close(self)
        m, self._mmap = self._mmap, None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # arrays still point into it: it is unmapped when the last one goes
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> HostBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
            self._fd = -1

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"HostBuffer({self.nbytes}, name={self.name!r}, {state})"


@dataclass(frozen=True)
class CudaAllocation:
    """A CUDA allocation as the daemon registers it: its IPC handle and where a tensor sits in it."""

    #: The 64-byte ``cudaIpcMemHandle_t`` of the allocation's base.
    handle: bytes
    #: The CUDA ordinal of the memory, as this process numbers GPUs (torch's).
    local_device: int
    #: Bytes from the allocation's base to the tensor's first element.
    offset: int


def cuda_allocation(tensor: Any) -> CudaAllocation:
    """The cudaMalloc allocation a CUDA torch tensor lives in, found with the driver
    (``cuPointerGetAttributes``, ``cuIpcGetMemHandle``), and the tensor's offset in it.

    Not ``untyped_storage()._share_cuda_()``: each call of that puts the storage behind a new
    reference-counted IPC context that nccld never decrements (the memory then lingers after
    the tensor dies) and records an interprocess event on the current stream.
    """
    if not getattr(tensor, "is_cuda", False):
        raise NccldError(ErrorCode.WRONG_BACKEND, "only CUDA tensors can be registered with the nccl backend")
    from ._cuda import CudaDriver  # noqa: PLC0415 - torch and libcuda only when a CUDA tensor is used

    device = int(tensor.device.index if tensor.device.index is not None else 0)
    ptr = int(tensor.data_ptr())
    base, _size, handle = CudaDriver.get().segment(ptr, device)
    return CudaAllocation(handle=handle, local_device=device, offset=ptr - base)


class Registration:
    """A buffer registered on one connection: the daemon's number for it and its usable size.

    Collectives name it (or a :class:`Slot` of it). ``release()`` (or leaving its ``with``
    block) drops it; the daemon lets go of the memory once no collective uses it.
    """

    def __init__(self, client: Client, number: int, nbytes: int, source: object | None = None) -> None:
        self.client = client
        #: The daemon's number for this registration (valid on this connection only).
        self.number = number
        #: Usable bytes from the registration's start (a memfd's size; a CUDA allocation's size).
        self.nbytes = nbytes
        #: What was registered: a HostBuffer, a CudaAllocation, or None (a raw descriptor or handle).
        self.source = source
        self.released = False

    def slot(self, offset: int = 0) -> Slot:
        """This registration from byte ``offset`` on."""
        return Slot(self, offset)

    def release(self) -> None:
        """Releases it (blocking until the daemon has let the memory go). Idempotent."""
        if not self.released:
            self.client.release(self)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.client.closed:
            self.release()

    def __repr__(self) -> str:
        return f"Registration(number={self.number}, nbytes={self.nbytes}{', released' if self.released else ''})"


@dataclass(frozen=True)
class Slot:
    """A buffer and a byte offset into it (a multiple of the element size)."""

    buffer: HostBuffer | Registration | int | Any
    offset: int = 0


#: What a collective takes for a buffer: a HostBuffer (registered on first use), a
#: Registration, a registration number, a Slot, or a CUDA torch tensor (nccl backend).
BufferRef = Union[HostBuffer, Registration, int, Slot, Any]
