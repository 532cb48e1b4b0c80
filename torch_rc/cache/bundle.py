"""Portable bundles: ship a store's tuning records and compiled artifacts to a serving fleet.

**A bundle is code**: its artifacts hold shared libraries that every replica loads into its
process. A bundle is one ``.tar.gz`` with ``manifest.json`` (format, versions, targets, and each
member's size and SHA-256), ``signature.json`` (the exporting machine's Ed25519 signature over the
manifest's bytes), ``records.jsonl``, ``artifacts.jsonl`` and ``artifacts/<key>.bin`` payloads
(each itself a signed :mod:`torch_rc.cache.payload`). It is written to a temporary file and
renamed into place.

Import reads the whole bundle as data and checks, before anything is written: size caps (per
member, in all, member count), the manifest's signature against the trusted keys (or
``trust_unsigned``, warned), every member's hash, that nothing is in the tar that the manifest
does not list, each record's fields and trace, and each artifact's own signature and hashes. It
then merges: records are marked imported (they never evict a record this machine verified, and
identical records are not added twice), an existing artifact is kept, entries for another target
are refused unless ``allow_other_target``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch_rc.cache.interface import TuningStore
from torch_rc.cache.keys import SCHEMA_VERSION, KeyDetails, environment_parts
from torch_rc.cache.payload import pack, unpack
from torch_rc.cache.records import TuningRecord
from torch_rc.cache.signing import KeyRing
from torch_rc.errors import CacheError
from torch_rc.platform.target import describe_target_key

__all__ = [
    "BUNDLE_FORMAT",
    "BundleLimits",
    "ImportSummary",
    "export_bundle",
    "import_bundle",
    "read_bundle",
]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "torch_rc-bundle-2"
Progress = Callable[[str, int, int], None]
# Artifact key parts that must equal this environment's for an imported artifact to be usable.
_VERSION_PARTS = ("torch", "tvm", "tvm_ffi", "torch_rc", "policy")
_ARTIFACT_NAME = re.compile(r"artifacts/[0-9a-f]{16,128}\.bin")


@dataclass(frozen=True)
class BundleLimits:
    """Caps on what an import reads (a small file must not expand into gigabytes)."""

    member_bytes: int = 256 << 20
    total_bytes: int = 2 << 30
    members: int = 100_000


def describe_refusal(summary: ImportSummary, local_targets: Collection[str]) -> str:
    """Why nothing in a bundle was usable, naming the bundle's targets and this machine's."""
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
    records_present: int = 0
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
    store: TuningStore,
    path: str | os.PathLike[str],
    ring: KeyRing,
    progress: Progress | None = None,
) -> dict:
    """Write every record and artifact of ``store`` to the bundle ``path``, signed with ``ring``'s
    key; return the manifest."""
    records = store.all_records()
    artifacts = store.artifacts()
    members: dict[str, bytes] = {
        "records.jsonl": "".join(r.to_json() + "\n" for r in records).encode()
    }
    lines = []
    for index, entry in enumerate(artifacts):
        payload = store.artifact_payload(entry.key)
        if payload is None:
            continue
        members[f"artifacts/{entry.key}.bin"] = payload
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
    members["artifacts.jsonl"] = "".join(line + "\n" for line in lines).encode()
    manifest = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": time.time(),
        "records": len(records),
        "artifacts": len(lines),
        "targets": sorted(
            {r.target_key for r in records} | {a.parts.get("target", "") for a in artifacts}
        ),
        "members": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in members.items()
        },
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    signer, signature = ring.sign(manifest_bytes)
    signature_bytes = json.dumps({"signer": signer, "signature": signature}).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            _add(tar, "manifest.json", manifest_bytes)
            _add(tar, "signature.json", signature_bytes)
            for name, data in members.items():
                _add(tar, name, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return manifest


def read_bundle(
    path: str | os.PathLike[str],
    ring: KeyRing,
    *,
    trust_unsigned: bool = False,
    limits: BundleLimits = BundleLimits(),
) -> Bundle:
    """Read and verify a whole bundle into memory (see the module docstring); nothing in it is
    run or loaded.

    Raises:
        CacheError: the file is missing, not a bundle, of another format, over a cap, not signed
            by a trusted key (unless ``trust_unsigned``), damaged, or inconsistent.
    """
    try:
        files = _read_members(path, limits)
        manifest_bytes = files.pop("manifest.json", None)
        if manifest_bytes is None:
            raise CacheError(f"{path} is not a torch_rc bundle: manifest.json is missing")
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != BUNDLE_FORMAT:
            raise CacheError(
                f"{path} has bundle format {manifest.get('format')!r}, expected "
                f"{BUNDLE_FORMAT!r} (bundles from before signing cannot be verified: export "
                "them again)"
            )
        signed = json.loads(files.pop("signature.json", b"{}"))
        signer = str(signed.get("signer", ""))
        if not ring.verify(manifest_bytes, signer, str(signed.get("signature", ""))):
            who = "unsigned" if not signer else f"signed by {ring.describe(signer)}"
            if not trust_unsigned:
                raise CacheError(
                    f"{path} is {who}: refused. A bundle holds code; trust the exporting "
                    "machine's public key (torch-rc keys trust FILE, or the trusted_keys option), "
                    "or import with --trust-unsigned if you control where it came from"
                )
            logger.warning("torch_rc: importing %s, which is %s (trust_unsigned)", path, who)
            manifest["unsigned"] = who
        if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
            raise CacheError(
                f"{path} was written with cache schema {manifest['schema_version']}, newer than "
                f"this torch_rc ({SCHEMA_VERSION}); upgrade torch_rc to import it"
            )
        listed = dict(manifest["members"])
        if set(listed) != set(files):
            extra = sorted(set(files) ^ set(listed))[:3]
            raise CacheError(f"{path}: members do not match its manifest ({', '.join(extra)})")
        for name, data in files.items():
            want = listed[name]
            if len(data) != int(want["size"]) or hashlib.sha256(data).hexdigest() != want["sha256"]:
                raise CacheError(f"{path}: member {name} is damaged (does not match its hash)")
        records = [
            _checked_record(line) for line in files["records.jsonl"].decode().splitlines() if line
        ]
        artifacts = []
        for line in files["artifacts.jsonl"].decode().splitlines():
            if not line:
                continue
            meta = json.loads(line)
            if KeyDetails("artifact", meta["parts"]).key != meta["key"]:
                raise CacheError(
                    f"{path}: artifact {meta['key'][:12]} does not match its key parts"
                )
            name = f"artifacts/{meta['key']}.bin"
            if name not in files:
                raise CacheError(f"{path}: artifact {meta['key'][:12]} has no payload")
            artifacts.append((meta, files[name]))
    except CacheError:
        raise
    except FileNotFoundError as exc:
        raise CacheError(f"bundle {path} does not exist") from exc
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(
            f"{path} is not a readable torch_rc bundle (corrupted or truncated?): {exc}"
        ) from exc
    return Bundle(manifest, records, artifacts)


def _read_members(path: str | os.PathLike[str], limits: BundleLimits) -> dict[str, bytes]:
    """Every regular member of the tar, its declared size checked against the caps before it is
    read; links, devices and unexpected names are refused."""
    files: dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, "r:gz") as tar:
        for count, info in enumerate(tar):
            if count >= limits.members:
                raise CacheError(f"{path} has more than {limits.members} members")
            if info.isdir():
                continue
            name = info.name
            known = name in ("manifest.json", "signature.json", "records.jsonl", "artifacts.jsonl")
            if not info.isfile() or not (known or _ARTIFACT_NAME.fullmatch(name)):
                raise CacheError(f"{path} holds an unexpected member {name!r}")
            if info.size > limits.member_bytes:
                raise CacheError(
                    f"{path}: member {name} is {info.size} bytes, over the cap of "
                    f"{limits.member_bytes}"
                )
            total += info.size
            if total > limits.total_bytes:
                raise CacheError(f"{path} expands to over {limits.total_bytes} bytes")
            handle = tar.extractfile(info)
            if handle is None:
                raise CacheError(f"{path}: member {name} cannot be read")
            files[name] = handle.read(limits.member_bytes + 1)
    return files


def _checked_record(line: str) -> TuningRecord:
    """A record from a bundle, its fields checked (a value of the wrong type, a latency that is
    not a positive number, a trace that is not JSON: refused)."""
    try:
        record = TuningRecord.from_json(line)
        json.loads(record.trace)
        ok = (
            isinstance(record.workload_key, str)
            and isinstance(record.target_key, str)
            and isinstance(record.latency_s, (int, float))
            and math.isfinite(record.latency_s)
            and record.latency_s > 0
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise CacheError(f"bundle holds a malformed tuning record: {exc}") from None
    if not ok:
        raise CacheError(f"bundle holds an invalid tuning record for {record.workload_key!r}")
    return record


def import_bundle(
    store: TuningStore,
    path: str | os.PathLike[str],
    *,
    local_target: str | Collection[str],
    ring: KeyRing,
    trust_unsigned: bool = False,
    allow_other_target: bool = False,
    progress: Progress | None = None,
    limits: BundleLimits = BundleLimits(),
    require_persist: bool = True,
) -> ImportSummary:
    """Merge a verified bundle into ``store``. Nothing is written if the bundle fails
    verification (see the module docstring).

    Args:
        local_target: The target key(s) of this machine (its CPU and each GPU); entries for
            other targets are refused (counted) unless ``allow_other_target``.
        ring: The keys whose signatures are trusted; with ``trust_unsigned`` (warned), an
            unsigned or foreign bundle is accepted and its artifacts re-signed with this
            machine's key (the operator vouched for them).
        require_persist: Refuse a store that runs in memory (a read-only location); a serving
            replica passes False and uses the imported entries in memory.

    Raises:
        CacheError: the bundle fails verification, or the store could not keep what it was
            given (a read-only or failing location): an import never reports writes that did
            not persist.
    """
    local = {local_target} if isinstance(local_target, str) else set(local_target)
    bundle = read_bundle(path, ring, trust_unsigned=trust_unsigned, limits=limits)
    summary = ImportSummary(targets=list(bundle.manifest.get("targets", [])))
    origin = str(bundle.manifest.get("unsigned") and "unsigned bundle" or "bundle")
    local_versions = {
        name: value for name, value in environment_parts("").items() if name in _VERSION_PARTS
    }
    artifacts = []
    for meta, payload in bundle.artifacts:
        try:
            verified = unpack(payload, ring, trust_unsigned=trust_unsigned)
        except CacheError as exc:
            raise CacheError(f"{path}: artifact {meta['key'][:12]} refused: {exc}") from None
        if not ring.verify_signer(verified.signer):
            payload = pack(verified.meta, verified.members, ring)  # vouched for: trust_unsigned
        artifacts.append((meta, payload))
    if require_persist and store.degraded:
        raise CacheError(f"{store.degraded}: the import would not persist")
    errors_before = store.errors
    total = len(bundle.records) + len(artifacts)
    done = 0
    for record in bundle.records:
        done += 1
        if record.target_key not in local and not allow_other_target:
            summary.rejected_other_target += 1
        elif not record.check.passed:
            summary.rejected_unverified += 1
        elif _already_there(store, record):
            summary.records_present += 1
        else:
            store.put_record(replace(record, imported_from=origin, id=None))
            summary.records_added += 1
        if progress:
            progress("import", done, total)
    for meta, payload in artifacts:
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
    if store.errors > errors_before:
        raise CacheError(
            f"the cache could not keep the imported entries ({store.errors - errors_before} "
            "write(s) failed; see the log)"
        )
    return summary


def _already_there(store: TuningStore, record: TuningRecord) -> bool:
    return any(
        (stored.trace, stored.created, stored.latency_s)
        == (record.trace, record.created, record.latency_s)
        for stored in store.best_records(record.workload_key, record.target_key, 64)
    )
