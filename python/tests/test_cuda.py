"""CUDA torch tensors on the nccl backend: registration by CUDA IPC handle, offsets into the
caching allocator's segments, collectives over every GPU. Skipped where there is no GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the CUDA tests need it (pip install 'nccld[torch]')")
if not torch.cuda.is_available():
    pytest.skip("torch.cuda is not available (no GPU or no CUDA build of torch here): CUDA tests skipped", allow_module_level=True)

import nccld  # noqa: E402
from nccld import ErrorCode, NccldError  # noqa: E402

from .conftest import Daemon, gpu_daemon_or_skip  # noqa: E402


@pytest.fixture(scope="module")
def gpu_daemon() -> Iterator[Daemon]:
    d = gpu_daemon_or_skip()
    yield d
    d.stop()


@pytest.fixture
def gpu(gpu_daemon: Daemon) -> Iterator[nccld.Client]:
    with gpu_daemon.connect(name="pytest-cuda") as c:
        yield c


def local_devices(c: nccld.Client) -> list[int]:
    """This process's CUDA ordinal of each rank's GPU."""
    mine = {str(torch.cuda.get_device_properties(i).uuid).removeprefix("GPU-"): i for i in range(torch.cuda.device_count())}
    return [mine[u.removeprefix("GPU-")] for u in c.hello.device_uuids]  # type: ignore[union-attr]


def test_hello_on_gpus(gpu: nccld.Client) -> None:
    h = gpu.hello
    assert h.backend == "nccl" and h.world_size >= 1
    assert len(h.devices or []) == h.world_size and all(isinstance(d, int) for d in h.devices or [])
    assert all(isinstance(u, str) and u.startswith("GPU-") for u in h.device_uuids or [])
    assert sorted(gpu.world_rank_of(d) for d in local_devices(gpu)) == list(range(h.world_size))


def test_cuda_allocation_of_a_tensor() -> None:
    base = torch.zeros(1 << 20, dtype=torch.float32, device="cuda:0")
    view = base[1000:2000]
    a = nccld.cuda_allocation(base)
    b = nccld.cuda_allocation(view)
    assert len(a.handle) == 64 and a.handle == b.handle
    assert b.offset - a.offset == 1000 * 4
    with pytest.raises(NccldError) as e:
        nccld.cuda_allocation(torch.zeros(4))
    assert e.value.code == ErrorCode.WRONG_BACKEND


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8, torch.uint8, torch.int64])
def test_allreduce_sum_over_every_gpu(gpu: nccld.Client, dtype: torch.dtype) -> None:
    n = gpu.world_size
    count = 100_003
    tensors = [torch.full((count,), r + 1, dtype=dtype, device=f"cuda:{d}") for r, d in enumerate(local_devices(gpu))]
    seq = gpu.allreduce(tensors, dtype, "sum", count)
    assert seq > 0
    want = n * (n + 1) // 2
    for t in tensors:
        assert torch.all(t == want).item()
    gpu.release(*tensors)


def test_offsets_inside_a_segment(gpu: nccld.Client) -> None:
    """Out-of-place broadcast and allgather copy bytes: a wrong offset would show."""
    devs = local_devices(gpu)
    n = gpu.world_size
    big = [torch.arange(10_000, dtype=torch.float32, device=f"cuda:{d}") for d in devs]
    send = [b[1234:1334] for b in big]  # 100 elements, 1234 elements into the allocation
    recv = [torch.zeros(100 * n + 7, dtype=torch.float32, device=f"cuda:{d}")[7:] for d in devs]
    gpu.broadcast(send, recv, dtype="f32", count=100, root=0)
    for r in recv:
        assert torch.equal(r[:100].cpu(), torch.arange(1234, 1334, dtype=torch.float32))
    gpu.allgather(send, recv, dtype=torch.float32, count=100)
    for r in recv:
        assert torch.equal(r.cpu(), torch.arange(1234, 1334, dtype=torch.float32).repeat(n))
    # Tensors of one segment share one registration on this connection.
    r1 = gpu.register(big[0])
    r2 = gpu.register(send[0])
    assert r1 is r2 and r1.nbytes >= 10_000 * 4
    gpu.release(big[0])
    assert r1.released


def test_many_in_flight_on_gpus(gpu: nccld.Client) -> None:
    devs = local_devices(gpu)
    tensors = [torch.ones(1 << 16, device=f"cuda:{d}") for d in devs]
    futs = [gpu.submit_allreduce(tensors, "f32", "max", 1 << 16) for _ in range(64)]
    seqs = [f.result(timeout=60) for f in futs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 64
    assert torch.all(tensors[0] == 1).item()


def test_group_of_one_member_per_gpu(gpu_daemon: Daemon) -> None:
    """One connection per GPU, each a member of the group with its own tensor."""
    with gpu_daemon.connect() as probe:
        world = probe.world_size
    clients = [gpu_daemon.connect(name=f"gpu-member-{i}") for i in range(world)]
    try:
        devs = local_devices(clients[0])
        futs = [c.submit_join("gpu-group", len(clients), r, device=c.world_rank_of(devs[r]), timeout_ms=30_000) for r, c in enumerate(clients)]
        groups = [f.result(timeout=60) for f in futs]
        tensors = [torch.full((4096,), float(r + 1), device=f"cuda:{devs[r]}") for r in range(len(clients))]
        fs = [g.submit_collective("allreduce", t, dtype="f32", op="sum", count=4096) for g, t in zip(groups, tensors)]
        assert len({f.result(timeout=60) for f in fs}) == 1
        n = len(clients)
        for t in tensors:
            assert torch.all(t == n * (n + 1) / 2).item()
        for g in groups:
            g.submit_leave()
    finally:
        for c in clients:
            c.close()


def test_gpu_errors(gpu: nccld.Client) -> None:
    with pytest.raises(NccldError) as e:
        gpu.register_ipc(b"\x00" * 64, gpu.hello.devices[0])  # type: ignore[index]
    assert e.value.code == ErrorCode.NO_SUCH_BUFFER
    t = torch.ones(1 << 20, device=f"cuda:{local_devices(gpu)[0]}")
    alloc = nccld.cuda_allocation(t)
    with pytest.raises(NccldError) as e:
        gpu.register_ipc(alloc.handle, 1000)
    assert e.value.code == ErrorCode.WRONG_DEVICE
    # A memfd on the nccl backend.
    with nccld.HostBuffer(4096) as b, pytest.raises(NccldError) as e:
        gpu.register(b)
    assert e.value.code == ErrorCode.WRONG_BACKEND
    # A CPU tensor is refused here, before anything is sent.
    with pytest.raises(NccldError) as e:
        gpu.allreduce([torch.ones(4)] * gpu.world_size, "f32", "sum", 4)
    assert e.value.code == ErrorCode.BAD_REQUEST
