"""What every torch-rc command shares: the consoles, one-line errors, progress, the cache
location and device options."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from torch_rc.errors import TorchRCError

console = Console(soft_wrap=True)  # one-line messages stay one line (users grep them)
# Tables of tuning results are wide: keep their columns readable when piped.
wide_console = Console(soft_wrap=True, width=None if console.is_terminal else 160)
_F = TypeVar("_F", bound=Callable[..., Any])


def clear_errors(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TorchRCError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[str, int, int], None]]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(_stage: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def format_time(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def location_store(location: tuple[str | None, str | None], writes: str = "") -> Any:
    """The process's store at ``location``; with ``writes`` (what the command would write), one
    that can persist it (a read-only location is an error, never a silent success)."""
    from torch_rc.cache.location import persistent_store, store_for
    from torch_rc.options import Options

    where = Options.resolve(given_options(location)).store_location()
    return persistent_store(where, writes) if writes else store_for(where)


def given_options(location: tuple[str | None, str | None]) -> dict[str, str]:
    cache_dir, cache_url = location
    return {k: v for k, v in (("cache_dir", cache_dir), ("cache_url", cache_url)) if v}


def key_ring() -> Any:
    from torch_rc.backends.artifact import ring_of
    from torch_rc.options import Options

    return ring_of(Options.resolve())


def local_targets() -> list[str]:
    from torch_rc.options import Options
    from torch_rc.platform.target import local_target_keys

    return local_target_keys(Options.resolve())


CACHE_DIR = click.option(
    "--cache-dir",
    envvar="TORCH_RC_CACHE_DIR",
    default=None,
    help="Cache directory (default: TORCH_RC_CACHE_DIR, else the platform's user cache dir).",
)
CACHE_URL = click.option(
    "--cache-url",
    envvar="TORCH_RC_CACHE_URL",
    default=None,
    help="A shared cache server (redis://host:port/db) instead of the local directory.",
)
LLM_URL = click.option(
    "--llm-url",
    envvar="TORCH_RC_LLM_BASE_URL",
    default="",
    help="OpenAI-compatible endpoint for LLM-guided tuning (the key is read from OPENAI_API_KEY / "
    "TORCH_RC_LLM_API_KEY, never from the command line).",
)
LLM_MODEL = click.option(
    "--llm-model", envvar="TORCH_RC_LLM_MODEL", default="", help="Model name at that endpoint."
)

DEVICE = click.option(
    "--device",
    default="cpu",
    show_default=True,
    metavar="cpu|cuda|cuda:N",
    help="Where the model runs: the CPU, or a CUDA GPU (its kernels are built and tuned for it).",
)


def fleet_flags(fn: _F) -> _F:
    """The ``--rpc-*`` and ``--drivers`` flags (README "Tuning on a fleet"); the command gets
    them as one ``fleet`` dict of the backend options that were given."""
    flags = [
        click.option(
            "--rpc-tracker",
            default="",
            metavar="HOST:PORT",
            help="Measure on the servers of a TVM RPC tracker (python -m tvm.exec.rpc_tracker); "
            "candidates are built here. Env: TORCH_RC_RPC_TRACKER.",
        ),
        click.option(
            "--rpc-key",
            default="",
            metavar="KEY",
            help="The device key the RPC servers registered with (rpc_server --key). "
            "Env: TORCH_RC_RPC_KEY.",
        ),
        click.option(
            "--rpc-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Longest one remote measurement may take before it is retried on another "
            "server (default 60).",
        ),
        click.option(
            "--drivers",
            type=int,
            default=None,
            metavar="N",
            help="Tuning processes sharing this model's kernels (with one --cache-url store).",
        ),
        click.option(
            "--driver-index",
            type=int,
            default=None,
            metavar="I",
            help="Which of the --drivers this process is (0..N-1): it tunes the kernels whose "
            "workload key hashes to I.",
        ),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {
            "rpc_tracker": kwargs.pop("rpc_tracker"),
            "rpc_key": kwargs.pop("rpc_key"),
            "rpc_timeout_s": kwargs.pop("rpc_timeout"),
            "tune_drivers": kwargs.pop("drivers"),
            "tune_driver_index": kwargs.pop("driver_index"),
        }
        kwargs["fleet"] = {k: v for k, v in given.items() if v not in (None, "")}
        return fn(*args, **kwargs)

    for flag in reversed(flags):
        wrapper = flag(wrapper)
    return wrapper  # type: ignore[return-value]


def place(model: Any, examples: list[Any], device: str) -> tuple[Any, list[Any]]:
    """``model`` and ``examples`` moved to ``device`` (a clear error when there is none)."""
    import torch

    try:
        where = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(
            f"{device!r} is not a device (cpu, cuda, cuda:1)", param_hint="--device"
        ) from None
    if where.type == "cpu":
        return model, examples
    if where.type != "cuda":
        raise click.BadParameter(
            f"{device!r}: torch_rc compiles for cpu and cuda", param_hint="--device"
        )
    if not torch.cuda.is_available():
        raise click.BadParameter(
            f"{device!r}: no CUDA device here (torch.cuda.is_available() is False)",
            param_hint="--device",
        )
    if hasattr(model, "to"):
        model = model.to(where)
    return model, [x.to(where) if hasattr(x, "to") else x for x in examples]


def location_options(**given: Any) -> dict[str, Any]:
    """Backend options from CLI flags that were given (cache location, LLM endpoint)."""
    names = {
        "cache_dir": "cache_dir",
        "cache_url": "cache_url",
        "llm_url": "llm_base_url",
        "llm_model": "llm_model",
    }
    return {names[k]: v for k, v in given.items() if v}
