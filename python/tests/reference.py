"""What the daemon should compute: float64 references for floats, exact integers for integers,
following docs/protocol.md "What the ops compute"."""

from __future__ import annotations

from typing import Any

import numpy as np

from nccld import bf16_to_f32, f32_to_bf16, numpy_dtype

INTS = {"i8": (8, True), "u8": (8, False), "i32": (32, True), "u32": (32, False), "i64": (64, True), "u64": (64, False)}
FLOATS = ("f16", "bf16", "f32", "f64")
DTYPES = ("i8", "u8", "i32", "u32", "i64", "u64", "f16", "bf16", "f32", "f64")
OPS = ("sum", "prod", "max", "min", "avg")
#: Relative (and absolute) tolerance per float type: about two units in the last place.
TOL = {"f16": 2e-3, "bf16": 1.6e-2, "f32": 3e-7, "f64": 1e-15}


def random_data(dtype: str, count: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """Values stored as `dtype` elements (bf16: uint16 words)."""
    if dtype in INTS:
        bits, signed = INTS[dtype]
        lo, hi = (-6, 7) if signed else (0, 12)
        vals = rng.integers(lo, hi, count)
        if bits >= 32:  # a few big ones, so sums and products wrap
            big = rng.integers(0, count, max(1, count // 8))
            vals = vals.astype(object)
            for i in big:
                vals[i] = int(rng.integers(0, 1 << 20)) << (bits - 22)
                if signed and rng.integers(0, 2):
                    vals[i] = -vals[i]
            return np.array([wrap(int(v), dtype) for v in vals], dtype=numpy_dtype(dtype))
        return vals.astype(numpy_dtype(dtype))
    f = rng.uniform(-2.0, 2.0, count)
    f[np.abs(f) < 0.1] += 0.5  # no values near 0: relative errors of products stay small
    if dtype == "bf16":
        return f32_to_bf16(f.astype(np.float32))
    return f.astype(numpy_dtype(dtype))


def wrap(x: int, dtype: str) -> int:
    bits, signed = INTS[dtype]
    x %= 1 << bits
    if signed and x >= 1 << (bits - 1):
        x -= 1 << bits
    return x


def as_f64(a: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    if dtype == "bf16":
        return bf16_to_f32(a).astype(np.float64)
    return a.astype(np.float64)


def round_to(x: float, dtype: str) -> float:
    """`x` rounded to the element type, as a float64."""
    if dtype == "bf16":
        return float(bf16_to_f32(f32_to_bf16(np.float32(x)))[()])
    return float(np.array(x, dtype=numpy_dtype(dtype))[()])


def reduce(inputs: list[np.ndarray[Any, Any]], dtype: str, op: str) -> np.ndarray[Any, Any]:
    """The reduction of one array per rank: ints exact (object arrays), floats in float64."""
    n = len(inputs)
    if dtype in INTS:
        cols = [[int(v) for v in a] for a in inputs]
        out = []
        for vals in zip(*cols):
            if op == "sum":
                r = wrap(sum(vals), dtype)
            elif op == "prod":
                p = 1
                for v in vals:
                    p *= v
                r = wrap(p, dtype)
            elif op == "max":
                r = max(vals)
            elif op == "min":
                r = min(vals)
            else:  # avg: the wrapped sum, divided truncating toward zero
                s = wrap(sum(vals), dtype)
                r = abs(s) // n * (1 if s >= 0 else -1)
            out.append(r)
        return np.array(out, dtype=object)
    xs = np.stack([as_f64(a, dtype) for a in inputs])
    if op == "sum":
        return xs.sum(axis=0)
    if op == "prod":
        return xs.prod(axis=0)
    if op == "max":
        return np.fmax.reduce(xs, axis=0)
    if op == "min":
        return np.fmin.reduce(xs, axis=0)
    return (xs * round_to(1.0 / n, dtype)).sum(axis=0)


def check(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any], dtype: str, what: str = "") -> None:
    """`got` (elements of `dtype`) equals `want` (a reference from reduce(), or elements)."""
    if dtype in INTS:
        g = [int(v) for v in got]
        w = [int(v) for v in want]
        assert g == w, f"{what}: {dtype} results differ at {[i for i, (a, b) in enumerate(zip(g, w)) if a != b][:10]}: got {g[:8]} want {w[:8]}"
        return
    g = as_f64(got, dtype)
    w = want if want.dtype == np.float64 else as_f64(want, dtype)
    tol = TOL[dtype]
    ok = np.isclose(g, w, rtol=tol, atol=tol, equal_nan=True)
    assert ok.all(), f"{what}: {dtype} results differ at {np.flatnonzero(~ok)[:10]}: got {g[~ok][:5]} want {w[~ok][:5]}"


def check_exact(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any], what: str = "") -> None:
    """Bit for bit (copies: broadcast, allgather, alltoall)."""
    g = np.ascontiguousarray(got).view(np.uint8)
    w = np.ascontiguousarray(want).view(np.uint8)
    assert g.shape == w.shape and np.array_equal(g, w), f"{what}: bytes differ"
