"""Bundles are code: signed manifests, hashes checked before use, caps, imported records that
never displace verified ones, and writes that cannot persist reported as errors."""

import gzip
import io
import json
import os
import pickle
import stat
import tarfile

import pytest
from click.testing import CliRunner

from torch_rc.backends.artifact import ARTIFACT_VERSION, ring_of, stored_kernels
from torch_rc.cache.bundle import BundleLimits, export_bundle, import_bundle, read_bundle
from torch_rc.cache.keys import KeyDetails, environment_parts
from torch_rc.cache.location import store_for
from torch_rc.cache.payload import pack
from torch_rc.cache.records import Check, TuningRecord
from torch_rc.cache.signing import keyring
from torch_rc.cache.store import SQLiteStore
from torch_rc.cli import main
from torch_rc.errors import CacheError
from torch_rc.options import Options
from torch_rc.platform.target import host_target_key

CHECK = Check("pytorch", 1e-4, 1e-4, 0.0, True)


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def target():
    return host_target_key(Options.resolve())


@pytest.fixture
def build_ring(tmp_path):
    """The build machine's key ring (not trusted by this test's own ring unless listed)."""
    return keyring(str(tmp_path / "build-keys"))


def _source(tmp_path, target, ring, latency=0.001):
    store = SQLiteStore(tmp_path / "src" / "store.sqlite")
    store.put_record(TuningRecord("wl", target, '["t"]', latency, CHECK, samples=64))
    parts = {**environment_parts(target), "graph": "g"}
    payload = pack({"artifact_version": ARTIFACT_VERSION, "kernels": {}}, {}, ring)
    store.put_artifact(KeyDetails("artifact", parts), payload, {})
    return store


def _bundle(tmp_path, target, ring, **kwargs):
    path = tmp_path / "b.trc"
    export_bundle(_source(tmp_path, target, ring, **kwargs), path, ring)
    return path


def _rewrite(path, change):
    """Re-pack the bundle at ``path`` with ``change(name, data) -> data or None`` applied to each
    member (manifest and signature untouched unless ``change`` edits them)."""
    members = {}
    with tarfile.open(path, "r:gz") as tar:
        for info in tar:
            members[info.name] = tar.extractfile(info).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            data = change(name, data)
            if data is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue())


def _trusting(tmp_path):
    return ring_of(Options.resolve({"trusted_keys": str(tmp_path / "build-keys" / "signing.pub")}))


def test_a_signed_bundle_imports_where_its_key_is_trusted(tmp_path, target, build_ring):
    path = _bundle(tmp_path, target, build_ring)
    store = SQLiteStore(tmp_path / "dst" / "store.sqlite")
    with pytest.raises(CacheError, match="not trusted here"):
        import_bundle(store, path, local_target=target, ring=ring_of(Options.resolve()))
    assert store.all_records() == [] and store.artifacts() == []  # nothing written
    summary = import_bundle(store, path, local_target=target, ring=_trusting(tmp_path))
    assert (summary.records_added, summary.artifacts_added) == (1, 1)
    (record,) = store.all_records()
    assert record.imported_from == "bundle"
    # The artifact keeps the build machine's signature: loadable where that key is trusted.
    payload = store.artifact_payload(store.artifacts()[0].key)
    trusted = Options.resolve({"trusted_keys": str(tmp_path / "build-keys" / "signing.pub")})
    assert stored_kernels(payload, trusted) == {}
    assert stored_kernels(payload, Options.resolve()) is None


def test_trust_unsigned_is_explicit_and_re_signs_with_this_machine(tmp_path, target, build_ring):
    path = _bundle(tmp_path, target, build_ring)
    store = SQLiteStore(tmp_path / "dst" / "store.sqlite")
    here = ring_of(Options.resolve())
    import_bundle(store, path, local_target=target, ring=here, trust_unsigned=True)
    payload = store.artifact_payload(store.artifacts()[0].key)
    assert stored_kernels(payload, Options.resolve()) == {}  # now signed by this machine


def test_a_pickle_bundle_of_the_old_format_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    old = io.BytesIO()
    with tarfile.open(fileobj=old, mode="w:gz") as tar:
        for name, data in (
            ("manifest.json", json.dumps({"format": "torch_rc-bundle-1"}).encode()),
            ("records.jsonl", b""),
            ("artifacts.jsonl", b'{"key": "00", "parts": {}, "decisions": {}, "created": 0}\n'),
            ("artifacts/00.bin", pickle.dumps(_Marker(marker))),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "old.trc"
    path.write_bytes(old.getvalue())
    result = CliRunner().invoke(
        main, ["cache", "--cache-dir", str(tmp_path / "c"), "import", str(path), "--trust-unsigned"]
    )
    assert result.exit_code == 1 and (
        "bundle format" in result.output or "unexpected member" in result.output
    )
    assert not marker.exists()
    with pytest.raises(CacheError):
        read_bundle(path, ring_of(Options.resolve()), trust_unsigned=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # A kernel payload swapped after signing: its hash no longer matches the manifest.
        (lambda n, d: d[:-8] + b"\x00" * 8 if n.startswith("artifacts/") else d, "damaged"),
        # A member the manifest does not list (a library dropped in beside the others).
        (lambda n, d: d, "members do not match"),
        # The signature removed: unsigned.
        (lambda n, d: None if n == "signature.json" else d, "is unsigned"),
    ],
)
def test_tampered_bundles_are_refused(tmp_path, target, build_ring, change, message):
    path = _bundle(tmp_path, target, build_ring)
    if message == "members do not match":
        _rewrite(path, lambda n, d: d)
        members = _members(path)
        members["artifacts/" + "ab" * 16 + ".bin"] = b"\x7fELF"
        _write_tar(path, members)
    else:
        _rewrite(path, change)
    with pytest.raises(CacheError, match=message):
        read_bundle(path, _trusting(tmp_path))


def _members(path):
    with tarfile.open(path, "r:gz") as tar:
        return {i.name: tar.extractfile(i).read() for i in tar}


def _write_tar(path, members, extra=()):
    """A gzipped tar of ``members`` (name -> bytes), then ``extra`` entries (links...)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    path.write_bytes(out.getvalue())


def test_links_and_odd_names_are_refused(tmp_path, target, build_ring):
    path = _bundle(tmp_path, target, build_ring)
    link = tarfile.TarInfo("../../etc/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _write_tar(path, _members(path), extra=[link])
    with pytest.raises(CacheError, match="unexpected member"):
        read_bundle(path, _trusting(tmp_path))


def test_size_caps_stop_a_small_file_that_expands(tmp_path, target, build_ring):
    path = _bundle(tmp_path, target, build_ring)
    zeros = b"\x00" * (8 << 20)
    _rewrite(path, lambda n, d: zeros if n == "records.jsonl" else d)
    assert path.stat().st_size < 100_000  # 8 MiB of zeros compress to almost nothing
    with pytest.raises(CacheError, match="over the cap"):
        read_bundle(path, _trusting(tmp_path), limits=BundleLimits(member_bytes=1 << 20))
    with pytest.raises(CacheError, match="expands to over"):
        read_bundle(
            path,
            _trusting(tmp_path),
            limits=BundleLimits(member_bytes=1 << 30, total_bytes=1 << 20),
        )
    assert gzip  # (the tar is gzip-compressed: caps apply to declared, uncompressed sizes)


def test_a_fake_fast_imported_record_never_displaces_verified_ones(tmp_path, target, build_ring):
    store = SQLiteStore(tmp_path / "dst" / "store.sqlite", keep_best=2)
    for latency in (0.003, 0.004):
        store.put_record(TuningRecord("wl", target, '["local"]', latency, CHECK))
    path = _bundle(tmp_path, target, build_ring, latency=1e-9)
    import_bundle(store, path, local_target=target, ring=_trusting(tmp_path))
    kept = store.best_records("wl", target, k=5)
    assert [r.latency_s for r in kept] == [0.003, 0.004]  # the verified ones, the fake evicted
    assert all(not r.imported_from for r in kept)


def test_imported_records_must_be_well_formed(tmp_path, target, build_ring):
    path = _bundle(tmp_path, target, build_ring, latency=-1.0)
    with pytest.raises(CacheError, match="invalid tuning record"):
        read_bundle(path, _trusting(tmp_path))


def test_an_import_that_cannot_persist_is_an_error(tmp_path, target, build_ring):
    path = _bundle(tmp_path, target, build_ring)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["cache", "--cache-dir", str(blocker / "cache"), "import", str(path)]
    )
    assert result.exit_code == 1 and "would be lost" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cache_files_are_private_and_shared_dirs_refused(tmp_path):
    SQLiteStore(tmp_path / "new" / "store.sqlite")
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "store.sqlite").st_mode) == 0o600
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheError, match="writable by other users"):
        SQLiteStore(shared / "store.sqlite")
    result = CliRunner().invoke(main, ["cache", "--cache-dir", str(shared), "stats"])
    assert result.exit_code == 1 and "chmod go-w" in result.output


def test_one_store_per_location_in_a_process(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    where = str(blocker / "cache" / "store.sqlite")
    first = store_for(where)
    assert first.degraded and store_for(where) is first


def test_verify_and_serving_never_run_a_crafted_payload(tmp_path, target):
    from torch_rc.serving import ServingModel

    marker = tmp_path / "pwned"
    store = SQLiteStore(tmp_path / "c" / "store.sqlite")
    parts = {**environment_parts(target), "graph": "g"}
    store.put_artifact(KeyDetails("artifact", parts), pickle.dumps(_Marker(marker)), {})
    result = CliRunner().invoke(main, ["cache", "--cache-dir", str(tmp_path / "c"), "verify"])
    assert result.exit_code == 1 and "not a torch_rc artifact" in result.output
    path = tmp_path / "crafted.trc"
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps(_Marker(marker))
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CacheError):
        ServingModel(lambda x: x, [], [], bundle=str(path), options={"cache_dir": str(tmp_path)})
    assert not marker.exists()


def test_credentials_never_reach_artifacts_or_bundles():
    from torch_rc.backends.artifact import options_dict

    options = Options.resolve(
        {"llm_base_url": "https://user:hunter2@llm.example/v1?api-key=sk-abc&x=1"}
    )
    stored = json.dumps(options_dict(options))
    assert "hunter2" not in stored and "sk-abc" not in stored and "llm.example/v1" in stored
