"""Every collective x dtype x op against a reference, in both forms: one client naming every
rank's buffer (a world of 3), and a group of 2 members on two connections."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

import nccld
from nccld import HostBuffer, Slot

from .conftest import WORLD, Daemon
from .reference import DTYPES, OPS, check, check_exact, random_data, reduce

COUNT = 37  # odd on purpose
RECV_AT = 8192  # byte offset of the recv region in each rank's buffer

REDUCING = ("allreduce", "reduce", "reducescatter")
COPYING = ("broadcast", "allgather", "alltoall")


def cases() -> Iterator[Any]:
    for c in REDUCING:
        for dtype in DTYPES:
            for op in OPS:
                for inplace in (False, True):
                    yield pytest.param(c, dtype, op, inplace, id=f"{c}-{dtype}-{op}-{'inplace' if inplace else 'outofplace'}")
    for c in COPYING:
        for dtype in DTYPES:
            for inplace in ((False,) if c == "alltoall" else (False, True)):
                yield pytest.param(c, dtype, None, inplace, id=f"{c}-{dtype}-{'inplace' if inplace else 'outofplace'}")


def sizes(c: str, count: int, n: int) -> tuple[int, int]:
    """Elements of (send, recv) per rank, NCCL's conventions."""
    return {
        "allgather": (count, count * n),
        "reducescatter": (count * n, count),
        "alltoall": (count * n, count * n),
    }.get(c, (count, count))


#: Submits one collective: (collective, send slots, recv slots or None, **fields) -> the futures
#: of every request it sent (one for a single client, one per member for a group).
Submit = Callable[..., "list[Future[int]]"]


def run_and_check(bufs: list[HostBuffer], submit: Submit, c: str, dtype: str, op: str | None, inplace: bool, root: int | None = None) -> None:
    n = len(bufs)
    rng = np.random.default_rng(zlib.crc32(f"{c}{dtype}{op}{inplace}{n}".encode()))
    s_elems, r_elems = sizes(c, COUNT, n)
    if inplace:
        # The one slot is the whole receive buffer for allgather, the whole send buffer otherwise.
        region = max(s_elems, r_elems)
        before = [random_data(dtype, region, rng) for _ in range(n)]
        for buf, b in zip(bufs, before):
            buf.array(dtype, region)[:] = b
        if c == "allgather":
            inputs = [before[r][r * COUNT : (r + 1) * COUNT] for r in range(n)]
        else:
            inputs = [b[:s_elems] for b in before]
    else:
        inputs = [random_data(dtype, s_elems, rng) for _ in range(n)]
        before = [random_data(dtype, r_elems, rng) for _ in range(n)]
        for buf, x, b in zip(bufs, inputs, before):
            buf.array(dtype, s_elems)[:] = x
            buf.array(dtype, r_elems, RECV_AT)[:] = b
    futs = submit(
        c,
        [Slot(b, 0) for b in bufs],
        None if inplace else [Slot(b, RECV_AT) for b in bufs],
        dtype=dtype,
        op=op,
        count=COUNT,
        root=root,
    )
    seqs = {f.result(timeout=30) for f in futs}
    assert len(seqs) == 1 and next(iter(seqs)) > 0
    out_at = 0 if inplace else RECV_AT
    out_elems = max(s_elems, r_elems) if inplace else r_elems
    got = [b.array(dtype, out_elems, out_at) for b in bufs]
    for r in range(n):
        what = f"{c} rank {r}"
        if c == "allreduce":
            check(got[r][:COUNT], reduce(inputs, dtype, op), dtype, what)  # type: ignore[arg-type]
        elif c == "reduce":
            if r == root:
                check(got[r][:COUNT], reduce(inputs, dtype, op), dtype, what)  # type: ignore[arg-type]
            else:
                check_exact(got[r][:COUNT], before[r][:COUNT], what + " (not the root: untouched)")
        elif c == "reducescatter":
            blocks = [x[r * COUNT : (r + 1) * COUNT] for x in inputs]
            mine = got[r][r * COUNT : (r + 1) * COUNT] if inplace else got[r]
            check(mine, reduce(blocks, dtype, op), dtype, what)  # type: ignore[arg-type]
        elif c == "broadcast":
            check_exact(got[r][:COUNT], inputs[root][:COUNT], what)  # type: ignore[index]
        elif c == "allgather":
            check_exact(got[r], np.concatenate(inputs), what)
        elif c == "alltoall":
            want = np.concatenate([inputs[j][r * COUNT : (r + 1) * COUNT] for j in range(n)])
            check_exact(got[r], want, what)


# -- one client, every rank's buffer --------------------------------------------------------------


@pytest.fixture(scope="module")
def single(daemon: Daemon) -> Iterator[tuple[nccld.Client, list[HostBuffer]]]:
    with daemon.connect(name="collectives") as c:
        bufs = [HostBuffer(64 << 10) for _ in range(c.world_size)]
        yield c, bufs
        for b in bufs:
            b.close()


@pytest.mark.parametrize("c, dtype, op, inplace", list(cases()))
def test_single_client(single: tuple[nccld.Client, list[HostBuffer]], c: str, dtype: str, op: str | None, inplace: bool) -> None:
    client, bufs = single

    def submit(coll: str, send: Any, recv: Any, **kw: Any) -> list[Future[int]]:
        return [client.submit_collective(coll, send, recv, **kw)]

    run_and_check(bufs, submit, c, dtype, op, inplace, root=1 if c in ("broadcast", "reduce") else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_allreduce_request(single: tuple[nccld.Client, list[HostBuffer]], dtype: str, op: str) -> None:
    """The `allreduce` request type (not `collective`), with a byte offset into every buffer."""
    client, bufs = single
    rng = np.random.default_rng(zlib.crc32(f"allreduce{dtype}{op}".encode()))
    offset = 64
    inputs = [random_data(dtype, COUNT, rng) for _ in bufs]
    for b, x in zip(bufs, inputs):
        b.array(dtype, COUNT, offset)[:] = x
    seq = client.allreduce(bufs, dtype, op, COUNT, offset=offset)
    assert seq > 0
    want = reduce(inputs, dtype, op)
    for r, b in enumerate(bufs):
        check(b.array(dtype, COUNT, offset), want, dtype, f"rank {r}")  # type: ignore[arg-type]


def test_barrier(single: tuple[nccld.Client, list[HostBuffer]]) -> None:
    client, _ = single
    a = client.barrier()
    b = client.barrier()
    assert b > a > 0


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32", "f64"])
@pytest.mark.parametrize("op", ["max", "min"])
def test_nan_is_ignored_by_max_and_min(single: tuple[nccld.Client, list[HostBuffer]], dtype: str, op: str) -> None:
    client, bufs = single
    nan = np.float32("nan")
    cols = np.array([[nan, 1.0, nan], [2.0, nan, nan], [-1.0, 3.0, nan]], dtype=np.float32)  # [rank][element]
    for r, b in enumerate(bufs):
        vals = nccld.f32_to_bf16(cols[r]) if dtype == "bf16" else cols[r].astype(nccld.numpy_dtype(dtype))
        b.array(dtype, 3)[:] = vals
    client.allreduce(bufs, dtype, op, 3)
    got = bufs[0].array(dtype, 3)
    g = nccld.bf16_to_f32(got) if dtype == "bf16" else got.astype(np.float32)
    assert g[0] == (2.0 if op == "max" else -1.0)
    assert g[1] == (3.0 if op == "max" else 1.0)
    assert np.isnan(g[2])


def test_integer_avg_and_wraparound(single: tuple[nccld.Client, list[HostBuffer]]) -> None:
    """docs/protocol.md's own examples: the i32 average of 2147483647 and 1 (and 0) wraps."""
    client, bufs = single
    for b, v in zip(bufs, [2147483647, 1, 0]):
        b.array("i32", 1)[0] = v
    client.allreduce(bufs, "i32", "avg", 1)
    assert bufs[0].array("i32", 1)[0] == -2147483648 // 3 + 1  # -715827882: truncated toward zero
    for b, v in zip(bufs, [-7, 0, 0]):
        b.array("i32", 1)[0] = v
    client.allreduce(bufs, "i32", "avg", 1)
    assert bufs[2].array("i32", 1)[0] == -2


def test_count_zero_is_numbered(single: tuple[nccld.Client, list[HostBuffer]]) -> None:
    client, bufs = single
    a = client.allreduce(bufs, "f32", "sum", 0)
    b = client.collective("allgather", bufs, dtype="f32", count=0)
    assert b > a > 0


# -- a group of 2 members, each on its own connection --------------------------------------------


@pytest.fixture(scope="module")
def pair(daemon: Daemon) -> Iterator[list[tuple[nccld.Client, nccld.Group, HostBuffer]]]:
    clients = [daemon.connect(name=f"member-{r}") for r in range(2)]
    devices = [2, 0]  # world ranks the members sit on: any, one per member, on the host backend
    futs = [c.submit_join("pytest-pair", 2, r, device=devices[r], timeout_ms=10_000) for r, c in enumerate(clients)]
    groups = [f.result(timeout=15) for f in futs]
    bufs = [HostBuffer(64 << 10) for _ in range(2)]
    assert [g.devices for g in groups] == [devices, devices]
    assert [g.rank for g in groups] == [0, 1] and all(g.size == 2 for g in groups)
    yield list(zip(clients, groups, bufs))
    for g in groups:
        g.client.close()
    for b in bufs:
        b.close()


@pytest.mark.parametrize("c, dtype, op, inplace", list(cases()))
def test_group(pair: list[tuple[nccld.Client, nccld.Group, HostBuffer]], c: str, dtype: str, op: str | None, inplace: bool) -> None:
    groups = [g for _, g, _ in pair]

    def submit(coll: str, send: Any, recv: Any, **kw: Any) -> list[Future[int]]:
        return [g.submit_collective(coll, send[i], None if recv is None else recv[i], **kw) for i, g in enumerate(groups)]

    run_and_check([b for _, _, b in pair], submit, c, dtype, op, inplace, root=0 if c in ("broadcast", "reduce") else None)


def test_group_barrier(pair: list[tuple[nccld.Client, nccld.Group, HostBuffer]]) -> None:
    futs = [g.submit_collective("barrier") for _, g, _ in pair]
    seqs = {f.result(timeout=10) for f in futs}
    assert len(seqs) == 1


def test_group_blocking_wrappers(pair: list[tuple[nccld.Client, nccld.Group, HostBuffer]]) -> None:
    """The named methods block until every member's part is done: run them on two threads."""
    from concurrent.futures import ThreadPoolExecutor

    for r, (_, _, b) in enumerate(pair):
        b.array("f32", 4)[:] = r + 1

    def member(i: int) -> list[float]:
        _, g, b = pair[i]
        g.allreduce(b, dtype="f32", op="sum", count=4)
        g.broadcast(b, dtype="f32", count=4, root=1)
        g.barrier()
        return b.array("f32", 4).tolist()

    with ThreadPoolExecutor(2) as ex:
        out = list(ex.map(member, range(2)))
    assert out == [[3.0] * 4, [3.0] * 4]
