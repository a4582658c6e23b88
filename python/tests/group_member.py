"""One member of a group, run as its own process by test_groups.py.

argv: socket, group name, size, rank. Prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import nccld


def main() -> None:
    path, name, size, rank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out: dict[str, object] = {}
    count = 1000
    with nccld.connect(path, name=f"member-{rank}") as client, nccld.HostBuffer(1 << 16) as buf:
        with client.join(name, size, rank, timeout_ms=20_000) as group:
            out["devices"] = group.devices
            x = buf.array("f64", count)
            x[:] = np.arange(count) * (rank + 1)
            group.allreduce(buf, dtype="f64", op="sum", count=count)
            out["allreduce_ok"] = bool((x == np.arange(count) * sum(r + 1 for r in range(size))).all())
            recv = nccld.Slot(buf, 8 * count)
            buf.array("i32", 4)[:] = rank
            group.allgather(buf, recv, dtype="i32", count=4)
            out["allgather"] = buf.array("i32", 4 * size, 8 * count).tolist()
            # Many in flight from one member: the daemon pairs the k-th of each.
            futs = [group.submit_collective("barrier") for _ in range(50)]
            out["seqs"] = [f.result(timeout=30) for f in futs]
            group.barrier()
        out["left"] = group.left
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    try:
        main()
    except nccld.NccldError as e:
        print(json.dumps({"error": e.code, "message": e.message}), flush=True)
        sys.exit(1)
