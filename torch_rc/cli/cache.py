"""``torch-rc cache ...``: list, explain, export, import, prune and verify what the cache holds."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.table import Table

from torch_rc.cli.app import main
from torch_rc.cli.common import (
    CACHE_DIR,
    CACHE_URL,
    clear_errors,
    console,
    format_time,
    key_ring,
    local_targets,
    location_store,
    progress_bar,
    wide_console,
)


@main.group()
@CACHE_DIR
@CACHE_URL
@click.pass_context
def cache(ctx: click.Context, cache_dir: str | None, cache_url: str | None) -> None:
    """Inspect, ship and maintain the persistent tuning and artifact cache."""
    ctx.obj = (cache_dir, cache_url)


@cache.command("ls")
@click.option("--limit", default=50, show_default=True, help="Rows per table.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
@clear_errors
def cache_ls(location: tuple[str | None, str | None], limit: int, as_json: bool) -> None:
    """List tuning records (best latency, samples, provenance) and compiled graphs (model,
    input shapes, main ops, and each first-call decision with its numbers and age)."""
    from torch_rc.platform.target import describe_target_key

    store = location_store(location)
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
            format_time(record.created),
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
            format_time(row["last_used"]),
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
@clear_errors
def cache_forget_decisions(
    location: tuple[str | None, str | None], key_prefix: str, model: str
) -> None:
    """Clear first-call decisions (the next process measures again), keeping the built
    kernels and every tuning record."""
    from torch_rc.backends.dynamo import ABOUT

    store = location_store(location, writes="the change")
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


@cache.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
@clear_errors
def cache_stats(location: tuple[str | None, str | None], as_json: bool) -> None:
    """Counts, sizes and hit/miss counters."""
    stats = location_store(location).stats()
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    for name, value in stats.items():
        console.print(f"{name:20} {value}")


@cache.command("export")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.pass_obj
@clear_errors
def cache_export(location: tuple[str | None, str | None], bundle: str) -> None:
    """Write the whole cache to BUNDLE, one portable file for a serving fleet."""
    from torch_rc.cache.bundle import export_bundle

    with progress_bar("export") as progress:
        manifest = export_bundle(location_store(location), bundle, key_ring(), progress)
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
@clear_errors
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

    local = local_targets()
    if trust_unsigned:
        console.print(
            "[yellow]warning: --trust-unsigned: this bundle's code will be loaded without a "
            "trusted signature[/yellow]"
        )
    store = location_store(location, writes="the imported entries")
    with progress_bar("import") as progress:
        summary = import_bundle(
            store,
            bundle,
            local_target=local,
            ring=key_ring(),
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
@clear_errors
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
    store = location_store(location, writes="" if dry_run else "the deletions")
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
@clear_errors
def cache_verify(location: tuple[str | None, str | None]) -> None:
    """Check the database's integrity and that every record and artifact can be read back.

    Exits non-zero if anything is damaged. (Re-measuring records needs the tuner's runner and is
    not offered yet.)
    """
    from torch_rc.backends.artifact import artifact_problem
    from torch_rc.options import Options

    store = location_store(location)
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
    with progress_bar("verify artifacts") as progress:
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
@clear_errors
def cache_explain(
    location: tuple[str | None, str | None], key_prefix: str | None, limit: int
) -> None:
    """Why recent lookups missed (the key parts that differ from the nearest entry), or the
    parts of the artifact whose key starts with KEY_PREFIX."""
    store = location_store(location)
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
