"""``torch-rc keys ...``: this machine's signing key and the keys it trusts."""

from __future__ import annotations

import click

from torch_rc.cli.app import main
from torch_rc.cli.common import (
    clear_errors,
    console,
    key_ring,
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
@clear_errors
def keys_show(pem: bool) -> None:
    """This machine's key id, public key and where they live (made on first use)."""
    ring = key_ring()
    if pem:
        click.echo(ring.public_pem(), nl=False)
        return
    console.print(f"key id   {ring.own_id}")
    console.print(f"key dir  {ring.key_dir}")
    click.echo(ring.public_pem(), nl=False)


@keys.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False))
@clear_errors
def keys_trust(public_key: str) -> None:
    """Trust PUBLIC_KEY (a PEM or base64 Ed25519 public key file): copy it into this machine's
    trusted keys."""
    from torch_rc.cache.signing import trust_key

    ring = key_ring()
    kid, path = trust_key(ring.key_dir, public_key)
    console.print(f"trusted key {kid} ({path})")


@keys.command("list")
@clear_errors
def keys_list() -> None:
    """The key ids whose signatures are trusted here (this machine's own included)."""
    ring = key_ring()
    own = ring.own_id
    for kid in sorted(ring.trusted):
        console.print(f"{kid}{'  (this machine)' if kid == own else ''}")
