"""torch.distributed through the "nccld" backend (host backend, CPU tensors), against "gloo".

Each test starts a job of 2 or 4 processes (``python -m tests.test_torch <scenario> ...``, a
FileStore for the rendezvous) on a real daemon with 4 host ranks. Every process initialises
"nccld" as its default group and makes a "gloo" group of the same ranks, runs each collective
through both, and prints one JSON line: what differed, and what it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch backend tests need it (pip install 'nccld[torch]')")
dist = pytest.importorskip("torch.distributed", reason="this torch has no torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this torch build has no torch.distributed with gloo to compare with", allow_module_level=True)

from .conftest import Daemon  # noqa: E402

PYTHON_DIR = Path(__file__).resolve().parents[1]
WORLD = 4

# ---------------------------------------------------------------------------------------------
# The pytest side


@pytest.fixture(scope="module")
def daemon4() -> Iterator[Daemon]:
    d = Daemon(ranks=WORLD)
    yield d
    d.stop()


def run_job(daemon: Daemon, scenario: str, n: int, *extra: str, timeout: float = 240) -> list[dict[str, Any]]:
    """Runs ``scenario`` in n processes; each one's JSON line, in rank order."""
    with tempfile.TemporaryDirectory(prefix="nccld-torch-") as tmp:
        store = os.path.join(tmp, "store")
        env = dict(os.environ, NCCLD_SOCKET=daemon.socket, PYTHONPATH=str(PYTHON_DIR), OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.test_torch", scenario, store, str(rank), str(n), *extra],
                cwd=PYTHON_DIR,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in range(n)
        ]
        outs: list[dict[str, Any]] = []
        try:
            for rank, p in enumerate(procs):
                stdout, stderr = p.communicate(timeout=timeout)
                lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
                assert p.returncode == 0 and lines, f"rank {rank} exited {p.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}\n{daemon.log()}"
                outs.append(json.loads(lines[-1]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return outs


@pytest.mark.parametrize("n", [2, 4])
def test_every_collective_matches_gloo(daemon4: Daemon, n: int) -> None:
    outs = run_job(daemon4, "collectives", n)
    for rank, out in enumerate(outs):
        assert out["failures"] == [], f"rank {rank}: {out['failures']}"
        assert out["checked"] > 100
    # One daemon group per process group, named by rank 0 for everyone.
    assert len({o["name"] for o in outs}) == 1
    assert outs[0]["name"].startswith("torch-")
    # The staging buffers grew to fit 16 MiB and stayed bounded (a few buffers, not one per op).
    assert all(o["staging_bytes"] <= 4 * (32 << 20) for o in outs)


@pytest.mark.parametrize("n", [2, 4])
def test_subgroups(daemon4: Daemon, n: int) -> None:
    outs = run_job(daemon4, "subgroups", n)
    for rank, out in enumerate(outs):
        assert out["failures"] == [], f"rank {rank}: {out['failures']}"
        assert out["checked"] >= 4


def test_errors_are_clear(daemon4: Daemon) -> None:
    outs = run_job(daemon4, "errors", 2)
    for out in outs:
        assert out["failures"] == [], out["failures"]
        for op in ("BAND", "BOR", "BXOR"):
            code, message = out["errors"][op]
            assert code == "NCCLD_ERR_BAD_OP" and f"ReduceOp.{op}" in message and "NCCL has no bitwise" in message
        code, message = out["errors"]["unequal_splits"]
        assert code == "NCCLD_ERR_BAD_COUNT" and "unequal" in message
        code, message = out["errors"]["premul_sum"]
        assert code == "NCCLD_ERR_BAD_OP" and "PREMUL_SUM" in message
        assert out["errors"]["int16"][0] == "NCCLD_ERR_BAD_DTYPE"
        assert out["errors"]["cuda_on_host"][0] in ("NCCLD_ERR_WRONG_BACKEND", "skipped")


def test_group_larger_than_the_daemon_world(daemon4: Daemon) -> None:
    """A process group of more ranks than the host backend has is refused with a clear error."""
    outs = run_job(daemon4, "too_big", 5)
    for out in outs:
        if out["rank"] >= WORLD:
            assert out["error"][0] == "NCCLD_ERR_WRONG_DEVICE" and "--ranks 5" in out["error"][1]


@pytest.mark.parametrize("n", [2, 4])
def test_ddp_matches_gloo(daemon4: Daemon, n: int) -> None:
    """A small model, 300 SGD steps with DistributedDataParallel over "nccld" and over "gloo"
    from the same seed and data.

    DDP divides each bucket by the world size and then sums it over the ranks in float32. For 2
    ranks the sum is a + b whoever adds it (IEEE addition is commutative), so both runs must
    end bit for bit equal. For 4 ranks nccld's host backend adds in rank order and gloo's ring
    in its own order, and float32 addition is not associative: each gradient element may
    differ by up to about 3 roundings, 3 x 2^-24 ~ 1.8e-7 of the gradient's magnitude, per
    step. SGD (lr 0.05, momentum 0.9, so a gradient counts about lr / (1 - 0.9) = 0.5 times in
    the end) over 300 steps, if every step's error added up the same way and nothing damped it:
    300 x 0.5 x 1.8e-7 ~ 2.7e-5 of the gradients' scale, which is below the parameters' scale
    here; the errors are of random sign and the training contracts, so they are far smaller in
    practice (measured: about 5e-7 absolute, with parameters up to about 1). The bound
    asserted: every parameter within 1e-5 x the largest parameter's magnitude.
    """
    outs = run_job(daemon4, "ddp", n, "300")
    for out in outs:
        assert out["failures"] == [], out["failures"]
        assert out["in_sync"], "DDP left the ranks' parameters different"
        if n == 2:
            assert out["max_abs_diff"] == 0.0, out
        else:
            assert out["max_abs_diff"] <= 1e-5 * out["max_abs_param"], out
        assert out["loss_end"] < out["loss_start"] / 4  # it did train


# ---------------------------------------------------------------------------------------------
# The job's side: one process of the job (python -m tests.test_torch <scenario> store rank n)


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checked = 0

    def equal(self, what: str, got: Any, want: Any) -> None:
        self.checked += 1
        if isinstance(got, (list, tuple)):
            if len(got) != len(want):
                self.failures.append(f"{what}: {len(got)} tensors, want {len(want)}")
                return
            for i, (g, w) in enumerate(zip(got, want)):
                self.equal(f"{what}[{i}]", g, w)
            self.checked -= 1
            return
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            self.failures.append(f"{what}: got {got.flatten()[:8].tolist()} ({got.dtype}, {tuple(got.shape)}), want {want.flatten()[:8].tolist()} ({want.dtype}, {tuple(want.shape)})")

    def run(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.failures.append(f"{what}: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")


def _init(store: str, rank: int, n: int) -> None:
    import nccld.torch  # noqa: F401, PLC0415 - registers the backend

    dist.init_process_group("nccld", init_method=f"file://{store}", rank=rank, world_size=n)


def _inputs(dtype: Any, rank: int, count: int = 37, positive: bool = False) -> Any:
    """Small integer-valued elements: every sum, product, min, max and average over 4 ranks is
    exact in every dtype, whatever the order of the operations."""
    x = (torch.arange(count, dtype=torch.int64) * 7 + rank * 3) % 5 + 1  # 1..5
    if not positive and dtype not in (torch.uint8, torch.bool) and not str(dtype).startswith("torch.uint"):
        x = x - 2 * ((torch.arange(count) + rank) % 2)  # some negatives
    if dtype == torch.bool:
        return (x + rank) % 3 == 0
    if dtype.is_complex:
        return torch.complex(x.float(), (x - 1).float()).to(dtype)
    return x.to(dtype)


DTYPES = ["float32", "float64", "float16", "bfloat16", "int32", "int64", "int8", "uint8"]
OPS = ["SUM", "PRODUCT", "MIN", "MAX", "AVG"]


def _avg_reference(summed: Any, n: int) -> Any:
    if summed.dtype.is_floating_point or summed.dtype.is_complex:
        return summed / n
    return torch.div(summed, n, rounding_mode="trunc")


def scenario_collectives(rank: int, n: int) -> dict[str, Any]:
    import nccld.torch as nt  # noqa: PLC0415

    c = Checker()
    gloo = dist.new_group(backend="gloo")
    pg = dist.distributed_c10d._get_default_group()
    assert isinstance(pg, nt.NccldProcessGroup), type(pg)
    assert dist.get_backend() == "nccld"

    def both(what: str, fn: Callable[[Any], Any]) -> None:
        def go() -> None:
            c.equal(what, fn(None), fn(gloo))

        c.run(what, go)

    # all_reduce: every op x dtype. AVG: gloo's SUM divided by n (gloo has no AVG for every dtype).
    for dname in DTYPES:
        dt = getattr(torch, dname)
        for opname in OPS:
            op = getattr(dist.ReduceOp, opname)

            def ar(g: Any, dt: Any = dt, op: Any = op, opname: str = opname) -> Any:
                x = _inputs(dt, rank, positive=opname == "PRODUCT")
                if g is gloo and opname == "AVG":
                    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=g)
                    return _avg_reference(x, n)
                dist.all_reduce(x, op=op, group=g)
                return x

            both(f"all_reduce {dname} {opname}", ar)

    # bool and complex, against references computed from the gathered inputs.
    def bool_ref(opname: str) -> Any:
        xs = torch.stack([_inputs(torch.bool, r) for r in range(n)])
        return xs.any(0) if opname in ("SUM", "MAX") else xs.all(0)

    for opname in ("SUM", "PRODUCT", "MIN", "MAX"):
        def ab(opname: str = opname) -> None:
            x = _inputs(torch.bool, rank)
            dist.all_reduce(x, op=getattr(dist.ReduceOp, opname))
            c.equal(f"all_reduce bool {opname}", x, bool_ref(opname))

        c.run(f"all_reduce bool {opname}", ab)

    def complex_sum() -> None:
        x = _inputs(torch.complex64, rank)
        dist.all_reduce(x)
        c.equal("all_reduce complex64 SUM", x, sum(_inputs(torch.complex64, r) for r in range(n)))

    c.run("complex", complex_sum)

    # Shapes: non-contiguous, 0-d, empty, 2-D.
    def noncontig() -> None:
        # gloo reduces a strided view's whole storage; the reference is computed here.
        base = _inputs(torch.float32, rank, 64).reshape(8, 8)
        dist.all_reduce(base[:, ::2])  # non-contiguous
        want = _inputs(torch.float32, rank, 64).reshape(8, 8)
        want[:, ::2] = sum(_inputs(torch.float32, r, 64).reshape(8, 8)[:, ::2] for r in range(n))
        c.equal("all_reduce non-contiguous (and the columns around it untouched)", base, want)

    c.run("non-contiguous", noncontig)
    both("all_reduce 0-d", lambda g: (lambda x: (dist.all_reduce(x, group=g), x)[1])(torch.tensor(float(rank + 1))))
    both("all_reduce empty", lambda g: (lambda x: (dist.all_reduce(x, group=g), x)[1])(torch.empty(0)))
    both("all_reduce 2-D int64 MAX", lambda g: (lambda x: (dist.all_reduce(x, op=dist.ReduceOp.MAX, group=g), x)[1])(_inputs(torch.int64, rank, 60).reshape(6, 10)))

    # broadcast from every root; dtypes the daemon has and some it does not (moved as bytes).
    for root in range(n):
        for dname in ("float32", "int64", "bool", "complex64"):
            dt = getattr(torch, dname)
            both(f"broadcast {dname} root {root}", lambda g, dt=dt, root=root: (lambda x: (dist.broadcast(x, root, group=g), x)[1])(_inputs(dt, rank)))

        def bcast_int16(root: int = root) -> None:  # gloo has no int16: against the root's input
            x = _inputs(torch.int16, rank)
            dist.broadcast(x, root)
            c.equal(f"broadcast int16 root {root}", x, _inputs(torch.int16, root))

        c.run("broadcast int16", bcast_int16)

    # reduce: only the root's tensor is defined afterwards (gloo writes the others too).
    for root in {0, n - 1}:
        for opname in ("SUM", "MAX"):
            def red(g: Any, root: int = root, opname: str = opname) -> Any:
                x = _inputs(torch.float32, rank)
                dist.reduce(x, root, op=getattr(dist.ReduceOp, opname), group=g)
                return x if rank == root else torch.zeros(())

            both(f"reduce {opname} root {root}", red)

    def reduce_leaves_others(g: Any = None) -> None:
        x = _inputs(torch.float32, rank)
        dist.reduce(x, 0)
        if rank != 0:
            c.equal("reduce leaves non-root tensors untouched", x, _inputs(torch.float32, rank))

    c.run("reduce non-root", reduce_leaves_others)

    # all_gather (list) and all_gather_into_tensor.
    def ag_int16() -> None:  # gloo has no int16: against the inputs
        outs = [torch.zeros(37, dtype=torch.int16) for _ in range(n)]
        dist.all_gather(outs, _inputs(torch.int16, rank))
        c.equal("all_gather int16", outs, [_inputs(torch.int16, r) for r in range(n)])
        out = torch.zeros(n * 37, dtype=torch.int16)
        dist.all_gather_into_tensor(out, _inputs(torch.int16, rank))
        c.equal("all_gather_into_tensor int16", out, torch.cat([_inputs(torch.int16, r) for r in range(n)]))

    c.run("all_gather int16", ag_int16)
    for dname in ("float32", "bfloat16", "uint8"):
        dt = getattr(torch, dname)

        def ag(g: Any, dt: Any = dt) -> Any:
            outs = [torch.full((37,), 99).to(dt) for _ in range(n)]
            dist.all_gather(outs, _inputs(dt, rank), group=g)
            return outs

        both(f"all_gather {dname}", ag)

        def agt(g: Any, dt: Any = dt) -> Any:
            out = torch.zeros(n * 37, dtype=dt)
            dist.all_gather_into_tensor(out, _inputs(dt, rank), group=g)
            return out

        both(f"all_gather_into_tensor {dname}", agt)

    def agt_2d(g: Any) -> Any:
        out = torch.zeros(n * 3, 5)
        dist.all_gather_into_tensor(out, _inputs(torch.float32, rank, 15).reshape(3, 5), group=g)
        return out

    both("all_gather_into_tensor stacked", agt_2d)

    # reduce_scatter (list) and reduce_scatter_tensor.
    for opname in ("SUM", "MAX", "MIN", "PRODUCT"):
        def rs(g: Any, opname: str = opname) -> Any:
            out = torch.zeros(11)
            ins = [_inputs(torch.float32, rank * 10 + i, 11, positive=True) for i in range(n)]
            dist.reduce_scatter(out, ins, op=getattr(dist.ReduceOp, opname), group=g)
            return out

        both(f"reduce_scatter {opname}", rs)

        def rst(g: Any, opname: str = opname) -> Any:
            out = torch.zeros(13, dtype=torch.int32)
            dist.reduce_scatter_tensor(out, _inputs(torch.int32, rank, 13 * n, positive=True), op=getattr(dist.ReduceOp, opname), group=g)
            return out

        both(f"reduce_scatter_tensor {opname}", rst)

    def rst_avg() -> None:
        out = torch.zeros(13)
        dist.reduce_scatter_tensor(out, _inputs(torch.float32, rank, 13 * n), op=dist.ReduceOp.AVG)
        want = torch.zeros(13)
        dist.reduce_scatter_tensor(want, _inputs(torch.float32, rank, 13 * n), group=gloo)
        c.equal("reduce_scatter_tensor AVG", out, want / n)

    c.run("reduce_scatter_tensor AVG", rst_avg)

    # all_to_all_single (equal splits, implicit and explicit) and all_to_all (list).
    def a2a(g: Any, splits: bool = False) -> Any:
        x = _inputs(torch.float64, rank, 6 * n).reshape(2 * n, 3)
        out = torch.zeros(2 * n, 3, dtype=torch.float64)
        sz = [2] * n if splits else None
        dist.all_to_all_single(out, x, sz, sz, group=g)
        return out

    both("all_to_all_single", a2a)
    both("all_to_all_single explicit equal splits", lambda g: a2a(g, True))

    def a2a_list() -> None:  # gloo has no list all_to_all in some versions: against the inputs
        ins = [_inputs(torch.int64, rank * 100 + j, 5) for j in range(n)]
        outs = [torch.zeros(5, dtype=torch.int64) for _ in range(n)]
        dist.all_to_all(outs, ins)
        c.equal("all_to_all", outs, [_inputs(torch.int64, j * 100 + rank, 5) for j in range(n)])

    c.run("all_to_all", a2a_list)

    # gather and scatter (run as an allgather and a broadcast).
    def gather(g: Any) -> Any:
        outs = [torch.zeros(9) for _ in range(n)] if rank == n - 1 else None
        dist.gather(_inputs(torch.float32, rank, 9), outs, dst=n - 1, group=g)
        return outs if outs is not None else [torch.zeros(())]

    both("gather", gather)

    def scatter(g: Any) -> Any:
        out = torch.zeros(9)
        ins = [_inputs(torch.float32, 50 + j, 9) for j in range(n)] if rank == 0 else None
        dist.scatter(out, ins, src=0, group=g)
        return out

    both("scatter", scatter)

    c.run("barrier", lambda: dist.barrier())

    # Large: 16 MiB grows the staging buffer.
    def big(g: Any) -> Any:
        x = _inputs(torch.float32, rank, 4 << 20)
        dist.all_reduce(x, group=g)
        return x

    both("all_reduce 16 MiB", big)

    # Async: many in flight, futures, Work state.
    def asynchronous() -> None:
        xs = [_inputs(torch.float32, rank + i, 1000) for i in range(16)]
        works = [dist.all_reduce(x, async_op=True) for x in xs]
        futs = [w.get_future().then(lambda f: f.value()[0] * 2) for w in works[:4]]
        for w in works:
            w.wait()
            if not w.is_completed():
                c.failures.append("is_completed() false after wait()")
        for i, x in enumerate(xs):
            c.equal(f"async all_reduce {i}", x, sum(_inputs(torch.float32, r + i, 1000) for r in range(n)))
        for i, f in enumerate(futs):
            c.equal(f"future.then {i}", f.wait(), xs[i] * 2)
        w = dist.all_reduce(torch.ones(3), async_op=True)
        v = w.get_future().wait()
        c.equal("future value", v[0], torch.full((3,), float(n)))

    c.run("async", asynchronous)

    names: list[Any] = [None] * n
    dist.all_gather_object(names, pg.group_name_in_daemon, group=gloo)
    if len(set(names)) != 1:
        c.failures.append(f"ranks joined different daemon groups: {names}")
    out = {"failures": c.failures, "checked": c.checked, "name": pg.group_name_in_daemon, "staging_bytes": pg.staging_bytes}
    dist.destroy_process_group()
    return out


def scenario_subgroups(rank: int, n: int) -> dict[str, Any]:
    import nccld.torch as nt  # noqa: PLC0415

    c = Checker()
    # Every rank calls new_group for every group, members or not, in the same order.
    pairs = [[0, 1], [n - 2, n - 1]] if n > 2 else [[0, 1], [1]]
    sub = [dist.new_group(ranks) for ranks in pairs]
    sub_gloo = [dist.new_group(ranks, backend="gloo") for ranks in pairs]
    odd = dist.new_group([r for r in range(n) if r % 2 == 1])
    for ranks, g, gg in zip(pairs, sub, sub_gloo):
        if rank not in ranks:
            continue
        if not isinstance(g, nt.NccldProcessGroup) or dist.get_backend(g) != "nccld":
            c.failures.append(f"new_group({ranks}) is {type(g).__name__} / {dist.get_backend(g)}")
            continue
        if g.size() != len(ranks) or g.rank() != ranks.index(rank):
            c.failures.append(f"new_group({ranks}): rank {g.rank()} of {g.size()}")
        for op in ("SUM", "MAX"):
            a = _inputs(torch.float32, rank)
            b = a.clone()
            dist.all_reduce(a, op=getattr(dist.ReduceOp, op), group=g)
            dist.all_reduce(b, op=getattr(dist.ReduceOp, op), group=gg)
            c.equal(f"subgroup {ranks} all_reduce {op}", a, b)
        # broadcast's src is a global rank: the group's last member.
        a = _inputs(torch.int64, rank)
        b = a.clone()
        dist.broadcast(a, ranks[-1], group=g)
        dist.broadcast(b, ranks[-1], group=gg)
        c.equal(f"subgroup {ranks} broadcast", a, b)
        out = torch.zeros(len(ranks) * 7)
        dist.all_gather_into_tensor(out, _inputs(torch.float32, rank, 7), group=g)
        c.equal(f"subgroup {ranks} all_gather_into_tensor", out, torch.cat([_inputs(torch.float32, r, 7) for r in ranks]))
    # The default group still works, interleaved with the subgroups.
    x = torch.ones(5)
    dist.all_reduce(x)
    c.equal("default group after subgroups", x, torch.full((5,), float(n)))
    if rank % 2 == 1:
        y = torch.ones(3)
        dist.all_reduce(y, group=odd)
        c.equal("odd ranks", y, torch.full((3,), float(len(range(1, n, 2)))))
    dist.barrier()
    dist.destroy_process_group()
    return {"failures": c.failures, "checked": c.checked}


def scenario_errors(rank: int, n: int) -> dict[str, Any]:
    from nccld import NccldError  # noqa: PLC0415

    c = Checker()
    errors: dict[str, Any] = {}

    def expect(name: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except NccldError as e:
            errors[name] = (e.code, e.message)
            return
        except Exception as e:  # noqa: BLE001
            errors[name] = (type(e).__name__, str(e))
            return
        c.failures.append(f"{name}: no error")

    for op in ("BAND", "BOR", "BXOR"):
        expect(op, lambda op=op: dist.all_reduce(torch.ones(4, dtype=torch.int32), op=getattr(dist.ReduceOp, op)))
    expect("unequal_splits", lambda: dist.all_to_all_single(torch.zeros(3 * n), torch.zeros(3 * n), [2] + [1] * (n - 2) + [3 * n - n - 1], [3] * n))
    expect("premul_sum", lambda: dist.all_reduce(torch.ones(4), op=dist._make_nccl_premul_sum(2.0)))
    expect("int16", lambda: dist.all_reduce(torch.ones(4, dtype=torch.int16)))
    if torch.cuda.is_available():
        expect("cuda_on_host", lambda: dist.all_reduce(torch.ones(4, device="cuda")))
    else:
        errors["cuda_on_host"] = ("skipped", "")
    # Refused before anything was sent: the group is still in step.
    x = torch.ones(4)
    dist.all_reduce(x)
    c.equal("after the errors", x, torch.full((4,), float(n)))
    # PREMUL_SUM with a factor of 1 is a sum, where torch lets the factor be read (2.12+ has
    # ReduceOp.factor); where it does not, it is refused like any other factor.
    import nccld.torch as nt  # noqa: PLC0415

    op1 = dist._make_nccl_premul_sum(1.0)
    x = torch.ones(4)
    if nt._premul_factor(op1) == 1:
        dist.all_reduce(x, op=op1)
        c.equal("premul_sum 1.0", x, torch.full((4,), float(n)))
    else:
        expect("premul_sum_unreadable", lambda: dist.all_reduce(x, op=op1))
    dist.destroy_process_group()
    return {"failures": c.failures, "errors": errors}


def scenario_too_big(store: str, rank: int, n: int) -> dict[str, Any]:
    from nccld import NccldError  # noqa: PLC0415

    try:
        _init(store, rank, n)
    except NccldError as e:
        return {"rank": rank, "error": [e.code, e.message]}
    except Exception as e:  # noqa: BLE001 - the others fail as the store or the join gives up
        return {"rank": rank, "error": [type(e).__name__, str(e)[:500]]}
    return {"rank": rank, "error": None}


def scenario_ddp(rank: int, n: int, steps: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

    c = Checker()
    gloo = dist.new_group(backend="gloo")
    nccld_pg = dist.distributed_c10d._get_default_group()

    def train(pg: Any) -> tuple[Any, float, float]:
        torch.manual_seed(1234)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
        ddp = DDP(model, process_group=pg, bucket_cap_mb=0.004)  # several buckets in flight
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(100 + rank)
        teacher = torch.Generator().manual_seed(7)
        w_true = torch.randn(16, 4, generator=teacher)
        first = last = 0.0
        for step in range(steps):
            x = torch.randn(32, 16, generator=gen)
            y = torch.tanh(x @ w_true)
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 0:
                first = loss.item()
            last = loss.item()
        return torch.cat([p.detach().flatten() for p in model.parameters()]), first, last

    p_nccld, first, last = train(nccld_pg)
    p_gloo, _, _ = train(gloo)
    diff = (p_nccld - p_gloo).abs()
    everyone = [torch.zeros_like(p_nccld) for _ in range(n)]
    dist.all_gather(everyone, p_nccld, group=gloo)
    in_sync = all(torch.equal(everyone[0], e) for e in everyone)
    dist.destroy_process_group()
    return {
        "failures": c.failures,
        "max_abs_diff": float(diff.max()),
        "max_abs_param": float(p_gloo.abs().max()),
        "differing": int((diff > 0).sum()),
        "params": p_gloo.numel(),
        "in_sync": in_sync,
        "loss_start": first,
        "loss_end": last,
    }


def main(argv: list[str]) -> None:
    scenario, store, rank, n = argv[0], argv[1], int(argv[2]), int(argv[3])
    torch.set_num_threads(1)
    if scenario == "too_big":
        out = scenario_too_big(store, rank, n)
    else:
        _init(store, rank, n)
        if scenario == "collectives":
            out = scenario_collectives(rank, n)
        elif scenario == "subgroups":
            out = scenario_subgroups(rank, n)
        elif scenario == "errors":
            out = scenario_errors(rank, n)
        elif scenario == "ddp":
            out = scenario_ddp(rank, n, int(argv[4]))
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
