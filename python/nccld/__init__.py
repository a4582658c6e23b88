"""Python client for nccld, the per-host collectives daemon (wire protocol version 2).

>>> import nccld
>>> with nccld.connect() as client, nccld.HostBuffer(4096) as a, nccld.HostBuffer(4096) as b:
...     a.array("f32")[:] = 1; b.array("f32")[:] = 2
...     client.allreduce([a, b], "f32", "sum", 1024)   # a world of 2 ranks

See docs/python.md.
"""

from .buffers import BufferRef, CudaAllocation, HostBuffer, Registration, Slot, cuda_allocation
from .client import MAX_RELEASE_BUFFERS, PROTOCOL_VERSION, Client, Hello, connect
from .dtypes import COLLECTIVES, DTYPES, REDUCE_OPS, bf16_to_f32, dtype_name, f32_to_bf16, itemsize, numpy_dtype
from ._wire import default_socket_path
from .errors import ErrorCode, NccldError
from .group import Group

__version__ = "0.1.0"

__all__ = [
    "BufferRef",
    "COLLECTIVES",
    "Client",
    "CudaAllocation",
    "DTYPES",
    "ErrorCode",
    "Group",
    "Hello",
    "HostBuffer",
    "MAX_RELEASE_BUFFERS",
    "NccldError",
    "PROTOCOL_VERSION",
    "REDUCE_OPS",
    "Registration",
    "Slot",
    "bf16_to_f32",
    "connect",
    "cuda_allocation",
    "default_socket_path",
    "dtype_name",
    "f32_to_bf16",
    "itemsize",
    "numpy_dtype",
]
