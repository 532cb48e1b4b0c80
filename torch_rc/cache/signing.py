"""Who made a cache entry or a bundle: Ed25519 signatures, this machine's key and trusted keys.

A compiled artifact holds shared libraries that are loaded into the process, so whoever can write
a cache entry, a Redis value or a bundle can run code on every machine that loads it. Every
artifact and bundle torch_rc writes is therefore signed with this machine's signing key, and is
loaded only if its signature verifies with a trusted key: this machine's own, or a public key
the operator listed (the build machine's, on serving replicas). Unsigned or untrusted data is
refused unless ``trust_unsigned`` is set (an explicit, warned opt-out).

Keys live in ``key_dir`` (option; default the platform's user config dir, ``~/.config/torch_rc``):
``signing.key`` (private, PEM, mode 0600, made on first use) and ``signing.pub``; trusted public
keys are ``trusted/*.pub`` there, plus the files named by the ``trusted_keys`` option. A key's
id is the first 16 hex digits of the SHA-256 of its raw public bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch_rc.errors import CacheError

__all__ = ["KeyRing", "key_id", "keyring", "trust_key"]

logger = logging.getLogger(__name__)

SIGNING_KEY = "signing.key"
PUBLIC_KEY = "signing.pub"
TRUSTED_DIR = "trusted"


def key_id(public_bytes: bytes) -> str:
    """The short id of a raw Ed25519 public key."""
    return hashlib.sha256(public_bytes).hexdigest()[:16]


def _raw(public_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _load_public(path: Path) -> object:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = path.read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip()))
    if not isinstance(key, Ed25519PublicKey):
        raise CacheError(f"{path} is not an Ed25519 public key")
    return key


@dataclass
class KeyRing:
    """This machine's signing key and the public keys it trusts.

    Attributes:
        key_dir: Where the signing key lives (and ``trusted/*.pub``).
        trusted: Trusted public keys by id (this machine's own included).
    """

    key_dir: Path
    trusted: dict[str, object] = field(default_factory=dict)
    _private: object = None

    @property
    def own_id(self) -> str:
        return key_id(_raw(self._signing_key().public_key()))  # type: ignore[attr-defined]

    def _signing_key(self) -> object:
        """The private key, made (0600) on first use."""
        if self._private is not None:
            return self._private
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = self.key_dir / SIGNING_KEY
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise CacheError(f"{path} is not an Ed25519 private key")
        else:
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_private(path, pem)
            public_pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            (self.key_dir / PUBLIC_KEY).write_bytes(public_pem)
            logger.info("torch_rc: made a signing key at %s", path)
        self._private = key
        self.trusted[key_id(_raw(key.public_key()))] = key.public_key()
        return key

    def public_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        key = self._signing_key().public_key()  # type: ignore[attr-defined]
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, message: bytes) -> tuple[str, str]:
        """(signer id, base64 signature) of ``message``."""
        key = self._signing_key()
        signature = key.sign(message)  # type: ignore[attr-defined]
        return self.own_id, base64.b64encode(signature).decode()

    def verify(self, message: bytes, signer: str, signature: str) -> bool:
        """True if ``signature`` is ``signer``'s over ``message`` and ``signer`` is trusted."""
        from cryptography.exceptions import InvalidSignature

        self._signing_key()  # this machine's own key is always trusted
        key = self.trusted.get(signer)
        if key is None:
            return False
        try:
            key.verify(base64.b64decode(signature), message)  # type: ignore[attr-defined]
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify_signer(self, signer: str) -> bool:
        """Whether ``signer`` is a trusted key id (its signature was checked by :meth:`verify`)."""
        self._signing_key()
        return signer in self.trusted

    def describe(self, signer: str) -> str:
        if signer in self.trusted:
            return f"key {signer} (trusted)"
        return f"key {signer or '(none)'} (not trusted here)"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _writable_by_others(path: Path) -> bool:
    import stat

    try:
        return bool(path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


@functools.cache
def _ring(key_dir: str, trusted_files: tuple[str, ...]) -> KeyRing:
    ring = KeyRing(Path(key_dir))
    trusted_dir = Path(key_dir) / TRUSTED_DIR
    sources: Iterable[Path] = sorted(trusted_dir.glob("*.pub"))
    if sources and _writable_by_others(trusted_dir):
        logger.warning(
            "torch_rc: %s is writable by other users; its keys are ignored (chmod go-w it)",
            trusted_dir,
        )
        sources = []
    for path in [*sources, *map(Path, trusted_files)]:
        try:
            key = _load_public(path)
        except (OSError, ValueError, CacheError) as exc:
            logger.warning("torch_rc: trusted key %s is unreadable (%s); ignored", path, exc)
            continue
        ring.trusted[key_id(_raw(key))] = key
    return ring


def keyring(key_dir: str, trusted_files: Iterable[str] = ()) -> KeyRing:
    """The key ring of ``key_dir`` with the extra trusted public-key files (one per process)."""
    return _ring(os.path.expanduser(key_dir), tuple(sorted(trusted_files)))


def trust_key(key_dir: str | Path, public_key_file: str | Path) -> tuple[str, Path]:
    """Copy a public key into ``key_dir/trusted/`` (PEM), so later processes trust it; returns
    its id and where it went.

    Raises:
        CacheError: the file is not an Ed25519 public key.
    """
    from cryptography.hazmat.primitives import serialization

    try:
        key = _load_public(Path(public_key_file))
    except (OSError, ValueError) as exc:
        raise CacheError(f"{public_key_file} is not a readable Ed25519 public key: {exc}") from None
    kid = key_id(_raw(key))
    directory = Path(key_dir) / TRUSTED_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{kid}.pub"
    path.write_bytes(
        key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _ring.cache_clear()
    return kid, path
