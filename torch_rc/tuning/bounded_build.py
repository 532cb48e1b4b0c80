"""Building a candidate kernel with a time limit.

Most candidates build in 0.03-3 s, but some take LLVM minutes: a softmax candidate whose row loop
of 512 elements carries ``pragma_auto_unroll_max_step = 512`` with explicit unrolling became one
basic block of 512 copies of the ``exp`` arithmetic, and its build ran for over two minutes (one
such candidate stalled a 64-sample search for a quarter of an hour). A build in the tuning
process cannot be interrupted, so on CPUs the candidate is built in a forked child that exports
the shared library; the child is killed at the limit and the candidate counts as a failed sample
("build timed out"), as MetaSchedule's own builder does with its 30 s timeout. The parent loads
the library (it is its own build output, written into a private temporary folder).

The cost is a fork, a link and a load per candidate (~0.1 s). GPU targets build in-process (a
forked child of a process that initialised CUDA must not use it), without a limit.
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import time
from typing import Any

from torch_rc.platform.threads import route_library
from torch_rc.platform.tvm_shim import tvm_api

__all__ = [
    "BuildFailed",
    "BuildTimedOut",
    "DEFAULT_BUILD_TIMEOUT_S",
    "build_library",
    "build_module",
]

# MetaSchedule's LocalBuilder default.
DEFAULT_BUILD_TIMEOUT_S = 30.0


class BuildFailed(RuntimeError):
    """The candidate did not build (the message is the build's own error)."""


class BuildTimedOut(BuildFailed):
    """The build ran past its time limit and was stopped."""


def build_module(mod: Any, target: Any, timeout_s: float | None = DEFAULT_BUILD_TIMEOUT_S) -> Any:
    """``mod`` built for ``target`` as a runtime module (``module["main"]``,
    ``module.time_evaluator``); on a CPU target with ``timeout_s``, in a child process that is
    stopped after ``timeout_s`` seconds.

    Raises:
        BuildTimedOut: The build took longer than ``timeout_s``.
        BuildFailed: The build failed (or the child died).
    """
    api = tvm_api()
    if str(target.kind.name) != "llvm":
        try:
            return api.compile(mod, target).mod
        except Exception as exc:
            raise BuildFailed(f"{type(exc).__name__}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="torch_rc_build_") as folder:
        library = os.path.join(folder, "kernel.so")
        build_library(mod, target, library, timeout_s)
        module = api.tvm.runtime.load_module(library)
        # Parallel loops run on PyTorch's OpenMP team, as they do when served (runtime.py):
        # measured on TVM's own pool they ran on one worker here, and a kernel's parallel
        # decisions were timed on half the machine.
        route_library(library)
        return module


def build_library(mod: Any, target: Any, path: str, timeout_s: float | None) -> None:
    """Build ``mod`` for ``target`` and export it as the shared library ``path``; with
    ``timeout_s`` (and ``fork``), in a child process stopped after ``timeout_s`` seconds.

    Raises:
        BuildTimedOut: The build took longer than ``timeout_s``.
        BuildFailed: The build failed (or the child died).
    """
    api = tvm_api()
    if timeout_s is None or not hasattr(os, "fork"):
        try:
            api.compile(mod, target).export_library(path)
        except Exception as exc:
            raise BuildFailed(f"{type(exc).__name__}: {exc}") from exc
        return
    error = path + ".error"
    pid = os.fork()
    if pid == 0:  # the child: build, export, and leave without running any exit handlers
        status = 1
        try:
            api.compile(mod, target).export_library(path)
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
            with open(error, "w", encoding="utf-8") as handle:
                handle.write(f"{type(exc).__name__}: {exc}"[-2000:])
        finally:
            os._exit(status)
    status = _wait(pid, timeout_s)
    if status is None:
        raise BuildTimedOut(f"build timed out after {timeout_s:g} s (stopped)")
    if status != 0:
        reason = ""
        if os.path.exists(error):
            with open(error, encoding="utf-8") as handle:
                reason = handle.read()
            os.remove(error)
        raise BuildFailed(reason or f"the build process ended with status {status}")


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's exit status, or None after killing it at ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)  # wakes when the child ends
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)
