"""The ``torch-rc`` command.

Errors the user can act on (a bad bundle, an unusable cache location) print one clear line and
exit non-zero; they never end in a bare traceback.
"""

from __future__ import annotations

import datetime
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from torch_rc.errors import TorchRCError

__all__ = ["main"]

console = Console(soft_wrap=True)  # one-line messages stay one line (users grep them)
# Tables of tuning results are wide: keep their columns readable when piped.
wide_console = Console(soft_wrap=True, width=None if console.is_terminal else 160)
_F = TypeVar("_F", bound=Callable[..., Any])


def _clear_errors(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TorchRCError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _progress(label: str) -> Iterator[Callable[[str, int, int], None]]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(_stage: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _store(location: tuple[str | None, str | None], writes: str = "") -> Any:
    """The process's store at ``location``; with ``writes`` (what the command would write), one
    that can persist it (a read-only location is an error, never a silent success)."""
    from torch_rc.cache.store import persistent_store, store_for
    from torch_rc.options import Options

    where = Options.resolve(_given(location)).store_location()
    return persistent_store(where, writes) if writes else store_for(where)


def _given(location: tuple[str | None, str | None]) -> dict[str, str]:
    cache_dir, cache_url = location
    return {k: v for k, v in (("cache_dir", cache_dir), ("cache_url", cache_url)) if v}


def _ring() -> Any:
    from torch_rc.backends.artifact import ring_of
    from torch_rc.options import Options

    return ring_of(Options.resolve())


def _local_targets() -> list[str]:
    from torch_rc.options import Options
    from torch_rc.platform.target import local_target_keys

    return local_target_keys(Options.resolve())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="torch_rc")
def main() -> None:
    """torch_rc: a tuning compiler backend for PyTorch serving.

    Use it from Python with torch.compile(model, backend="reasoning"); this command manages
    what it stores.
    """


_CACHE_DIR = click.option(
    "--cache-dir",
    envvar="TORCH_RC_CACHE_DIR",
    default=None,
    help="Cache directory (default: TORCH_RC_CACHE_DIR, else the platform's user cache dir).",
)
_CACHE_URL = click.option(
    "--cache-url",
    envvar="TORCH_RC_CACHE_URL",
    default=None,
    help="A shared cache server (redis://host:port/db) instead of the local directory.",
)
_LLM_URL = click.option(
    "--llm-url",
    envvar="TORCH_RC_LLM_BASE_URL",
    default="",
    help="OpenAI-compatible endpoint for LLM-guided tuning (the key is read from OPENAI_API_KEY / "
    "TORCH_RC_LLM_API_KEY, never from the command line).",
)
_LLM_MODEL = click.option(
    "--llm-model", envvar="TORCH_RC_LLM_MODEL", default="", help="Model name at that endpoint."
)

_DEVICE = click.option(
    "--device",
    default="cpu",
    show_default=True,
    metavar="cpu|cuda|cuda:N",
    help="Where the model runs: the CPU, or a CUDA GPU (its kernels are built and tuned for it).",
)


def _place(model: Any, examples: list[Any], device: str) -> tuple[Any, list[Any]]:
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


def _location_options(**given: Any) -> dict[str, Any]:
    """Backend options from CLI flags that were given (cache location, LLM endpoint)."""
    names = {
        "cache_dir": "cache_dir",
        "cache_url": "cache_url",
        "llm_url": "llm_base_url",
        "llm_model": "llm_model",
    }
    return {names[k]: v for k, v in given.items() if v}


@main.group()
@_CACHE_DIR
@_CACHE_URL
@click.pass_context
def cache(ctx: click.Context, cache_dir: str | None, cache_url: str | None) -> None:
    """Inspect, ship and maintain the persistent tuning and artifact cache."""
    ctx.obj = (cache_dir, cache_url)


@cache.command("ls")
@click.option("--limit", default=50, show_default=True, help="Rows per table.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
@_clear_errors
def cache_ls(location: tuple[str | None, str | None], limit: int, as_json: bool) -> None:
    """List tuning records (best latency, samples, provenance) and compiled graphs (model,
    input shapes, main ops, and each first-call decision with its numbers and age)."""
    from torch_rc.platform.target import describe_target_key

    store = _store(location)
    records = store.all_records()[:limit]
    graphs = [_graph_row(entry) for entry in store.artifacts()[:limit]]
    if as_json:
        rows = [
            {
                "workload": r.workload_key,
                "target": describe_target_key(r.target_key),
                "latency_ms": r.latency_s * 1e3,
                "samples": r.samples,
                "method": r.method,
                "proposer": r.proposer,
                "models": list(r.models),
                "created": r.created,
            }
            for r in records
        ]
        click.echo(json.dumps({"records": rows, "graphs": graphs}, indent=2))
        return
    table = Table(
        "workload",
        "target",
        "best ms",
        "samples",
        "method",
        "proposer / models",
        "created",
        title="Tuning records",
    )
    for record in records:
        table.add_row(
            record.workload_key[:16],
            describe_target_key(record.target_key)[:40],
            f"{record.latency_s * 1e3:.4f}",
            str(record.samples),
            record.method or "-",
            ", ".join(filter(None, [record.proposer, *record.models])) or "-",
            _when(record.created),
        )
    wide_console.print(table)
    table = Table(
        "key",
        "model",
        "inputs",
        "main ops",
        "runs",
        "partitions",
        "KB",
        "hits",
        "last used",
        title="Compiled graphs",
    )
    for row in graphs:
        table.add_row(
            row["key"][:12],
            row["model"],
            "\n".join(row["inputs"]),
            "\n".join(f"{op.removeprefix('aten.')} x{n}" for op, n in row["ops"].items()),
            row["graph"],
            row["partitions"],
            f"{row['size'] / 1024:.0f}",
            str(row["hits"]),
            _when(row["last_used"]),
        )
    wide_console.print(table)


def _graph_row(entry: Any) -> dict[str, Any]:
    """A compiled-graph artifact as ``cache ls`` shows it."""
    from torch_rc.backends.decisions import decisions_from_json
    from torch_rc.backends.dynamo import ABOUT

    about = entry.decisions.get(ABOUT) if isinstance(entry.decisions.get(ABOUT), dict) else {}
    decisions = decisions_from_json(entry.decisions)
    graph = decisions.pop("graph", None)
    statuses: dict[str, int] = {}
    for decision in decisions.values():
        statuses[decision.choice] = statuses.get(decision.choice, 0) + 1
    return {
        "key": entry.key,
        "model": str(about.get("model", "?")),
        "inputs": [str(x) for x in about.get("inputs", [])],
        "ops": {str(k): int(v) for k, v in dict(about.get("ops", {})).items()},
        "graph": _describe_decision(graph),
        "partitions": ", ".join(f"{n} {c}" for c, n in sorted(statuses.items())) or "-",
        "decisions": {name: d.to_json() for name, d in decisions.items()}
        | ({"graph": graph.to_json()} if graph else {}),
        "size": entry.size,
        "hits": entry.hits,
        "created": entry.created,
        "last_used": entry.last_used,
    }


def _describe_decision(decision: Any) -> str:
    """``compiled; compiled at 1.80x eager speed (95% 1.6-2.0x) (final, 2 threads, 3 h ago)``."""
    if decision is None:
        return "not decided yet"
    text = decision.choice
    timing = decision.comparison
    if timing is not None and timing.ratio > 0 and timing.low > 0:
        text += (
            f"; compiled at {1 / timing.ratio:.2f}x eager speed "
            f"(95% {1 / timing.high:.2f}-{1 / timing.low:.2f}x)"
        )
    if decision.state == "fixed":
        return f"{text} (fixed: {decision.reason[:60]})"
    hours = (time.time() - decision.at) / 3600
    age = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
    return f"{text} ({decision.state}, {decision.threads} threads, {age} ago)"


@cache.command("forget-decisions")
@click.option("--key", "key_prefix", default="", help="Only graphs whose key starts with this.")
@click.option("--model", default="", help="Only graphs of this model (as cache ls names it).")
@click.pass_obj
@_clear_errors
def cache_forget_decisions(
    location: tuple[str | None, str | None], key_prefix: str, model: str
) -> None:
    """Clear first-call decisions (the next process measures again), keeping the built
    kernels and every tuning record."""
    from torch_rc.backends.dynamo import ABOUT

    store = _store(location, writes="the change")
    forgotten = 0
    for entry in store.artifacts():
        about = entry.decisions.get(ABOUT)
        if key_prefix and not entry.key.startswith(key_prefix):
            continue
        if model and (not isinstance(about, dict) or about.get("model") != model):
            continue
        kept = {ABOUT: about} if about is not None else {}
        if kept != entry.decisions:
            if not store.set_decisions(entry.key, kept):
                raise click.ClickException(
                    f"could not write the cache (graph {entry.key[:12]}); see the warning above"
                )
            forgotten += 1
    console.print(
        f"forgot the decisions of {forgotten} compiled graph(s); kernels and tuning records are kept"
    )


@main.group()
def keys() -> None:
    """This machine's signing key and the keys it trusts.

    Every cache entry and bundle torch_rc writes is signed with this machine's key, and only
    entries signed by a trusted key are loaded (they hold code). To serve a bundle made on a
    build machine: run `torch-rc keys show --pem > build.pub` there, and `torch-rc keys trust
    build.pub` on each replica (or list the file in the trusted_keys option).
    """


@keys.command("show")
@click.option("--pem", is_flag=True, help="Print only the public key (PEM), for a file.")
@_clear_errors
def keys_show(pem: bool) -> None:
    """This machine's key id, public key and where they live (made on first use)."""
    ring = _ring()
    if pem:
        click.echo(ring.public_pem(), nl=False)
        return
    console.print(f"key id   {ring.own_id}")
    console.print(f"key dir  {ring.key_dir}")
    click.echo(ring.public_pem(), nl=False)


@keys.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False))
@_clear_errors
def keys_trust(public_key: str) -> None:
    """Trust PUBLIC_KEY (a PEM or base64 Ed25519 public key file): copy it into this machine's
    trusted keys."""
    from torch_rc.cache.signing import trust_key

    ring = _ring()
    kid, path = trust_key(ring.key_dir, public_key)
    console.print(f"trusted key {kid} ({path})")


@keys.command("list")
@_clear_errors
def keys_list() -> None:
    """The key ids whose signatures are trusted here (this machine's own included)."""
    ring = _ring()
    own = ring.own_id
    for kid in sorted(ring.trusted):
        console.print(f"{kid}{'  (this machine)' if kid == own else ''}")


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
@_clear_errors
def cache_stats(location: tuple[str | None, str | None], as_json: bool) -> None:
    """Counts, sizes and hit/miss counters."""
    stats = _store(location).stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    for name, value in stats.items():
        console.print(f"{name:20} {value}")


@cache.command("export")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.pass_obj
@_clear_errors
def cache_export(location: tuple[str | None, str | None], bundle: str) -> None:
    """Write the whole cache to BUNDLE, one portable file for a serving fleet."""
    from torch_rc.cache.bundle import export_bundle

    with _progress("export") as progress:
        manifest = export_bundle(_store(location), bundle, _ring(), progress)
    console.print(
        f"wrote {bundle}: {manifest['records']} records, {manifest['artifacts']} artifacts"
    )


@cache.command("import")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option(
    "--allow-other-target", is_flag=True, help="Also import entries made for another CPU/GPU."
)
@click.option(
    "--trust-unsigned",
    is_flag=True,
    help="Import a bundle that is unsigned or signed by a key not trusted here. A bundle holds "
    "shared libraries that every process using this cache loads: only for bundles you made.",
)
@click.pass_obj
@_clear_errors
def cache_import(
    location: tuple[str | None, str | None],
    bundle: str,
    allow_other_target: bool,
    trust_unsigned: bool,
) -> None:
    """Merge BUNDLE into the cache after verifying it: it must be signed by a trusted key (see
    `torch-rc keys`), every member must match its hash, and nothing is written if anything is
    off. Records verified here are never displaced by imported ones; entries for another target
    are refused."""
    from torch_rc.cache.bundle import describe_refusal, import_bundle

    local = _local_targets()
    if trust_unsigned:
        console.print(
            "[yellow]warning: --trust-unsigned: this bundle's code will be loaded without a "
            "trusted signature[/yellow]"
        )
    store = _store(location, writes="the imported entries")
    with _progress("import") as progress:
        summary = import_bundle(
            store,
            bundle,
            local_target=local,
            ring=_ring(),
            trust_unsigned=trust_unsigned,
            allow_other_target=allow_other_target,
            progress=progress,
        )
    console.print(
        f"imported {summary.records_added} records ({summary.records_present} already present) "
        f"and {summary.artifacts_added} artifacts "
        f"({summary.artifacts_present} already present); refused {summary.rejected_other_target} "
        f"for another target, {summary.rejected_other_version} for other versions, "
        f"{summary.rejected_unverified} unverified"
    )
    usable = summary.records_added + summary.artifacts_added + summary.artifacts_present
    if usable == 0 and (summary.rejected_other_target or summary.rejected_other_version):
        raise click.ClickException(describe_refusal(summary, local))


@cache.command("prune")
@click.option(
    "--older-than",
    "older_than_days",
    type=float,
    help="Entries unused for more than this many days.",
)
@click.option("--target", "target_key", help="Records for this target key.")
@click.option(
    "--other-tvm",
    is_flag=True,
    help="Records made with another TVM version than the installed one.",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.pass_obj
@_clear_errors
def cache_prune(
    location: tuple[str | None, str | None],
    older_than_days: float | None,
    target_key: str | None,
    other_tvm: bool,
    dry_run: bool,
) -> None:
    """Delete old entries, entries for a target, or records of other TVM versions."""
    from torch_rc.cache.keys import environment_parts

    tvm_version = environment_parts("")["tvm"] if other_tvm else None
    store = _store(location, writes="" if dry_run else "the deletions")
    errors = store.errors
    counts = store.prune(
        older_than_s=older_than_days * 86400 if older_than_days is not None else None,
        target_key=target_key,
        tvm_version=tvm_version,
        dry_run=dry_run,
    )
    if store.errors > errors:
        raise click.ClickException("the cache could not be changed; see the warning above")
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {counts['records']} records and {counts['artifacts']} artifacts")


@cache.command("verify")
@click.pass_obj
@_clear_errors
def cache_verify(location: tuple[str | None, str | None]) -> None:
    """Check the database's integrity and that every record and artifact can be read back.

    Exits non-zero if anything is damaged. (Re-measuring records needs the tuner's runner and is
    not offered yet.)
    """
    from torch_rc.backends.artifact import artifact_problem
    from torch_rc.options import Options

    store = _store(location)
    options = Options.resolve()
    problems = []
    integrity = store.integrity()
    if integrity != "ok":
        problems.append(f"database integrity: {integrity}")
    records = store.all_records()
    problems += [
        f"record {r.id} ({r.workload_key}) has no passed check"
        for r in records
        if not r.check.passed
    ]
    artifacts = store.artifacts()
    with _progress("verify artifacts") as progress:
        for index, entry in enumerate(artifacts):
            payload = store.artifact_payload(entry.key)
            if payload is None:
                problems.append(f"artifact {entry.key[:12]} cannot be read back")
            elif (why := artifact_problem(payload, options)) is not None:
                problems.append(f"artifact {entry.key[:12]}: {why}")
            progress("verify", index + 1, len(artifacts))
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) found")
    console.print(f"ok: integrity ok, {len(records)} records, {len(artifacts)} artifacts readable")


@cache.command("explain")
@click.argument("key_prefix", required=False)
@click.option("--limit", default=10, show_default=True)
@click.pass_obj
@_clear_errors
def cache_explain(
    location: tuple[str | None, str | None], key_prefix: str | None, limit: int
) -> None:
    """Why recent lookups missed (the key parts that differ from the nearest entry), or the
    parts of the artifact whose key starts with KEY_PREFIX."""
    store = _store(location)
    if key_prefix:
        matches = [a for a in store.artifacts() if a.key.startswith(key_prefix)]
        if not matches:
            raise click.ClickException(f"no artifact key starts with {key_prefix!r}")
        for entry in matches:
            console.print(f"[bold]{entry.key}[/bold]")
            for name, value in sorted(entry.parts.items()):
                console.print(f"  {name:15} {value}")
        return
    misses = store.recent_misses(limit)
    if not misses:
        console.print("no misses recorded")
    for miss in misses:
        age = time.time() - miss["at"]
        if miss["nearest"] is None:
            why = "the cache held no artifact to compare with"
        else:
            why = f"nearest {miss['nearest'][:12]} differs in: {', '.join(miss['differing'])}"
        console.print(f"{miss['key'][:12]}  {age / 60:6.1f} min ago  {why}")


# ----------------------------------------------------------------------------- tuning
def _load_model(spec: str) -> Any:
    """``package.module:factory`` -> the module (calling the factory if it is callable)."""
    import importlib
    import os

    if ":" not in spec:
        raise click.BadParameter(
            f"{spec!r} is not of the form package.module:factory", param_hint="MODEL"
        )
    module_name, attr = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing: say which
        raise click.BadParameter(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", param_hint="MODEL"
        ) from None
    if not hasattr(module, attr):
        raise click.BadParameter(
            f"module {module_name!r} has no attribute {attr!r}", param_hint="MODEL"
        )
    obj = getattr(module, attr)
    import torch

    if isinstance(obj, torch.nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as exc:  # the user's factory failed: say so in one line
            raise click.BadParameter(
                f"{spec}() failed: {type(exc).__name__}: {exc}", param_hint="MODEL"
            ) from None
    else:
        raise click.BadParameter(f"{spec} is neither a model nor a factory", param_hint="MODEL")
    if not callable(model):
        raise click.BadParameter(f"{spec}() did not return a model", param_hint="MODEL")
    return model.eval() if isinstance(model, torch.nn.Module) else model


def _dims(spec: str, text: str, hint: str) -> list[int]:
    """``32x256`` -> [32, 256]; anything else (``0x5``, ``ax3``, ``-1x4``) is a one-line error."""
    try:
        dims = [int(d) for d in text.lower().split("x")]
    except ValueError:
        dims = []
    if not dims or any(d < 1 for d in dims) or any(d > 1 << 31 for d in dims):
        raise click.BadParameter(
            f"{spec!r}: a shape is positive sizes joined by x, like 32x256", param_hint=hint
        )
    return dims


def _check_runs(model: Any, inputs: list[Any], what: str) -> None:
    """Run ``model`` eagerly on ``inputs`` once: a model that cannot take them is a one-line
    error here, not a Dynamo traceback later."""
    import torch

    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # the user's model rejects these inputs: say which, in one line
        shapes = " ".join("x".join(map(str, x.shape)) for x in inputs if hasattr(x, "shape"))
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        hint = ""
        if isinstance(model, torch.fx.GraphModule) or "Expected input at" in message:
            hint = (
                " (an ExportedProgram only takes the shapes it was exported for; export with "
                "dynamic_shapes to serve others)"
            )
        raise click.ClickException(
            f"the model fails on {what} {shapes}: {type(exc).__name__}: {message}{hint}"
        ) from None


def _parse_input(spec: str) -> Any:
    """``32x256`` (float32) or ``1x128:int64`` (random integers 0..99) -> a random tensor."""
    import torch

    shape_text, _, dtype_text = spec.partition(":")
    shape = _dims(spec, shape_text, "--input")
    dtype = getattr(torch, dtype_text or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise click.BadParameter(f"{spec!r}: unknown dtype {dtype_text!r}", param_hint="--input")
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=dtype)
    return torch.randint(0, 100, shape, dtype=dtype)


@main.command()
@click.argument("model", required=False)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="SHAPE[:DTYPE]",
    help="An example input, e.g. 32x256 or 1x128:int64 (repeat per input).",
)
@click.option(
    "--tir",
    type=click.Path(exists=True, dir_okay=False),
    help="Tune one TIR workload instead: a TVMScript file defining an IRModule with a main PrimFunc.",
)
@click.option(
    "--trials",
    default=64,
    show_default=True,
    help="Real measurements to spend (split over the kernels by FLOPs).",
)
@click.option("--time-limit", default=0.0, help="Wall-clock limit in seconds (0: trials only).")
@click.option(
    "--method", type=click.Choice(["mcts", "evolutionary"]), default="mcts", show_default=True
)
@_LLM_URL
@_LLM_MODEL
@click.option(
    "--llm-mode",
    type=click.Choice(["values", "mutators"]),
    default="values",
    show_default=True,
    help="values: the LLM chooses concrete tile sizes etc.; mutators: only mutator types.",
)
@click.option("--seed", default=0, show_default=True)
@_DEVICE
@_CACHE_DIR
@_CACHE_URL
@click.option("--no-progress", is_flag=True, help="No progress display.")
@_clear_errors
def tune(
    model: str | None,
    inputs: tuple[str, ...],
    tir: str | None,
    trials: int,
    time_limit: float,
    method: str,
    llm_url: str,
    llm_model: str,
    llm_mode: str,
    seed: int,
    device: str,
    cache_dir: str | None,
    cache_url: str | None,
    no_progress: bool,
) -> None:
    """Tune MODEL (package.module:factory, with --input per example input) or one TIR workload
    (--tir FILE), and store verified schedules in the cache for every later compile.

    \b
    Examples:
      torch-rc tune mymodels:build_mlp --input 32x256 --trials 128
      torch-rc tune mymodels:bert --input 1x128:int64 --llm-url http://127.0.0.1:8080/v1 --llm-model gemma-3-270m
      torch-rc tune --tir matmul.py --trials 64 --method evolutionary
      torch-rc tune mymodels:build_mlp --input 256x1024 --device cuda --trials 256

    Ctrl-C stops tuning and keeps what was tuned. Then: torch-rc report.
    """
    options: dict[str, Any] = {
        "tune_time_s": time_limit,
        "tune_method": method,
        "tune_seed": seed,
        "progress": not no_progress,
        "llm_mode": llm_mode,
    }
    options.update(
        _location_options(
            cache_dir=cache_dir, cache_url=cache_url, llm_url=llm_url, llm_model=llm_model
        )
    )
    if trials < 1:
        raise click.BadParameter("must be >= 1", param_hint="--trials")
    from torch_rc.options import Options

    Options.resolve(options)  # bad options (flags or TORCH_RC_*) fail before any work
    import torch_rc

    if tir:
        if model:
            raise click.UsageError("give MODEL or --tir, not both")
        from torch_rc.platform.tvm_shim import tvm_api

        try:
            mod = tvm_api().tvm.script.from_source(open(tir).read())
        except Exception as exc:  # a parse error: one line, naming the file
            raise click.BadParameter(
                f"{tir}: not a TVMScript IRModule: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}",
                param_hint="--tir",
            ) from None
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            raise click.BadParameter(
                f"{tir}: the IRModule has no 'main' PrimFunc", param_hint="--tir"
            )
        _place(None, [], device)  # validates --device
        runs = [torch_rc.tune_tir(mod, trials=trials, options=options, device=device)]
    else:
        if not model:
            raise click.UsageError("give MODEL (package.module:factory) or --tir FILE; see --help")
        if not inputs:
            raise click.UsageError("give at least one --input SHAPE[:DTYPE] for MODEL")
        examples = [_parse_input(i) for i in inputs]
        placed, examples = _place(_load_any_model(model), examples, device)
        _check_runs(placed, examples, "--input")
        report = torch_rc.tune(placed, examples, trials=trials, options=options)
        runs = report.runs
        if report.max_abs_error is not None:
            console.print(f"compiled model vs eager: max abs error {report.max_abs_error:.2e}")
    from torch_rc.tuning.report import print_run

    for run in runs:
        if run.log_path:
            print_run(json.loads(open(run.log_path).read()), wide_console, steps=3)
            console.print(f"run log: {run.log_path}")
        else:
            console.print(
                "nothing to tune: every kernel is already tuned in the cache, or too small to tune"
            )
    if any(run.interrupted for run in runs):
        console.print("[yellow]tuning was interrupted; what was tuned is stored[/]")
        sys.exit(130)


@main.command()
@click.argument("run_log", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--out", "out", default=None, help="PNG of best latency vs samples (default: next to the log)."
)
@click.option("--steps", default=8, show_default=True, help="Transformations shown per kernel.")
@_CACHE_DIR
@_clear_errors
def report(run_log: str | None, out: str | None, steps: int, cache_dir: str | None) -> None:
    """Show a tuning run: per-kernel results, the chosen transformations with the proposer's
    rationale, LLM accounting, and a PNG of best latency vs measured samples.
    RUN_LOG defaults to the latest run in the cache directory."""
    from pathlib import Path

    from torch_rc.options import Options
    from torch_rc.tuning.report import latest_run, load_run, plot_run, print_run
    from torch_rc.tuning.session import runs_dir

    if run_log is None:
        directory = runs_dir(Options.resolve({"cache_dir": cache_dir} if cache_dir else {}))
        found = latest_run(directory)
        if found is None:
            raise click.ClickException(f"no tuning runs in {directory}; run torch-rc tune first")
        path = found
    else:
        path = Path(run_log)
    try:
        run = load_run(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    print_run(run, wide_console, steps=steps)
    png = Path(out) if out else path.with_suffix(".png")
    if plot_run(run, png):
        console.print(f"curves: {png}")


def _load_any_model(spec: str) -> Any:
    """A model from ``package.module:factory`` or an ExportedProgram file (``.pt2``)."""
    import os

    lowered = spec.lower()
    if lowered.endswith(".onnx"):
        raise click.BadParameter(
            f"{spec}: ONNX models are not supported yet; export the model with torch.export "
            "(.pt2) or give a package.module:factory",
            param_hint="MODEL",
        )
    if lowered.endswith((".pt", ".ts", ".torchscript")):
        raise click.BadParameter(
            f"{spec}: TorchScript files are not supported (Dynamo cannot trace ScriptModules); "
            "use torch.export (.pt2) or a package.module:factory",
            param_hint="MODEL",
        )
    if lowered.endswith(".pt2"):
        if not os.path.exists(spec):
            raise click.BadParameter(f"{spec} does not exist", param_hint="MODEL")
        import torch

        try:
            return torch.export.load(spec).module()
        except Exception as exc:  # a corrupted or foreign file: one line
            raise click.BadParameter(
                f"{spec} is not a readable ExportedProgram: {type(exc).__name__}: {exc}",
                param_hint="MODEL",
            ) from None
    return _load_model(spec)


def _parse_bucket(spec: str) -> list[tuple[int, ...]]:
    """``1x128`` or ``1x128,1x128`` (one shape per tensor input; dtypes come from --input)."""
    return [tuple(_dims(spec, part.split(":")[0], "--bucket")) for part in spec.split(",")]


@main.command()
@click.argument("model")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="SHAPE[:DTYPE]",
    help="An example input (fixes dtypes), e.g. 1x128:int64; repeat per input.",
)
@click.option(
    "--bucket",
    "buckets",
    multiple=True,
    metavar="SHAPES",
    help="A shape bucket to warm, e.g. 4x128 (comma-separated per input); repeat. Default: the --input shapes.",
)
@click.option(
    "--batch-sizes",
    default="",
    help="Shorthand: warm every bucket with each of these batch sizes (dim 0 of every input), e.g. 1,2,4,8,16.",
)
@click.option(
    "--trials",
    default=0,
    show_default=True,
    help="Tuning budget per graph (0: default schedules and stored records only).",
)
@click.option("--time-limit", default=0.0, help="Wall-clock limit of all tuning, seconds.")
@_LLM_URL
@_LLM_MODEL
@_DEVICE
@click.option(
    "--bundle",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write the cache to this bundle (ship it to replicas).",
)
@_CACHE_DIR
@_CACHE_URL
@_clear_errors
def warmup(
    model: str,
    inputs: tuple[str, ...],
    buckets: tuple[str, ...],
    batch_sizes: str,
    trials: int,
    time_limit: float,
    llm_url: str,
    llm_model: str,
    device: str,
    bundle: str | None,
    cache_dir: str | None,
    cache_url: str | None,
) -> None:
    """Compile (and with --trials tune) MODEL for every shape bucket, fill the cache, and
    optionally write a bundle that serving replicas load with zero tuning.

    MODEL is package.module:factory or an ExportedProgram file (.pt2).

    \b
    Example:
      torch-rc warmup examples.serving.model:build_model --input 1x16:int64 \\
          --bucket 1x16 --bucket 1x32 --batch-sizes 1,2,4 --trials 64 --bundle model.trc
    """
    from torch_rc.serving import warmup as run_warmup

    examples = [_parse_input(i) for i in inputs]
    shapes = [_parse_bucket(b) for b in buckets] or [[tuple(x.shape) for x in examples]]
    if batch_sizes:
        try:
            sizes = [int(b) for b in batch_sizes.split(",") if b]
        except ValueError:
            raise click.BadParameter(
                f"{batch_sizes!r} is not a list of integers", param_hint="--batch-sizes"
            ) from None
        shapes = [[(n, *s[1:]) for s in bucket] for bucket in shapes for n in sizes]
    for bucket in shapes:
        if len(bucket) != len(examples):
            raise click.BadParameter(
                f"bucket {bucket} has {len(bucket)} shapes for {len(examples)} inputs",
                param_hint="--bucket",
            )
    options = _location_options(
        cache_dir=cache_dir, cache_url=cache_url, llm_url=llm_url, llm_model=llm_model
    )
    from torch_rc.options import Options

    Options.resolve(options)  # bad options (flags or TORCH_RC_*) fail before any work
    loaded, examples = _place(_load_any_model(model), examples, device)
    from torch_rc.serving import inputs_like

    for bucket in shapes:
        try:
            _check_runs(loaded, inputs_like(examples, bucket), "bucket")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--bucket") from None

    def progress(done: int, total: int, result: Any) -> None:
        error = "-" if result.max_abs_error is None else f"{result.max_abs_error:.1e}"
        console.print(
            f"[{done}/{total}] bucket {[list(s) for s in result.shapes]}: {result.graphs} graphs, "
            f"{result.compile_s:.1f} s, {result.samples} tuning samples, max abs error vs eager {error}"
        )

    report = run_warmup(
        loaded,
        examples,
        shapes=shapes,
        trials=trials,
        time_limit_s=time_limit,
        options=options,
        bundle=bundle,
        progress=progress,
    )
    bad = [r for r in report.buckets if r.max_abs_error is not None and r.max_abs_error > 1e-3]
    if report.bundle:
        console.print(f"bundle: {report.bundle}")
    console.print(f"warmed {len(report.buckets)} buckets in {report.seconds:.1f} s")
    if bad:
        raise click.ClickException(
            f"{len(bad)} buckets differ from eager by more than 1e-3; see above"
        )
    if report.interrupted:
        console.print("[yellow]interrupted; what was warmed is in the cache[/]")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
