"""The few CUDA driver calls the client needs to register torch's CUDA memory, through ctypes.

Used by :func:`nccld.buffers.cuda_allocation` and the torch backend. Needs torch (for its
device contexts) and libcuda.so.1; neither is imported until a CUDA tensor is registered.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch  # type: ignore[import-not-found, unused-ignore]

from .errors import ErrorCode, NccldError


class CudaDriver:
    """The few CUDA driver calls the CUDA path needs, through ctypes.

    ``storage._share_cuda_()`` is not used on this path: each call puts the storage behind a new
    reference-counted IPC context (a shared-memory counter that nccld never decrements, so the
    memory stays in torch's "limbo" when the tensor dies) and records an interprocess event on
    the current stream (after 1000 such events: a stream synchronize per call).
    """

    _instance: CudaDriver | None = None
    _lock = threading.Lock()
    # CUpointer_attribute
    _RANGE_START_ADDR = 11
    _RANGE_SIZE = 12
    _BUFFER_ID = 7

    def __init__(self) -> None:
        lib = ctypes.CDLL("libcuda.so.1")

        def fn(name: str, *args: Any) -> Any:
            f = getattr(lib, name)
            f.argtypes = list(args)
            f.restype = ctypes.c_int
            return f

        P = ctypes.POINTER
        self._range = fn("cuMemGetAddressRange_v2", P(ctypes.c_uint64), P(ctypes.c_size_t), ctypes.c_uint64)
        self._attrs = fn("cuPointerGetAttributes", ctypes.c_uint, P(ctypes.c_int), P(ctypes.c_void_p), ctypes.c_uint64)
        self._ipc = fn("cuIpcGetMemHandle", ctypes.c_char_p, ctypes.c_uint64)
        self._ctx_get = fn("cuCtxGetCurrent", P(ctypes.c_void_p))
        self._ctx_set = fn("cuCtxSetCurrent", ctypes.c_void_p)
        self._dev_get = fn("cuDeviceGet", P(ctypes.c_int), ctypes.c_int)
        self._primary = fn("cuDevicePrimaryCtxRetain", P(ctypes.c_void_p), ctypes.c_int)
        self._name = fn("cuGetErrorName", ctypes.c_int, P(ctypes.c_char_p))

    @classmethod
    def get(cls) -> CudaDriver:
        with cls._lock:
            if cls._instance is None:
                try:
                    cls._instance = cls()
                except (OSError, AttributeError) as exc:
                    raise NccldError(ErrorCode.GPU_UNAVAILABLE, f"cannot use the CUDA driver (libcuda.so.1): {exc}") from None
            return cls._instance

    def _err(self, code: int) -> str:
        s = ctypes.c_char_p()
        self._name(code, ctypes.byref(s))
        return s.value.decode() if s.value else f"CUresult {code}"

    def _context(self, device: int) -> None:
        """Makes sure this thread has a current context (torch's: the device's primary one)."""
        ctx = ctypes.c_void_p()
        if self._ctx_get(ctypes.byref(ctx)) == 0 and ctx.value:
            return
        # A thread that has not used CUDA yet. Driver and runtime number devices alike.
        dev = ctypes.c_int()
        r = self._dev_get(ctypes.byref(dev), device)
        if r == 0:
            r = self._primary(ctypes.byref(ctx), dev.value)
        if r == 0:
            r = self._ctx_set(ctx)
        if r != 0:
            raise NccldError(ErrorCode.CUDA, f"cannot make cuda:{device}'s context current: {self._err(r)}")

    def locate(self, ptr: int, device: int) -> tuple[int, int, int]:
        """(base, size, buffer id) of the allocation holding ``ptr``. The buffer id is unique to
        that allocation for the life of the process (0: unknown, do not cache on it)."""
        with torch.cuda.device(device):
            self._context(device)
            base = ctypes.c_uint64()
            size = ctypes.c_size_t()
            bid = ctypes.c_ulonglong()
            attrs = (ctypes.c_int * 3)(self._RANGE_START_ADDR, self._RANGE_SIZE, self._BUFFER_ID)
            data = (ctypes.c_void_p * 3)(ctypes.addressof(base), ctypes.addressof(size), ctypes.addressof(bid))
            if self._attrs(3, attrs, data, ptr) == 0 and base.value and base.value <= ptr < base.value + size.value:
                return int(base.value), int(size.value), int(bid.value)
            r = self._range(ctypes.byref(base), ctypes.byref(size), ptr)
            if r != 0:
                raise NccldError(ErrorCode.BAD_BUFFER, f"cuMemGetAddressRange failed for a tensor on cuda:{device}: {self._err(r)}")
            return int(base.value), int(size.value), 0

    def ipc_handle(self, base: int, device: int) -> bytes:
        """The 64-byte CUDA IPC handle of the allocation at ``base``."""
        with torch.cuda.device(device):
            self._context(device)
            handle = ctypes.create_string_buffer(64)
            r = self._ipc(handle, base)
            if r != 0:
                raise NccldError(
                    ErrorCode.BAD_BUFFER,
                    f"cuIpcGetMemHandle failed for a tensor on cuda:{device} ({self._err(r)}): only cudaMalloc "
                    "memory can be registered; PyTorch's expandable segments cannot "
                    "(set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False)",
                )
            return handle.raw

    def segment(self, ptr: int, device: int) -> tuple[int, int, bytes]:
        """(base, size, 64-byte IPC handle) of the cudaMalloc allocation holding ``ptr``."""
        base, size, _ = self.locate(ptr, device)
        return base, size, self.ipc_handle(base, device)
