"""Measure candidates on remote devices through TVM's RPC tracker (MetaSchedule's ``RPCRunner``).

The driver builds every candidate in-process for the target (TVM's stock builder times out here:
docs/tvm-facts.md) and exports it as a shared library; MetaSchedule's ``RPCRunner`` fans the
measurements out to the tracker's free servers of the key, one worker per server
(``max_workers`` = the servers the tracker lists; the stock runner uses one). On the server each
candidate runs once on the workload's reference inputs, its output is checked before it is timed
(:mod:`torch_rc.tuning.rpc_worker`), and the driver checks the downloaded output again with the
runtime's own comparison before it believes the time: a wrong kernel never wins, wherever it ran.

Faults cost samples, not runs: a measurement that fails for the fleet's sake (a server that
died, a session past ``timeout_s``, a server whose device differs from the target) is retried on
another server up to ``retries`` times and then counted as a failed sample; a wrong result is the
candidate's own failure and is not retried. When the tracker itself is gone,
:class:`TrackerGone` ends the tuning run, which keeps everything tuned so far.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from torch_rc.cache.keys import workload_key
from torch_rc.errors import TuningError
from torch_rc.numerics import tolerances
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning import rpc_worker
from torch_rc.tuning.bounded_build import (
    DEFAULT_BUILD_TIMEOUT_S,
    BuildFailed,
    BuildTimedOut,
    build_library,
)
from torch_rc.tuning.measure import Measurement
from torch_rc.tuning.verify import compare, reference_run

__all__ = [
    "RemoteMeasurer",
    "TrackerGone",
    "check_fleet",
    "expected_device",
    "parse_tracker",
    "tracker_servers",
]


class TrackerGone(TuningError):
    """The RPC tracker cannot be reached: remote measurement cannot go on."""


def parse_tracker(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port).

    Raises:
        ValueError: not HOST:PORT with a port in 1..65535.
    """
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9190), got {address!r}")
    return host.strip("[]"), int(port)


def tracker_servers(host: str, port: int, key: str) -> list[str]:
    """The addresses of the servers registered with the tracker under ``key``.

    Raises:
        TrackerGone: the tracker does not answer.
    """
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
        summary = tvm_api().tvm.rpc.connect_tracker(host, port).summary()
    except (OSError, RuntimeError) as exc:
        raise TrackerGone(f"the RPC tracker at {host}:{port} does not answer: {exc}") from None
    return sorted(
        ":".join(str(part) for part in server["addr"])
        for server in summary.get("server_info", [])
        if server.get("key") == f"server:{key}"
    )


def check_fleet(tracker: str, key: str) -> list[str]:
    """The servers of ``key`` at ``tracker`` (HOST:PORT), checked before any work starts.

    Raises:
        TrackerGone: the tracker does not answer.
        TuningError: no server is registered under ``key``.
    """
    host, port = parse_tracker(tracker)
    servers = tracker_servers(host, port, key)
    if not servers:
        raise TuningError(
            f"no RPC server is registered with the tracker at {tracker} under key {key!r}; "
            f"start one: python -m tvm.exec.rpc_server --tracker {tracker} --key {key}"
        )
    return servers


def tracker_alive(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def expected_device(target: Any) -> dict[str, str]:
    """What a server's device must report for ``target`` (see ``rpc_worker.remote_device``)."""
    kind = str(target.kind.name)
    attrs = target.attrs
    if kind == "cuda":
        return {"kind": "cuda", "arch": str(attrs.get("arch", ""))}
    triple = str(attrs.get("mtriple", ""))
    return {"kind": "llvm", "cpu": str(attrs.get("mcpu", "")), "arch": triple.split("-")[0]}


class RemoteMeasurer:
    """A :class:`~torch_rc.tuning.measure.Measurer` whose timings come from RPC servers.

    Args:
        target: The ``tvm.target.Target`` the servers' devices are.
        tracker: ``HOST:PORT`` of the tracker.
        key: The device key the servers registered with.
        timeout_s: Longest one measurement may take (session + upload + check + timing, and the
            wait for a free server); past it the worker is killed and the sample retried.
        retries: Extra attempts for a measurement that failed for the fleet's sake.
        repeats, min_repeat_ms, seed: As :class:`~torch_rc.tuning.measure.Measurer`.

    Raises:
        TrackerGone: the tracker does not answer.
        TuningError: no server is registered under ``key``, or the first one's device is not
            the target's.
    """

    def __init__(
        self,
        target: Any,
        *,
        tracker: str,
        key: str,
        timeout_s: float = 60.0,
        retries: int = 2,
        repeats: int = 5,
        min_repeat_ms: int = 20,
        seed: int = 0,
    ) -> None:
        try:
            import cloudpickle  # noqa: F401  (MetaSchedule's worker pool pickles with it)
        except ImportError:
            raise TuningError(
                "remote measurement needs cloudpickle: pip install 'torch_rc[rpc]'"
            ) from None
        self.target = target
        self.host, self.port = parse_tracker(tracker)
        self.key = key
        self.timeout_s = timeout_s
        self.retries = retries
        self.repeats = repeats
        self.min_repeat_ms = min_repeat_ms
        self.seed = seed
        self.count = 0
        self.kind = "cuda" if str(target.kind.name) == "cuda" else "cpu"
        # CPU candidates build in a child stopped at the limit (torch_rc.tuning.bounded_build).
        self.build_timeout_s = DEFAULT_BUILD_TIMEOUT_S if self.kind == "cpu" else None
        self.expected = expected_device(target)
        self.servers = check_fleet(tracker, key)
        self._check_first_server()
        self.parallelism = len(self.servers)
        self.stats: dict[str, Any] = {
            "where": "rpc",
            "tracker": tracker,
            "key": key,
            "servers_at_start": len(self.servers),
            "by_server": collections.Counter(),
            "retries": 0,
            "timeouts": 0,
            "refused": 0,
            "fleet_failures": 0,
            "seconds": 0.0,  # in measure_many: builds, uploads, checks, timing, waits
            "measured": 0,
        }
        self._references: dict[str, tuple[str, torch.Tensor]] = {}
        self._workdir = tempfile.mkdtemp(prefix="torch_rc-rpc-")
        self._serial = 0
        # (server, session start, timing end) of each measurement that was timed, wall clock.
        self.intervals: list[tuple[str, float, float]] = []
        self._runner = self._make_runner()

    # --------------------------------------------------------------------------- setup
    def _check_first_server(self) -> None:
        """Ask one server what its device is before anything is built for it (a clear error
        instead of every sample refused)."""
        try:
            session, where = rpc_worker.request_server(
                self.host, self.port, self.key, session_timeout=30
            )
            found = rpc_worker.remote_device(session, self.expected["kind"])
            del session
        except Exception as exc:
            raise TuningError(
                f"could not open a session on a server of key {self.key!r} through the tracker "
                f"at {self.host}:{self.port}: {type(exc).__name__}: {exc}"
            ) from None
        why = rpc_worker.device_differs(self.expected, found)
        if why:
            raise TuningError(
                f"the RPC server {where} (key {self.key!r}) has {why}: its timings would not be "
                "this target's. Tune on servers of the target's device, or for theirs."
            )

    def _make_runner(self) -> Any:
        ms = tvm_api().s_tir.meta_schedule
        from tvm.support.popen_pool import PopenPoolExecutor

        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=self.host,
                tracker_port=self.port,
                tracker_key=self.key,
                session_priority=1,
                session_timeout_sec=int(max(self.timeout_s, 1)),
            ),
            evaluator_config=ms.runner.EvaluatorConfig(
                number=1, repeat=self.repeats, min_repeat_ms=self.min_repeat_ms
            ),
            f_create_session=functools.partial(rpc_worker.create_session, expected=self.expected),
            f_upload_module=rpc_worker.upload_module,
            f_alloc_argument=rpc_worker.alloc_argument,
            f_run_evaluator=rpc_worker.run_evaluator,
            max_workers=len(self.servers),
        )
        # The stock pool has no timeout: a hung server would hold its worker for ever. This one
        # kills a worker whose measurement runs past timeout_s (RPCRunner reports a Timeout).
        runner.pool = PopenPoolExecutor(max_workers=len(self.servers), timeout=self.timeout_s)
        return runner

    def close(self) -> None:
        """Stop the worker processes and remove the built candidates (idempotent)."""
        runner = getattr(self, "_runner", None)
        if runner is not None:
            with contextlib.suppress(Exception):
                runner.pool.shutdown(wait=False)
        if getattr(self, "_workdir", None):
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------------------ reference
    def _reference(self, reference_mod: Any) -> tuple[str, torch.Tensor]:
        """The folder of the workload's ``reference.npz`` (inputs and expected output, computed
        on this host's CPU: the remote may be another device) and the expected output."""
        key = workload_key(reference_mod["main"])
        if key not in self._references:
            arrays, want = reference_run(reference_mod, self.target, self.seed, host_cpu=True)
            folder = os.path.join(self._workdir, key[:24])
            os.makedirs(folder, exist_ok=True)
            rtol, atol = tolerances(want.dtype)
            np.savez(
                os.path.join(folder, rpc_worker.REFERENCE),
                *arrays,
                expected=want.numpy(),
                rtol=np.float64(rtol),
                atol=np.float64(atol),
            )
            self._references[key] = (folder, want)
        return self._references[key]

    # -------------------------------------------------------------------------- measure
    def measure(self, reference_mod: Any, candidate_mod: Any, *, count: bool = True) -> Measurement:
        return self.measure_many(reference_mod, [candidate_mod], count=count)[0]

    def measure_many(
        self, reference_mod: Any, candidate_mods: Sequence[Any], *, count: bool = True
    ) -> list[Measurement]:
        """Measure ``candidate_mods`` (scheduled versions of ``reference_mod``), in parallel
        over the servers; a failed candidate is a failed Measurement, never an exception.

        Raises:
            TrackerGone: the tracker went away (the run should end).
        """
        self.count += len(candidate_mods) * int(count)
        started = time.monotonic()
        folder, want = self._reference(reference_mod)
        ms = tvm_api().s_tir.meta_schedule
        args_info = ms.arg_info.ArgInfo.from_prim_func(reference_mod["main"])
        results: list[Measurement | None] = [None] * len(candidate_mods)
        pending: dict[int, tuple[str, float]] = {}
        for index, candidate in enumerate(candidate_mods):
            start = time.perf_counter()
            self._serial += 1
            artifact = os.path.join(folder, str(self._serial), "candidate.so")
            os.makedirs(os.path.dirname(artifact))
            try:
                build_library(candidate, self.target, artifact, self.build_timeout_s)
            except BuildTimedOut as exc:  # a failed sample, as a build error is
                results[index] = Measurement(None, error=str(exc))
                continue
            except BuildFailed as exc:
                results[index] = Measurement(None, error=f"build failed: {str(exc)[-300:]}")
                continue
            pending[index] = (artifact, time.perf_counter() - start)
        attempts = 0
        while pending:
            inputs = [
                ms.runner.RunnerInput(artifact, self.kind, args_info)
                for artifact, _ in pending.values()
            ]
            outcomes = [future.result() for future in self._runner.run(inputs)]
            retry: dict[int, tuple[str, float]] = {}
            for (index, (artifact, build_s)), outcome in zip(
                pending.items(), outcomes, strict=True
            ):
                error = None if outcome.error_msg is None else str(outcome.error_msg)
                if error is not None and _fleet_fault(error) and attempts < self.retries:
                    for stale in (rpc_worker.OUTPUT, rpc_worker.WHERE):
                        with contextlib.suppress(OSError):
                            os.remove(os.path.join(os.path.dirname(artifact), stale))
                    retry[index] = (artifact, build_s)
                    self.stats["retries"] += 1
                    self._count_fault(error)
                    continue
                if error is not None and _fleet_fault(error):
                    self.stats["fleet_failures"] += 1
                    self._count_fault(error)
                results[index] = self._conclude(artifact, build_s, outcome, error, want)
            attempts += 1
            if retry and not tracker_alive(self.host, self.port):
                self.stats["seconds"] += time.monotonic() - started
                raise TrackerGone(
                    f"the RPC tracker at {self.host}:{self.port} went away; tuning stops and "
                    "keeps what it found"
                )
            pending = retry
        self.stats["seconds"] += time.monotonic() - started
        self.stats["measured"] += len(candidate_mods)
        return [r if r is not None else Measurement(None, error="not measured") for r in results]

    def _count_fault(self, error: str) -> None:
        if "Timeout" in error:
            self.stats["timeouts"] += 1
        if "refused server" in error:
            self.stats["refused"] += 1

    def _conclude(
        self, artifact: str, build_s: float, outcome: Any, error: str | None, want: torch.Tensor
    ) -> Measurement:
        folder = os.path.dirname(artifact)
        info = _read_where(folder)
        where = str(info.get("server", ""))
        if where:
            self.stats["by_server"][where] += 1
        if where and info.get("started") and info.get("ended"):
            self.intervals.append((where, float(info["started"]), float(info["ended"])))
        if error is not None:
            first = [line for line in error.splitlines() if line.strip()][-1:] or [error]
            reason = "wrong result" if "WrongResult" in error or "wrong result" in error else ""
            return Measurement(
                None,
                error=reason or f"remote: {first[0][-300:]}",
                build_s=build_s,
                where=where,
            )
        output = os.path.join(folder, rpc_worker.OUTPUT)
        try:
            got = torch.from_numpy(np.load(output, allow_pickle=False))
        except (OSError, ValueError) as exc:
            return Measurement(None, error=f"no output came back: {exc}", build_s=build_s)
        check = compare(got, want, f"standard normal, seed {self.seed}, on {where or 'remote'}")
        if not check.passed:
            return Measurement(None, check=check, error="wrong result", build_s=build_s)
        return Measurement.timed(tuple(float(r) for r in outcome.run_secs), check, build_s, where)

    def summary(self) -> dict[str, Any]:
        """The remote accounting for the run log (JSON-ready)."""
        stats = dict(self.stats)
        stats["by_server"] = dict(sorted(self.stats["by_server"].items()))
        stats["seconds"] = round(stats["seconds"], 2)
        return stats


def _fleet_fault(error: str) -> bool:
    """Whether a failed measurement may have failed for the fleet's sake (retry it elsewhere).

    Only a wrong result is surely the candidate's. A dropped connection (``RPCCode::kReturn``
    checks), a timeout or a refused server are the fleet's; a kernel that crashes its session
    looks the same from here, so it is retried too and counts as a failure once the retries
    are spent: a retry costs time, never a sample."""
    return "WrongResult" not in error and "wrong result" not in error


def _read_where(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, rpc_worker.WHERE)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
