"""A TVM RPC tracker and servers on this machine's loopback: try fleet tuning without a fleet.

The tests and ``benchmarks/rpc_fleet.py`` use it; on a real fleet start the same commands on the
machines (README "Tuning on a fleet")::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker TRACKER_HOST:9190 --key KEY

Every process listens on 127.0.0.1 only and is stopped by :meth:`LocalFleet.close` (also on
garbage collection and at interpreter exit): nothing outlives the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.remote import tracker_servers

__all__ = ["LocalFleet", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalFleet:
    """A tracker and ``servers`` RPC servers of ``key`` on 127.0.0.1.

    Args:
        servers: How many servers to start.
        key: The device key they register with.
        log_dir: Where their logs go (default: a temporary folder).

    Raises:
        RuntimeError: the tracker or a server did not come up within 60 s (its log is quoted).
    """

    def __init__(self, servers: int = 2, key: str = "local", log_dir: str | None = None) -> None:
        import tempfile

        self.key = key
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="torch_rc-fleet-"))
        self.port = free_port()
        self.tracker = f"127.0.0.1:{self.port}"
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self._tracker = self._spawn(
            "tracker",
            ["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--port-end", str(self.port + 1), "--silent"],
        )
        atexit.register(self.close)
        self.add_servers(servers)  # they wait for the tracker themselves (TVM retries 60 s)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (the process owns it)
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes its sessions along
        )

    def add_servers(self, count: int) -> list[str]:
        """Start ``count`` more servers at once; return their addresses (``127.0.0.1:PORT``)
        once the tracker lists them all."""
        want = len(self.servers) + count
        added = []
        for _ in range(count):
            port = free_port()
            address = f"127.0.0.1:{port}"
            self.servers[address] = self._spawn(
                f"server-{port}",
                ["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port)]
                + ["--port-end", str(port + 1), "--tracker", self.tracker, "--key", self.key],
            )
            added.append(address)
        self._wait(lambda: len(self.registered()) >= want, f"{count} server(s)", self._tracker)
        return added

    def registered(self) -> list[str]:
        """Addresses of the servers the tracker lists under the key."""
        try:
            return tracker_servers("127.0.0.1", self.port, self.key)
        except Exception:
            return []

    def free(self) -> int:
        """How many servers of the key the tracker can hand out now."""
        summary = tvm_api().tvm.rpc.connect_tracker("127.0.0.1", self.port).summary()
        return int(summary["queue_info"].get(self.key, {}).get("free", 0))

    def wait_free(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` servers are free (a server re-registers after each session)."""
        deadline = time.monotonic() + timeout_s
        while self.free() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} servers free after {timeout_s:.0f} s")
            time.sleep(0.1)

    def kill_server(self, address: str) -> None:
        """SIGKILL a server and its running sessions (a machine that died)."""
        proc = self.servers.pop(address)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def hang_server(self, address: str) -> None:
        """SIGSTOP a server and its sessions (a machine that stopped answering)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.servers[address].pid, signal.SIGSTOP)

    def kill_tracker(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._tracker.pid, signal.SIGKILL)
        self._tracker.wait(timeout=30)

    def close(self) -> None:
        for proc in [*self.servers.values(), self._tracker]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
        self.servers.clear()

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _wait(self, ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ready():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        self.close()
        logs = "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )
        raise RuntimeError(f"{what} did not come up within 60 s (logs in {self.log_dir}):\n{logs}")
