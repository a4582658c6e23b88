"""The "nccld" torch.distributed backend on CUDA tensors (nccl backend), a world of 1 process:
every collective against torch's own "nccl" backend, and the CUDA-event path: the daemon's
stream waits for the client's stream and the client's stream for the daemon's, while the host
goes on. Skipped where there is no GPU."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch backend tests need it (pip install 'nccld[torch]')")
if not torch.cuda.is_available():
    pytest.skip("torch.cuda is not available (no GPU or no CUDA build of torch here): CUDA backend tests skipped", allow_module_level=True)
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

import nccld  # noqa: E402
import nccld.torch as nt  # noqa: E402
from nccld import ErrorCode, NccldError  # noqa: E402

from .conftest import Daemon, gpu_daemon_or_skip  # noqa: E402

DEV = "cuda:0"


@pytest.fixture(scope="module")
def job() -> Iterator[dict[str, Any]]:
    """A world of 1 on a nccl-backend daemon: "nccld" as the default group, and "nccl" (when
    torch has it) as a second group to compare with."""
    d = gpu_daemon_or_skip()
    old = os.environ.get("NCCLD_SOCKET")
    os.environ["NCCLD_SOCKET"] = d.socket
    tmp = tempfile.mkdtemp(prefix="nccld-torch-cuda-")
    torch.cuda.set_device(0)
    try:
        dist.init_process_group("nccld", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        ref = dist.new_group(backend="nccl") if dist.is_nccl_available() else None
        yield {"daemon": d, "pg": dist.distributed_c10d._get_default_group(), "ref": ref}
        dist.destroy_process_group()
    finally:
        if old is None:
            os.environ.pop("NCCLD_SOCKET", None)
        else:
            os.environ["NCCLD_SOCKET"] = old
        d.stop()


def _x(dtype: Any, count: int = 1000, seed: int = 0) -> Any:
    x = (torch.arange(count, device=DEV, dtype=torch.int64) * 7 + seed) % 5 + 1
    if dtype == torch.bool:
        return x % 2 == 0
    return x.to(dtype)


def _same(got: Any, want: Any) -> None:
    if isinstance(got, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), (got.flatten()[:8], want.flatten()[:8])


REF_REFUSED: list[str] = []


def _both(job: dict[str, Any], fn: Any) -> Any:
    """fn(group) on "nccld", and the same on "nccl" to compare with (where torch's nccl runs it)."""
    got = fn(None)
    torch.cuda.synchronize()
    if job["ref"] is not None:
        try:
            want = fn(job["ref"])
            torch.cuda.synchronize()
        except (RuntimeError, TypeError, ValueError) as exc:  # what torch's own nccl refuses (int16...) is not compared
            REF_REFUSED.append(f"{getattr(fn, '__name__', fn)}: {exc}")
            return got
        _same(got, want)
    return got


def test_the_group_sits_on_this_gpu(job: dict[str, Any]) -> None:
    pg = job["pg"]
    assert isinstance(pg, nt.NccldProcessGroup) and dist.get_backend() == "nccld"
    assert pg.client.backend == "nccl" and pg.nccld_group.devices == [pg.client.world_rank_of(0)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int32", "int64", "int8", "uint8"])
@pytest.mark.parametrize("op", ["SUM", "PRODUCT", "MIN", "MAX", "AVG"])
def test_all_reduce(job: dict[str, Any], dtype: str, op: str) -> None:
    dt = getattr(torch, dtype)

    def ar(g: Any) -> Any:
        x = _x(dt)
        dist.all_reduce(x, op=getattr(dist.ReduceOp, op), group=g)
        return x

    out = _both(job, ar)
    _same(out, _x(dt))  # a world of 1


def test_every_other_collective(job: dict[str, Any]) -> None:
    def bcast(g: Any) -> Any:
        x = _x(torch.float32)
        dist.broadcast(x, 0, group=g)
        return x

    def bcast_int16(g: Any) -> Any:  # no such type in the protocol: moved as bytes
        x = _x(torch.int16)
        dist.broadcast(x, 0, group=g)
        return x

    def reduce(g: Any) -> Any:
        x = _x(torch.float32)
        dist.reduce(x, 0, op=dist.ReduceOp.MAX, group=g)
        return x

    def all_gather(g: Any) -> Any:
        outs = [torch.zeros(1000, device=DEV)]
        dist.all_gather(outs, _x(torch.float32), group=g)
        return outs

    def all_gather_into_tensor(g: Any) -> Any:
        out = torch.zeros(1000, device=DEV, dtype=torch.bfloat16)
        dist.all_gather_into_tensor(out, _x(torch.bfloat16), group=g)
        return out

    def reduce_scatter(g: Any) -> Any:
        out = torch.zeros(1000, device=DEV)
        dist.reduce_scatter(out, [_x(torch.float32)], group=g)
        return out

    def reduce_scatter_tensor(g: Any) -> Any:
        out = torch.zeros(1000, device=DEV, dtype=torch.int64)
        dist.reduce_scatter_tensor(out, _x(torch.int64), op=dist.ReduceOp.MIN, group=g)
        return out

    def all_to_all_single(g: Any) -> Any:
        out = torch.zeros(10, 100, device=DEV)
        dist.all_to_all_single(out, _x(torch.float32).reshape(10, 100), group=g)
        return out

    def all_to_all(g: Any) -> Any:
        outs = [torch.zeros(1000, device=DEV, dtype=torch.float16)]
        dist.all_to_all(outs, [_x(torch.float16)], group=g)
        return outs

    for fn in (bcast, bcast_int16, reduce, all_gather, all_gather_into_tensor, reduce_scatter, reduce_scatter_tensor, all_to_all_single, all_to_all):
        _both(job, fn)
    dist.barrier()


def test_non_contiguous_and_list_copies(job: dict[str, Any]) -> None:
    """Tensors that go through a temporary buffer: copied out by wait() on the current stream,
    or, when the answer comes first, before the Work's future completes."""
    base = _x(torch.float32, 64 * 64).reshape(64, 64)
    view = base[:, ::2]
    w = dist.all_reduce(view, op=dist.ReduceOp.SUM, async_op=True)
    w.wait()
    _same(base, _x(torch.float32, 64 * 64).reshape(64, 64))
    # The future first: the temporary is copied out before it completes.
    outs = [torch.zeros(1000, device=DEV)]
    w = dist.all_gather(outs, _x(torch.float32, seed=3), async_op=True)
    value = w.get_future().wait()
    _same(value[0][0], _x(torch.float32, seed=3))
    assert w.is_completed()
    w.wait()  # nothing left to copy; fine to call
    # wait() first, then reading on the current stream.
    outs = [torch.zeros(1000, device=DEV)]
    w = dist.all_gather(outs, _x(torch.float32, seed=4), async_op=True)
    w.wait()
    doubled = outs[0] * 2
    _same(doubled, _x(torch.float32, seed=4) * 2)


def _cycles_per_second() -> float:
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(50_000_000)
    end.record()
    end.synchronize()
    return 50_000_000 / (start.elapsed_time(end) / 1000)


@pytest.mark.parametrize("kind", ["all_gather_into_tensor", "all_reduce"])
def test_ordered_with_the_stream_without_blocking_the_host(job: dict[str, Any], kind: str) -> None:
    """A collective queued behind a long kernel reads what the kernel's stream wrote after it,
    and work queued after wait() reads the collective's result; the host does not wait."""
    n = 1 << 20
    x = torch.zeros(n, device=DEV)
    out = torch.zeros(n, device=DEV)

    def issue() -> Any:
        if kind == "all_reduce":
            return dist.all_reduce(x, async_op=True)
        return dist.all_gather_into_tensor(out, x, async_op=True)

    issue().wait()  # registrations and events made once, outside the measurement
    torch.cuda.synchronize()
    kernel_s = 0.5
    cycles = int(_cycles_per_second() * kernel_s)
    torch.cuda._sleep(cycles)  # the long kernel on the current stream
    x.fill_(7.0)  # then an op writing the input
    t0 = time.perf_counter()
    work = issue()
    work.wait()
    host_s = time.perf_counter() - t0
    pending = not work.is_completed()  # the GPU is still in the kernel
    result = x if kind == "all_reduce" else out
    after = result + 1  # queued behind the collective by wait()
    torch.cuda.synchronize()
    assert host_s < kernel_s / 10, f"issue + wait() took {host_s * 1000:.1f} ms against a {kernel_s * 1000:.0f} ms kernel"
    assert pending, "the collective was reported complete before the kernel it waits for could end"
    assert torch.all(result == 7.0).item(), "the collective did not read what the stream wrote after the kernel"
    assert torch.all(after == 8.0).item(), "work after wait() did not see the collective's result"
    deadline = time.monotonic() + 10
    while not work.is_completed() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert work.is_completed() and work.get_future().wait()[0] is result


def test_events_are_pooled(job: dict[str, Any]) -> None:
    pg = job["pg"]
    x = torch.ones(1024, device=DEV)
    for _ in range(50):
        dist.all_reduce(x)
    before = pg.events_created
    works = [dist.all_reduce(x, async_op=True) for _ in range(200)]
    for w in works:
        w.wait()
    torch.cuda.synchronize()
    for w in works:
        w.get_future().wait()
    for _ in range(200):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    assert pg.events_created - before <= 200  # at most one pair per collective in flight
    assert torch.all(x == 1).item()

    def one() -> None:
        w = dist.all_reduce(x, async_op=True)
        w.wait()
        w.get_future().wait()  # answered: its events are back in the pool
        torch.cuda.synchronize()  # and the stream is past its wait on them

    one()
    grown = pg.events_created
    for _ in range(200):
        one()
    assert pg.events_created == grown  # one at a time: one pair, reused


def test_ddp_on_cuda(job: dict[str, Any]) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)).to(DEV)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)).to(DEV)
    plain.load_state_dict(model.state_dict())
    ddp = DDP(model, device_ids=[0], bucket_cap_mb=0.001)
    opt_a = torch.optim.SGD(ddp.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(plain.parameters(), lr=0.1)
    for step in range(20):
        data = torch.randn(16, 8, device=DEV, generator=torch.Generator(DEV).manual_seed(step))
        for m, opt in ((ddp, opt_a), (plain, opt_b)):
            opt.zero_grad()
            m(data).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_cuda_errors(job: dict[str, Any]) -> None:
    with pytest.raises(NccldError) as e:
        dist.all_reduce(torch.ones(4))  # a CPU tensor on the nccl backend
    assert e.value.code == ErrorCode.WRONG_BACKEND
    with pytest.raises(NccldError) as e:
        dist.all_reduce(torch.ones(4, device=DEV, dtype=torch.int32), op=dist.ReduceOp.BOR)
    assert e.value.code == ErrorCode.BAD_OP and "NCCL has no bitwise" in e.value.message
    x = torch.ones(4, device=DEV)
    dist.all_reduce(x)
    torch.cuda.synchronize()
    assert torch.all(x == 1).item()


def test_segment_handle_matches_torch(job: dict[str, Any]) -> None:
    """The ctypes lookup finds the same allocation and offset torch's IPC sharing reports."""
    t = torch.zeros(1 << 20, device=DEV)[12345:]
    drv = nt._CudaDriver.get()
    base, size, handle = drv.segment(t.data_ptr(), 0)
    assert base <= t.data_ptr() < base + size and len(handle) == 64
    b2, s2, bid = drv.locate(t.data_ptr() + 100, 0)
    assert (b2, s2) == (base, size) and bid != 0  # cuPointerGetAttributes: the same range, and an id
    alloc = nccld.cuda_allocation(t)  # torch's _share_cuda_(): the segment's base and handle
    assert alloc.offset == t.data_ptr() - base
    if alloc.handle != handle:
        print(f"note: torch's IPC handle differs from cuIpcGetMemHandle's: {alloc.handle.hex()} {handle.hex()}")


def test_a_freed_segment_is_not_mistaken_for_a_new_one(job: dict[str, Any]) -> None:
    """Segments are cached by the driver's buffer id: after they are released from the daemon
    and torch frees its cached segments, a new one (often at the same address) is registered
    anew, not named by the old handle."""
    pg = job["pg"]
    n = (64 << 20) // 4  # a large segment of its own
    x = torch.full((n,), 1.0, device=DEV)
    out = torch.zeros(n, device=DEV)
    dist.all_gather_into_tensor(out, x)
    torch.cuda.synchronize()
    old_ptr = x.data_ptr()
    old_bid = nt._CudaDriver.get().locate(old_ptr, 0)[2]
    del x, out
    assert pg.release_cuda_segments() >= 1  # the daemon lets go first: then torch may free them
    torch.cuda.empty_cache()
    x = torch.full((n,), 2.0, device=DEV)
    out = torch.zeros(n, device=DEV)
    new_bid = nt._CudaDriver.get().locate(x.data_ptr(), 0)[2]
    assert new_bid != old_bid
    dist.all_gather_into_tensor(out, x)
    torch.cuda.synchronize()
    assert torch.all(out == 2.0).item()
    print(f"note: new segment at the old address: {x.data_ptr() == old_ptr}; segments known: {len(pg._segments)}")
