"""A real daemon for tests and benchmarks: `node dist/daemon/main.js` as a subprocess with its own
sockets under a temporary directory. Needs no pytest (python/bench uses it too)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import nccld

REPO = Path(__file__).resolve().parents[2]
DAEMON_JS = Path(os.environ.get("NCCLD_DAEMON_JS", REPO / "dist" / "daemon" / "main.js"))
WORLD = 3


def ensure_built() -> None:
    if DAEMON_JS.exists():
        return
    subprocess.run(["npx", "tsc", "-p", "tsconfig.json"], cwd=REPO, check=True)
    if not DAEMON_JS.exists():
        raise RuntimeError(f"{DAEMON_JS} is missing after building the TypeScript")


class Daemon:
    """One nccld, started with its own sockets under a temporary directory."""

    def __init__(self, *args: str, backend: str = "host", ranks: int | None = WORLD) -> None:
        ensure_built()
        self.dir = tempfile.mkdtemp(prefix="nccld-py-")
        self.socket = os.path.join(self.dir, "a.sock")
        self.debug_socket = os.path.join(self.dir, "d.sock")
        self.log_path = os.path.join(self.dir, "daemon.log")
        cmd = ["node", str(DAEMON_JS), "--backend", backend]
        if ranks is not None:
            cmd += ["--ranks", str(ranks)]
        cmd += ["--socket", self.socket, "--debug-socket", self.debug_socket, "--log-level", "warn", *args]
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NCCLD_")}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self._wait_ready(60.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                self.stop()
                raise RuntimeError(f"nccld exited with {self.proc.returncode}:\n{log}")
            if os.path.exists(self.socket):
                try:
                    with nccld.connect(self.socket, timeout=5):
                        return
                except nccld.NccldError:
                    pass
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"nccld did not start within {timeout} s:\n{log}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def connect(self, **kw: object) -> nccld.Client:
        return nccld.connect(self.socket, **kw)  # type: ignore[arg-type]

    def debug(self, command: str) -> str:
        """One command on the debug socket; its whole answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.debug_socket)
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if out.endswith(b"OK\n") or b"\nERROR" in out or out.startswith(b"ERROR"):
                    break
        return out.decode()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
