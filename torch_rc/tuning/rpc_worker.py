"""What MetaSchedule's ``RPCRunner`` runs, in its worker processes, for one remote measurement.

``torch_rc.tuning.remote`` hands these functions to ``RPCRunner`` (its ``f_create_session``,
``f_upload_module``, ``f_alloc_argument`` and ``f_run_evaluator`` hooks); the runner calls them,
in this order, in a worker process of its pool for each candidate:

1. :func:`create_session` asks the tracker for a free server of the key (TVM's tracker protocol,
   as ``TrackerSession.request`` speaks it, so the server's address is known) and refuses a server
   whose device is not the one the candidates were built for.
2. :func:`upload_module` uploads the candidate's shared library and loads it there.
3. :func:`alloc_argument` uploads the workload's inputs: the driver wrote them, with the expected
   output, to ``reference.npz`` beside the candidate's folder (read without pickle).
4. :func:`run_evaluator` runs the kernel once, downloads its output and checks it against the
   expected one **before** timing it (a wrong kernel is never timed), writes the output and the
   server's identity beside the artifact for the driver, which re-checks the output with the
   runtime's own comparison before it trusts the time; then times it with ``time_evaluator``.

The worker processes call these one after another for one candidate at a time, so the candidate
being measured is kept in a module-level variable between the calls. This module needs only TVM
and NumPy.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any

import numpy as np

__all__ = [
    "DeviceMismatch",
    "WrongResult",
    "alloc_argument",
    "create_session",
    "remote_device",
    "request_server",
    "run_evaluator",
    "upload_module",
]

# The candidate this worker process is measuring (set by create_session/upload_module).
_CURRENT: dict[str, Any] = {}

REFERENCE = "reference.npz"  # inputs arr_0.., expected output, rtol, atol (driver-written)
OUTPUT = "output.npy"  # the remote output (worker-written, read by the driver)
WHERE = "where.json"  # which server measured it and what it reported


class DeviceMismatch(RuntimeError):
    """A server's device is not the target's: its measurements are refused."""


class WrongResult(RuntimeError):
    """The remote output differs from the reference: the candidate is not timed."""


def request_server(
    host: str, port: int, key: str, *, priority: int = 1, session_timeout: float = 0.0
) -> tuple[Any, str]:
    """A session on a free server of ``key`` from the tracker at ``host:port``, and the server's
    address. The tracker answers when a server is free (the caller's timeout bounds the wait)."""
    from tvm import rpc
    from tvm.rpc import base

    sock = socket.create_connection((host, port), timeout=10)
    try:
        sock.settimeout(None)  # the tracker answers a request when a server is free
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise RuntimeError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", priority])
        value = base.recvjson(sock)
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"the tracker refused the request for {key!r}: {value!r}")
    url, server_port, matchkey = value[1]
    session = rpc.connect(url, server_port, matchkey, session_timeout)
    return session, f"{url}:{server_port}"


def remote_device(session: Any, kind: str) -> dict[str, str]:
    """What the server says its device is: for ``llvm`` its CPU and triple (LLVM's names, from a
    server with the full TVM library), for ``cuda`` GPU 0's name and compute capability. Empty
    values where the server cannot say (a runtime-only server)."""
    if kind == "cuda":
        device = session.cuda(0)
        if not device.exist:
            return {"kind": "cuda", "arch": "none"}
        return {
            "kind": "cuda",
            "arch": "sm_" + str(device.compute_version).replace(".", ""),
            "name": str(device.device_name),
        }
    found = {"kind": "llvm", "cpu": "", "arch": ""}
    try:
        found["cpu"] = str(session.get_function("target.llvm_get_system_cpu")())
        found["arch"] = str(session.get_function("target.llvm_get_system_triple")()).split("-")[0]
    except Exception:  # a runtime-only server has no LLVM functions: it cannot say
        pass
    return found


def device_differs(expected: dict[str, str], found: dict[str, str]) -> str:
    """Why ``found`` (:func:`remote_device`) is not the ``expected`` device, or "" if it is (or
    cannot be told apart: a field either side leaves empty is not compared)."""
    for field in ("kind", "arch", "cpu"):
        want, got = expected.get(field, ""), found.get(field, "")
        if want and got and want != got:
            return f"{field} {got!r} (the target wants {want!r})"
    return ""


def create_session(rpc_config: Any, expected: dict[str, str] | None = None) -> Any:
    """``RPCRunner``'s ``f_create_session``: a session on a free server whose device matches
    ``expected`` (bound by :mod:`torch_rc.tuning.remote` with ``functools.partial``)."""
    _CURRENT.clear()
    _CURRENT["started"] = time.time()
    session, where = request_server(
        rpc_config.tracker_host,
        int(rpc_config.tracker_port),
        rpc_config.tracker_key,
        priority=rpc_config.session_priority,
        session_timeout=rpc_config.session_timeout_sec,
    )
    _CURRENT["server"] = where
    expected = expected or {}
    found = remote_device(session, expected.get("kind", "llvm"))
    _CURRENT["device"] = found
    why = device_differs(expected, found)
    if why:
        raise DeviceMismatch(f"refused server {where}: its device has {why}")
    return session


def upload_module(session: Any, local_path: str, remote_path: str) -> Any:
    """``RPCRunner``'s ``f_upload_module``: upload the candidate's library and load it there."""
    _CURRENT["artifact"] = local_path
    session.upload(local_path, remote_path)
    return session.load_module(remote_path)


def _reference(artifact: str) -> dict[str, np.ndarray]:
    path = os.path.join(os.path.dirname(os.path.dirname(artifact)), REFERENCE)
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def alloc_argument(session: Any, device: Any, args_info: Any, alloc_repeat: int) -> list[Any]:
    """``RPCRunner``'s ``f_alloc_argument``: the workload's inputs (and output buffer) on the
    remote device, the same arrays the reference ran on."""
    import tvm

    reference = _reference(_CURRENT["artifact"])
    count = sum(1 for name in reference if name.startswith("arr_"))
    if count != len(args_info):
        raise RuntimeError(f"{REFERENCE} has {count} arrays, the kernel takes {len(args_info)}")
    return [[tvm.runtime.tensor(reference[f"arr_{i}"], device) for i in range(count)]]


def run_evaluator(
    session: Any, rt_mod: Any, device: Any, evaluator_config: Any, repeated_args: list[Any]
) -> list[float]:
    """``RPCRunner``'s ``f_run_evaluator``: run once, check the output, then time.

    Raises:
        WrongResult: the output differs from the reference (it is not timed).
    """
    artifact = _CURRENT["artifact"]
    folder = os.path.dirname(artifact)
    reference = _reference(artifact)
    args = repeated_args[0]
    rt_mod["main"](*args)
    got = args[-1].numpy()
    np.save(os.path.join(folder, OUTPUT), got, allow_pickle=False)
    _write_where(folder)
    want = reference["expected"]
    rtol, atol = float(reference["rtol"]), float(reference["atol"])
    if got.shape != want.shape or not np.allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True
    ):
        raise WrongResult(f"wrong result on {_CURRENT.get('server', 'the server')}")
    evaluator = rt_mod.time_evaluator(
        "main",
        device,
        number=evaluator_config.number,
        repeat=evaluator_config.repeat,
        min_repeat_ms=evaluator_config.min_repeat_ms,
    )
    runs = [float(r) for r in evaluator(*args).results]
    _write_where(folder, ended=time.time())
    return runs


def _write_where(folder: str, **extra: float) -> None:
    """Which server measured the candidate, what it said its device is, and when (the session's
    start and the timing's end, wall-clock seconds: the driver sees measurements overlap)."""
    where = {
        "server": _CURRENT.get("server", ""),
        "device": _CURRENT.get("device"),
        "started": _CURRENT.get("started"),
        **extra,
    }
    with open(os.path.join(folder, WHERE), "w") as f:
        json.dump(where, f)
