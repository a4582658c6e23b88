"""The protocol's element types and reduction ops, and their numpy counterparts.

numpy has no bfloat16: a ``bf16`` array is a ``uint16`` array of the raw 16-bit words; convert
with :func:`bf16_to_f32` and :func:`f32_to_bf16`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DType",
    "DTypeLike",
    "ReduceOp",
    "CollectiveName",
    "DTYPES",
    "REDUCE_OPS",
    "COLLECTIVES",
    "REDUCING",
    "ROOTED",
    "dtype_name",
    "numpy_dtype",
    "itemsize",
    "bf16_to_f32",
    "f32_to_bf16",
]

DType = Literal["i8", "u8", "i32", "u32", "i64", "u64", "f16", "bf16", "f32", "f64"]
ReduceOp = Literal["sum", "prod", "max", "min", "avg"]
CollectiveName = Literal["allreduce", "broadcast", "reduce", "allgather", "reducescatter", "alltoall", "barrier"]
#: What the API takes for a dtype: a protocol name (str), a numpy dtype or type, or a torch dtype.
DTypeLike = Any

#: Protocol name -> the numpy dtype its elements are read with (bf16: raw uint16 words).
DTYPES: dict[str, np.dtype[Any]] = {
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i32": np.dtype("<i4"),
    "u32": np.dtype("<u4"),
    "i64": np.dtype("<i8"),
    "u64": np.dtype("<u8"),
    "f16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "f32": np.dtype("<f4"),
    "f64": np.dtype("<f8"),
}
REDUCE_OPS: tuple[str, ...] = ("sum", "prod", "max", "min", "avg")
COLLECTIVES: tuple[str, ...] = ("allreduce", "broadcast", "reduce", "allgather", "reducescatter", "alltoall", "barrier")
#: The collectives that take an ``op``.
REDUCING: frozenset[str] = frozenset({"allreduce", "reduce", "reducescatter"})
#: The collectives that take a ``root``.
ROOTED: frozenset[str] = frozenset({"broadcast", "reduce"})

_FROM_NUMPY = {
    np.dtype(np.int8): "i8",
    np.dtype(np.uint8): "u8",
    np.dtype(np.int32): "i32",
    np.dtype(np.uint32): "u32",
    np.dtype(np.int64): "i64",
    np.dtype(np.uint64): "u64",
    np.dtype(np.float16): "f16",
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
}
_FROM_TORCH = {
    "int8": "i8",
    "uint8": "u8",
    "int32": "i32",
    "uint32": "u32",
    "int64": "i64",
    "uint64": "u64",
    "float16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
    "float32": "f32",
    "float": "f32",
    "float64": "f64",
    "double": "f64",
}


def dtype_name(dtype: DTypeLike) -> str:
    """The protocol's name for ``dtype``.

    Takes a protocol name (``"f32"``), a numpy dtype or type (``np.float32``), a numpy name
    (``"float32"``) or a torch dtype (``torch.bfloat16``). Anything else is returned as given (a
    string) so that the daemon can refuse it with ``NCCLD_ERR_BAD_DTYPE``.
    """
    if isinstance(dtype, str):
        if dtype in DTYPES:
            return dtype
        if dtype in _FROM_TORCH:
            return _FROM_TORCH[dtype]
        try:
            return _FROM_NUMPY.get(np.dtype(dtype), dtype)
        except TypeError:
            return dtype
    mod = type(dtype).__module__
    if mod.startswith("torch"):  # torch.float32 and friends, without importing torch
        name = str(dtype).removeprefix("torch.")
        return _FROM_TORCH.get(name, name)
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        return str(dtype)
    return _FROM_NUMPY.get(np_dtype, str(dtype))


def numpy_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """The numpy dtype elements of ``dtype`` are stored as (``bf16``: ``uint16`` words)."""
    name = dtype_name(dtype)
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"{dtype!r} is not one of the protocol's dtypes: {', '.join(DTYPES)}") from None


def itemsize(dtype: DTypeLike) -> int:
    """Bytes per element of ``dtype``."""
    return numpy_dtype(dtype).itemsize


def bf16_to_f32(words: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """bf16 words (uint16) to float32: each word is the upper half of a binary32."""
    w = np.asarray(words, dtype=np.uint16)
    return (w.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """float32 values to bf16 words, rounding to nearest even; NaNs stay quiet NaNs."""
    f = np.array(values, dtype=np.float32, order="C")  # a copy: keeps 0-d arrays 0-d
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out
