#!/usr/bin/env python3
"""torch.distributed all_reduce through "nccld" against "gloo" (host backend, CPU tensors, 2 and
4 processes) and, with --cuda, against "nccl" (CUDA tensors, a world of 1), side by side.

    PYTHONPATH=python python3 python/bench/torch_allreduce.py            # host backend only
    PYTHONPATH=python python3 python/bench/torch_allreduce.py --cuda     # and the GPU

Starts its own daemons (node dist/daemon/main.js; build the TypeScript first) unless --socket
names a running host-backend daemon. Each measurement is one all_reduce (f32 sum) at a time,
the same calls through both backends in the same job; p50 over the iterations of rank 0.
CUDA: "issue+sync" is dist.all_reduce() then torch.cuda.synchronize(); "host" is how long
dist.all_reduce() itself took to return (the host's cost; the GPU may still be working).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON_DIR = REPO / "python"
sys.path.insert(0, str(PYTHON_DIR))

from tests.daemon import Daemon  # noqa: E402 - the tests' own daemon starter, after the path
HOST_SIZES = [8, 64 << 10, 16 << 20]
CUDA_SIZES = [8, 256 << 20]


def human(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n // div} {unit}"
    return f"{n} B"


def iters_for(nbytes: int, scale: float) -> int:
    base = 1000 if nbytes <= 1024 else 300 if nbytes <= (1 << 20) else 30
    return max(5, int(base * scale))


def p50(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


# ---------------------------------------------------------------------------------------------
# Workers


def host_worker(store: str, rank: int, n: int, scale: float) -> dict[str, Any]:
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    import nccld.torch  # noqa: F401, PLC0415

    torch.set_num_threads(1)
    dist.init_process_group("nccld", init_method=f"file://{store}", rank=rank, world_size=n)
    gloo = dist.new_group(backend="gloo")
    out: dict[str, Any] = {}
    for nbytes in HOST_SIZES:
        x = torch.ones(max(nbytes // 4, 2))
        it = iters_for(nbytes, scale)
        for name, group in (("nccld", None), ("gloo", gloo)):
            for _ in range(max(3, it // 10)):
                dist.all_reduce(x, group=group)
            dist.barrier(group=gloo)
            times = []
            for _ in range(it):
                t0 = time.perf_counter()
                dist.all_reduce(x, group=group)
                times.append(time.perf_counter() - t0)
            out[f"{name}/{nbytes}"] = p50(times)
        # The same collective through the Python client alone (no torch, no copies): one staging
        # buffer of the process group, named directly.
        pg = dist.distributed_c10d._get_default_group()
        buf, _u8, reg = pg._staging.take(nbytes)
        for _ in range(max(3, it // 10)):
            pg.nccld_group.allreduce(reg, dtype="f32", op="sum", count=max(nbytes // 4, 2))
        dist.barrier(group=gloo)
        times = []
        for _ in range(it):
            t0 = time.perf_counter()
            pg.nccld_group.allreduce(reg, dtype="f32", op="sum", count=max(nbytes // 4, 2))
            times.append(time.perf_counter() - t0)
        pg._staging.give(buf)
        out[f"client/{nbytes}"] = p50(times)
    dist.destroy_process_group()
    return out


def cuda_worker(store: str, scale: float) -> dict[str, Any]:
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    import nccld.torch  # noqa: F401, PLC0415

    torch.cuda.set_device(0)
    dist.init_process_group("nccld", init_method=f"file://{store}", rank=0, world_size=1)
    nccl = dist.new_group(backend="nccl")
    out: dict[str, Any] = {}
    for nbytes in CUDA_SIZES:
        x = torch.ones(max(nbytes // 4, 2), device="cuda:0")
        it = iters_for(nbytes if nbytes < (1 << 20) else 1024, scale) // 2
        for name, group in (("nccld", None), ("nccl", nccl)):
            for _ in range(20):
                dist.all_reduce(x, group=group)
            torch.cuda.synchronize()
            total, host = [], []
            for _ in range(it):
                t0 = time.perf_counter()
                dist.all_reduce(x, group=group)
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                host.append(t1 - t0)
                total.append(t2 - t0)
            out[f"{name}/{nbytes}"] = {"total": p50(total), "host": p50(host)}
    out["diag"] = cuda_diag(x)
    dist.destroy_process_group()
    return out


def cuda_diag(x: Any) -> dict[str, float]:
    """Where the CUDA path's time goes: the client alone, the driver lookups, the Work."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    import nccld.torch as nt  # noqa: PLC0415

    pg = dist.distributed_c10d._get_default_group()
    group = pg.nccld_group
    slot = pg._cuda_slot(x)
    res: dict[str, float] = {}

    def timeit(name: str, fn: Any, it: int = 300) -> None:
        for _ in range(20):
            fn()
        ts = []
        for _ in range(it):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        res[name] = p50(ts)

    drv = nt._CudaDriver.get()
    timeit("cuPointerGetAttributes", lambda: drv.locate(x.data_ptr(), 0))
    timeit("cuIpcGetMemHandle", lambda: drv.ipc_handle(drv.locate(x.data_ptr(), 0)[0], 0))
    timeit("slot lookup (cached)", lambda: pg._cuda_slot(x))
    torch.cuda.synchronize()
    timeit("client: result, no events", lambda: group.allreduce(slot, dtype="f32", op="sum", count=2))
    ev = pg._events.take()
    stream = torch.cuda.current_stream()

    def evented(wait_result: bool) -> Any:
        ev.wait.record(stream)
        result, launched = group.submit_collective_events("allreduce", slot, dtype="f32", op="sum", count=2,
                                                          wait_event=ev.wait_handle, done_event=ev.done_handle)
        launched.result()
        if wait_result:
            result.result()
        return result

    timeit("client: launched, events", lambda: evented(True) and None)  # launched measured inside
    ts_l, ts_r = [], []
    for _ in range(300):
        ev.wait.record(stream)
        t0 = time.perf_counter()
        result, launched = group.submit_collective_events("allreduce", slot, dtype="f32", op="sum", count=2,
                                                          wait_event=ev.wait_handle, done_event=ev.done_handle)
        launched.result()
        t1 = time.perf_counter()
        result.result()
        t2 = time.perf_counter()
        ts_l.append(t1 - t0)
        ts_r.append(t2 - t0)
    res["client: to launched, events"] = p50(ts_l)
    res["client: to result, events"] = p50(ts_r)
    torch.cuda.synchronize()
    pg._events.give(ev)
    ts_i, ts_w = [], []
    for _ in range(300):
        t0 = time.perf_counter()
        w = pg.allreduce([x])
        t1 = time.perf_counter()
        w.wait()
        t2 = time.perf_counter()
        w.get_future().wait()
        ts_i.append(t1 - t0)
        ts_w.append(t2 - t1)
    res["torch: issue"] = p50(ts_i)
    res["torch: wait() (launched + stream wait)"] = p50(ts_w)
    res["event pairs made"] = pg.events_created
    return res


# ---------------------------------------------------------------------------------------------
# Driver


def run_host(socket: str, n: int, scale: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nccld-bench-") as tmp:
        env = dict(os.environ, NCCLD_SOCKET=socket, PYTHONPATH=str(PYTHON_DIR), OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", "host", os.path.join(tmp, "store"), str(r), str(n), str(scale)],
                             env=env, stdout=subprocess.PIPE, text=True)
            for r in range(n)
        ]
        outs = [p.communicate(timeout=1200)[0] for p in procs]
        for r, (p, o) in enumerate(zip(procs, outs)):
            if p.returncode != 0:
                raise SystemExit(f"host worker {r} of {n} failed ({p.returncode}):\n{o[-2000:]}")
        return json.loads(outs[0].strip().splitlines()[-1])


def run_cuda(socket: str, scale: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nccld-bench-") as tmp:
        env = dict(os.environ, NCCLD_SOCKET=socket, PYTHONPATH=str(PYTHON_DIR))
        p = subprocess.run([sys.executable, __file__, "--worker", "cuda", os.path.join(tmp, "store"), "0", "1", str(scale)],
                           env=env, stdout=subprocess.PIPE, text=True, timeout=1200)
        if p.returncode != 0:
            raise SystemExit(f"cuda worker failed ({p.returncode}):\n{p.stdout[-2000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


def us(s: float) -> str:
    return f"{s * 1e6:,.0f} µs" if s < 0.1 else f"{s * 1e3:,.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help='also CUDA tensors, "nccld" (nccl backend) against "nccl", a world of 1')
    ap.add_argument("--procs", default="2,4", help="host backend: process counts (default 2,4)")
    ap.add_argument("--socket", help="a running host-backend daemon with enough ranks (default: start one)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, store, rank, n, scale = args.worker[0], args.worker[1], int(args.worker[2]), int(args.worker[3]), float(args.worker[4])
        res = host_worker(store, rank, n, scale) if kind == "host" else cuda_worker(store, scale)
        print(json.dumps(res), flush=True)
        return

    procs = [int(p) for p in args.procs.split(",") if p]
    results: dict[str, Any] = {"host": {}, "cuda": None, "cpus": os.cpu_count()}
    daemon = None if args.socket else Daemon(backend="host", ranks=max(procs))
    try:
        for n in procs:
            results["host"][n] = run_host(args.socket or daemon.socket, n, args.scale)  # type: ignore[union-attr]
    finally:
        if daemon:
            daemon.stop()
    if args.cuda:
        gpu = Daemon(backend="nccl", ranks=None)
        try:
            results["cuda"] = run_cuda(gpu.socket, args.scale)
        finally:
            gpu.stop()

    print(f"\ntorch.distributed all_reduce, f32 sum, one at a time, p50 ({os.cpu_count()} CPUs)\n")
    print("| tensors | procs | size | nccld | gloo | nccld / gloo | nccld's Python client alone |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, r in results["host"].items():
        for nbytes in HOST_SIZES:
            a, b = r[f"nccld/{nbytes}"], r[f"gloo/{nbytes}"]
            print(f"| CPU (host backend) | {n} | {human(nbytes)} | {us(a)} | {us(b)} | {a / b:.2f} | {us(r[f'client/{nbytes}'])} |")
    if results["cuda"]:
        r = results["cuda"]
        print("\n| tensors | procs | size | nccld issue+sync | nccl issue+sync | nccld host | nccl host |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for nbytes in CUDA_SIZES:
            a, b = r[f"nccld/{nbytes}"], r[f"nccl/{nbytes}"]
            print(f"| CUDA (nccl backend) | 1 | {human(nbytes)} | {us(a['total'])} | {us(b['total'])} | {us(a['host'])} | {us(b['host'])} |")
        print("\nWhere the CUDA path's time goes (p50, 8 B... 256 MiB tensor, world of 1):")
        for k, v in r["diag"].items():
            print(f"  {k:42s} {us(v) if isinstance(v, float) else v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
