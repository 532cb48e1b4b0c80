"""The stored form of a compiled graph: data (JSON) and raw library bytes, never code, until every
byte is verified.

Layout: a fixed magic line, an 8-byte little-endian header length, the header (JSON), then the
members' bytes in the header's order. The header holds the metadata (kernel calling conventions,
versions) and each member's name, size and SHA-256; it is signed (Ed25519,
:mod:`torch_rc.cache.signing`) over its canonical JSON with the signature field left out, so the
signature also binds every member's bytes. :func:`unpack` checks, in this order and before
anything is used: the magic, size caps, the JSON, the signature against the trusted keys, and
each member's hash. A flipped byte in a kernel library is then a refused entry (a logged miss
and a rebuild), never a crash of the process that would have loaded it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch_rc.cache.signing import KeyRing
from torch_rc.errors import CacheError

__all__ = ["MAGIC", "MAX_HEADER_BYTES", "Payload", "pack", "unpack"]

MAGIC = b"TORCH_RC ARTIFACT 2\n"
MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class Payload:
    """A verified artifact: its metadata and member bytes, and who signed it."""

    meta: dict[str, Any]
    members: dict[str, bytes]
    signer: str


def _canonical(header: Mapping[str, Any]) -> bytes:
    unsigned = {k: v for k, v in header.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def pack(meta: Mapping[str, Any], members: Mapping[str, bytes], ring: KeyRing) -> bytes:
    """Serialize ``meta`` (JSON-able) and ``members`` (bytes), signed with this machine's key."""
    header: dict[str, Any] = {
        "format": 2,
        "meta": dict(meta),
        "members": [
            {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in members.items()
        ],
    }
    header["signer"] = ring.own_id
    signer, header["signature"] = ring.sign(_canonical(header))
    assert signer == header["signer"]
    text = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(text)) + text + b"".join(members.values())


def unpack(
    data: bytes, ring: KeyRing, *, trust_unsigned: bool = False, max_member_bytes: int = 1 << 30
) -> Payload:
    """The verified payload of ``data`` (see the module docstring).

    Raises:
        CacheError: Not an artifact, over a size cap, malformed, not signed by a trusted key
            (unless ``trust_unsigned``), or a member whose bytes do not match its hash.
    """
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise CacheError("not a torch_rc artifact (an older format, or not one at all)")
    (size,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    if size > MAX_HEADER_BYTES or start + size > len(data):
        raise CacheError(f"artifact header of {size} bytes is over the cap or truncated")
    try:
        header = json.loads(data[start : start + size])
        members = [(str(m["name"]), int(m["size"]), str(m["sha256"])) for m in header["members"]]
        meta = dict(header["meta"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"artifact header is malformed: {exc}") from None
    signer, signature = str(header.get("signer", "")), str(header.get("signature", ""))
    if not ring.verify(_canonical(header), signer, signature):
        if not trust_unsigned:
            who = "unsigned" if not signer else f"signed by {ring.describe(signer)}"
            raise CacheError(
                f"artifact is {who}: refused (trust its signer's public key, or set trust_unsigned)"
            )
    out: dict[str, bytes] = {}
    offset = start + size
    for name, length, digest in members:
        if length > max_member_bytes:
            raise CacheError(f"artifact member {name} is {length} bytes, over the cap")
        chunk = data[offset : offset + length]
        if len(chunk) != length or hashlib.sha256(chunk).hexdigest() != digest:
            raise CacheError(f"artifact member {name} is damaged (its bytes do not match its hash)")
        out[name] = chunk
        offset += length
    if offset != len(data):
        raise CacheError("artifact has trailing bytes after its members")
    return Payload(meta, out, signer)
