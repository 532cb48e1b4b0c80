"""TVM kernels run their parallel loops on PyTorch's OpenMP threads, not on a second thread pool.

A TVM CPU kernel library calls its parallel loops through the function pointer it exports as
``__TVMBackendParallelLaunch``. Left to TVM, that is TVM's own thread pool, which on the 2-core
machines measured here (docs/tvm-facts.md, "Threads") starts with one worker, hands every parallel
loop to it (~12 us per kernel launch), and when configured for two threads fights PyTorch's
OpenMP threads for the cores: a 512x512 matmul took 2.8 ms alone and 9.9 ms interleaved with
torch ops, and the torch ops slowed down too. :func:`route_library` points the symbol of every
loaded kernel library at ``torch_rc._omp_launch`` (a small C file built at install), which runs
the loop's tasks on the OpenMP team PyTorch uses: 3.8 us for a tiny kernel, 2.8 ms for that
matmul whether or not torch ops run in between, and torch ops keep their speed.

Without the native helper (no C compiler at install) or without an OpenMP build of PyTorch,
kernels keep TVM's pool and :func:`launcher_status` says why.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

__all__ = ["LauncherStatus", "launcher_status", "route_library", "set_thread_cap"]

logger = logging.getLogger(__name__)

_GOMP_SYMBOLS = (
    "GOMP_parallel",
    "omp_get_thread_num",
    "omp_get_num_threads",
    "omp_get_max_threads",
    "GOMP_barrier",
)


@dataclass(frozen=True)
class LauncherStatus:
    """Whether TVM kernels run on PyTorch's OpenMP team, and if not, why."""

    openmp: bool
    detail: str


@dataclass(frozen=True)
class _Launcher:
    helper: ctypes.CDLL
    launch: int
    barrier: int


def _loaded_libgomp() -> str | None:
    """Path of the libgomp this process has loaded (PyTorch's own copy on its wheels)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return None
    paths = {p for p in paths if os.path.isabs(p)}
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    preferred = sorted(p for p in paths if p.startswith(torch_lib))
    return (preferred or sorted(paths) or [None])[0]


@functools.cache
def _launcher() -> _Launcher | str:
    """The native launcher, initialised with PyTorch's libgomp; or why there is none."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return "PyTorch is not built with OpenMP"
    spec = importlib.util.find_spec("torch_rc._omp_launch")
    if spec is None or spec.origin is None:
        return "torch_rc's native helper (torch_rc._omp_launch) was not built at install"
    gomp_path = _loaded_libgomp()
    if gomp_path is None:
        return "no libgomp is loaded in this process"
    try:
        gomp = ctypes.CDLL(gomp_path)
        addresses = [ctypes.cast(getattr(gomp, name), ctypes.c_void_p) for name in _GOMP_SYMBOLS]
        helper = ctypes.CDLL(spec.origin)
    except (OSError, AttributeError) as exc:
        return f"cannot use {gomp_path}: {exc}"
    helper.rc_init.argtypes = [ctypes.c_void_p] * 5
    helper.rc_init.restype = ctypes.c_int
    helper.rc_set_cap.argtypes = [ctypes.c_int]
    if helper.rc_init(*addresses) != 0:
        return f"{gomp_path} lacks an OpenMP entry point"
    launch = ctypes.cast(helper.rc_parallel_launch, ctypes.c_void_p).value
    barrier = ctypes.cast(helper.rc_parallel_barrier, ctypes.c_void_p).value
    if not launch or not barrier:
        return "the native helper exports no launcher"
    return _Launcher(helper, launch, barrier)


def launcher_status() -> LauncherStatus:
    """Whether kernels loaded from now on run on PyTorch's OpenMP threads."""
    launcher = _launcher()
    if isinstance(launcher, str):
        return LauncherStatus(False, f"TVM's own thread pool ({launcher})")
    return LauncherStatus(True, "PyTorch's OpenMP threads")


def set_thread_cap(threads: int) -> None:
    """Use at most ``threads`` threads per parallel loop (0: as many as PyTorch uses)."""
    launcher = _launcher()
    if not isinstance(launcher, str):
        launcher.helper.rc_set_cap(int(threads))


def route_library(path: str) -> bool:
    """Point the kernel library at ``path`` (already loaded by TVM) at PyTorch's OpenMP team.

    Must run after TVM loaded it (TVM fills the symbols on load) and while ``path`` still exists
    (the same file maps to the same handle). Returns False, leaving TVM's pool, when the launcher
    is unavailable or the library has no parallel loops.
    """
    launcher = _launcher()
    if isinstance(launcher, str):
        return False
    try:
        library = ctypes.CDLL(path)
    except OSError as exc:
        logger.warning("torch_rc: cannot reopen kernel library %s: %s", path, exc)
        return False
    routed = False
    for symbol, address in (
        ("__TVMBackendParallelLaunch", launcher.launch),
        ("__TVMBackendParallelBarrier", launcher.barrier),
    ):
        try:
            slot = ctypes.c_void_p.in_dll(library, symbol)
        except ValueError:  # the library does not use it
            continue
        slot.value = address
        routed = True
    return routed
