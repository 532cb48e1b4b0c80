"""Portable bundles: ship a store's tuning records and compiled artifacts to a serving fleet.

A bundle is one ``.tar.gz`` with ``manifest.json`` (format, versions, targets), ``records.jsonl``
and ``artifacts.jsonl`` plus ``artifacts/<key>.bin`` payloads. It is written to a temporary file and
renamed into place. Import reads and validates the whole bundle before writing anything; it merges
(records keep the k best per workload and target; an existing artifact is kept) and refuses
entries for another target unless ``allow_other_target``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from torch_rc.cache.interface import TuningStore
from torch_rc.cache.keys import SCHEMA_VERSION, KeyDetails, environment_parts
from torch_rc.cache.records import TuningRecord
from torch_rc.errors import CacheError

__all__ = ["BUNDLE_FORMAT", "ImportSummary", "export_bundle", "import_bundle", "read_bundle"]

BUNDLE_FORMAT = "torch_rc-bundle-1"
Progress = Callable[[str, int, int], None]
# Artifact key parts that must equal this environment's for an imported artifact to be usable.
_VERSION_PARTS = ("torch", "tvm", "tvm_ffi", "torch_rc", "policy")


def describe_refusal(summary: ImportSummary, local_targets: Collection[str]) -> str:
    """Why nothing in a bundle was usable, naming the bundle's targets and this machine's."""
    from torch_rc.backends.target import describe_target_key

    made_for = ", ".join(describe_target_key(t) for t in summary.targets if t) or "unknown"
    here = ", ".join(describe_target_key(t) for t in local_targets)
    return (
        f"the bundle holds nothing usable here: {summary.rejected_other_target} entries for "
        f"another target, {summary.rejected_other_version} for other versions. It was made for "
        f"{made_for}; this machine has {here}. A schedule tuned for one CPU or GPU kind is not "
        "the right one for another; import anyway with allow_other_target=True "
        "(--allow-other-target), or warm up on this kind of machine"
    )


@dataclass
class ImportSummary:
    """What an import did."""

    records_added: int = 0
    artifacts_added: int = 0
    artifacts_present: int = 0
    rejected_other_target: int = 0
    rejected_other_version: int = 0
    rejected_unverified: int = 0
    targets: list[str] = field(default_factory=list)


@dataclass
class Bundle:
    manifest: dict
    records: list[TuningRecord]
    artifacts: list[tuple[dict, bytes]]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def export_bundle(
    store: TuningStore, path: str | os.PathLike[str], progress: Progress | None = None
) -> dict:
    """Write every record and artifact of ``store`` to the bundle ``path``; return the manifest."""
    records = store.all_records()
    artifacts = store.artifacts()
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": time.time(),
        "records": len(records),
        "artifacts": len(artifacts),
        "targets": sorted(
            {r.target_key for r in records} | {a.parts.get("target", "") for a in artifacts}
        ),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
            _add(tar, "records.jsonl", "".join(r.to_json() + "\n" for r in records).encode())
            lines = []
            for index, entry in enumerate(artifacts):
                payload = store.artifact_payload(entry.key)
                if payload is None:
                    continue
                _add(tar, f"artifacts/{entry.key}.bin", payload)
                lines.append(
                    json.dumps(
                        {
                            "key": entry.key,
                            "parts": entry.parts,
                            "decisions": entry.decisions,
                            "created": entry.created,
                        },
                        sort_keys=True,
                    )
                )
                if progress:
                    progress("artifacts", index + 1, len(artifacts))
            _add(tar, "artifacts.jsonl", "".join(line + "\n" for line in lines).encode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return manifest


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and validate a whole bundle into memory.

    Raises:
        CacheError: the file is missing, not a bundle, of another format, corrupted, or
            inconsistent (an artifact whose payload is missing or whose key does not match).
    """
    try:
        with tarfile.open(path, "r:gz") as tar:
            files = {m.name: m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                if name not in files:
                    raise CacheError(f"{path} is not a torch_rc bundle: {name} is missing")
                handle = tar.extractfile(files[name])
                assert handle is not None
                return handle.read()

            manifest = json.loads(read("manifest.json"))
            if manifest.get("format") != BUNDLE_FORMAT:
                raise CacheError(
                    f"{path} has bundle format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}"
                )
            if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
                raise CacheError(
                    f"{path} was written with cache schema {manifest['schema_version']}, newer than "
                    f"this torch_rc ({SCHEMA_VERSION}); upgrade torch_rc to import it"
                )
            records = [
                TuningRecord.from_json(line)
                for line in read("records.jsonl").decode().splitlines()
                if line
            ]
            artifacts = []
            for line in read("artifacts.jsonl").decode().splitlines():
                if not line:
                    continue
                meta = json.loads(line)
                if KeyDetails("artifact", meta["parts"]).key != meta["key"]:
                    raise CacheError(
                        f"{path}: artifact {meta['key'][:12]} does not match its key parts"
                    )
                artifacts.append((meta, read(f"artifacts/{meta['key']}.bin")))
    except CacheError:
        raise
    except FileNotFoundError as exc:
        raise CacheError(f"bundle {path} does not exist") from exc
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(
            f"{path} is not a readable torch_rc bundle (corrupted or truncated?): {exc}"
        ) from exc
    return Bundle(manifest, records, artifacts)


def import_bundle(
    store: TuningStore,
    path: str | os.PathLike[str],
    *,
    local_target: str | Collection[str],
    allow_other_target: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Merge a bundle into ``store``. Nothing is written if the bundle fails validation.

    Args:
        local_target: The target key(s) of this machine (its CPU and each GPU); entries for
            other targets are refused (counted) unless ``allow_other_target``.
    """
    local = {local_target} if isinstance(local_target, str) else set(local_target)
    bundle = read_bundle(path)
    summary = ImportSummary(targets=list(bundle.manifest.get("targets", [])))
    local_versions = {
        name: value for name, value in environment_parts("").items() if name in _VERSION_PARTS
    }
    total = len(bundle.records) + len(bundle.artifacts)
    done = 0
    for record in bundle.records:
        done += 1
        if record.target_key not in local and not allow_other_target:
            summary.rejected_other_target += 1
        elif not record.check.passed:
            summary.rejected_unverified += 1
        else:
            store.put_record(record)
            summary.records_added += 1
        if progress:
            progress("import", done, total)
    for meta, payload in bundle.artifacts:
        done += 1
        if meta["parts"].get("target") not in local and not allow_other_target:
            summary.rejected_other_target += 1
        elif any(meta["parts"].get(name) != value for name, value in local_versions.items()):
            summary.rejected_other_version += 1  # its key can never match in this environment
        elif store.import_artifact(
            meta["key"],
            KeyDetails("artifact", meta["parts"]).to_json(),
            payload,
            meta["decisions"],
            meta["created"],
        ):
            summary.artifacts_added += 1
        else:
            summary.artifacts_present += 1
        if progress:
            progress("import", done, total)
    return summary
