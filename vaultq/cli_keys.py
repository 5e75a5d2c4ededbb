"""``vaultq keys``: generate, rotate, revoke and export (verify-only) keyrings.

Wired into ``vaultq.cli`` by :func:`add_keys_parser`; ``python -m vaultq.cli_keys keys ...``
runs it standalone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from vaultq.errors import KeyringError
from vaultq.keyring import Keyring

__all__ = ["add_keys_parser", "cmd_generate", "cmd_public", "cmd_revoke", "cmd_rotate", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2

KEYS_HELP = """\
A keyring holds AES-256-GCM encryption keys (one active, older ones decrypt-only),
signing keys (one active) and trusted verification keys, each under a short id.
Load it in an app with Keyring.from_env() (VAULTQ_KEYS holds the JSON, or
@/path/to/keyfile) or Keyring.from_file(path). Key files must be mode 0600 (or
0400), owned by you (or root), in directories only you (or root) can write.

typical use:
  vaultq keys generate --out keys.json             # hmac-sha256: one trust domain
  vaultq keys generate --signing ed25519 --out keys.json
  vaultq keys public keys.json --out worker-keys.json   # ed25519 split trust
  vaultq keys rotate keys.json                     # new active keys, old kept
  vaultq keys revoke keys.json KEYID               # a stolen key: never trusted again
"""

REVOKE_HELP = """\
Stop trusting KEYID for everything: no job or result signed by it, and none
sealed under it (if it is an encryption key), is opened again by a keyring that
holds this revocation, whatever other copies of the key say. The key's material
is dropped from FILE and its id recorded under "revoked". If KEYID is the active
encryption or signing key, a new one is made active (same algorithm).

Jobs still queued under a revoked key are dead-lettered by workers with reason
rejected:revoked_key; re-enqueue them from the producer. Deploy FILE (and, for
ed25519 split trust, `vaultq keys public FILE`) to workers and producers; see
docs/security.md, "Incident response", for the whole procedure.
"""

PUBLIC_HELP = """\
Write the verify-only keyring for workers in a split-trust deployment: every
encryption key plus the ed25519 public keys, and no private signing key. Workers
holding it can open and run jobs but cannot forge them; their results are sealed
AEAD-only (authenticated by the encryption key, no signature).

Refused for hmac-sha256 keyrings (exit code 2): an hmac secret both signs and
verifies, so a "verify-only" copy could still sign jobs.
"""


def _write(keyring: Keyring, out: str | None, force: bool) -> int:
    if out is None:
        sys.stdout.write(keyring.to_json())
        return EXIT_OK
    if os.path.lexists(out) and not force:
        print(
            f"vaultq keys: {out} already exists; pass --force to replace it "
            "(the keys in it would be lost: use `vaultq keys rotate` to add new ones)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    keyring.save(out)
    print(f"vaultq keys: wrote {out} (mode 0600)", file=sys.stderr)
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """``vaultq keys generate``: a new keyring on stdout or in a 0600 file."""
    keyring = Keyring.generate(signing=args.signing)
    try:
        return _write(keyring, args.out, args.force)
    except KeyringError as exc:
        print(f"vaultq keys: {exc}", file=sys.stderr)
        return EXIT_ERROR


def cmd_rotate(args: argparse.Namespace) -> int:
    """``vaultq keys rotate FILE``: new active keys, old ones kept, file replaced atomically."""
    try:
        old = Keyring.from_file(args.file)
        new = old.rotate()
        new.save(args.file)
    except KeyringError as exc:
        print(f"vaultq keys: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"vaultq keys: rotated {args.file}: encryption key {old.active_key_id} -> "
        f"{new.active_key_id}, signing key {old.signer_id} -> {new.signer_id}; old keys kept "
        "to open existing jobs. Deploy to workers first, then to producers.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    """``vaultq keys revoke FILE KEYID...``: never trust those keys again."""
    try:
        old = Keyring.from_file(args.file)
        key_ids = list(args.key_ids)
        if args.all:
            # Private material only: verify entries are other signers' public keys.
            key_ids += [*old.key_ids, *old.to_dict()["signing"]["keys"]]
        if not key_ids:
            print("vaultq keys: name the key id(s) to revoke, or pass --all", file=sys.stderr)
            return EXIT_REFUSED
        new = old
        for key_id in key_ids:
            new = new.revoke(key_id)
        if new is not old:
            new.save(args.file)
    except KeyringError as exc:
        print(f"vaultq keys: {exc}", file=sys.stderr)
        return EXIT_ERROR
    changes = []
    if new.active_key_id != old.active_key_id:
        changes.append(f"new active encryption key {new.active_key_id}")
    if new.signer_id != old.signer_id:
        changes.append(f"new active signing key {new.signer_id}")
    print(
        f"vaultq keys: revoked {', '.join(sorted(set(key_ids)))} in {args.file}"
        + (f" ({'; '.join(changes)})" if changes else "")
        + ". Deploy this file to workers and producers (re-export `vaultq keys public` for "
        "split-trust workers); jobs queued under a revoked key are dead-lettered with "
        "reason rejected:revoked_key.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_public(args: argparse.Namespace) -> int:
    """``vaultq keys public FILE``: the verify-only keyring (ed25519 only)."""
    try:
        full = Keyring.from_file(args.file)
    except KeyringError as exc:
        print(f"vaultq keys: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        public = full.public()
    except KeyringError as exc:
        print(f"vaultq keys: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        return _write(public, args.out, args.force)
    except KeyringError as exc:
        print(f"vaultq keys: {exc}", file=sys.stderr)
        return EXIT_ERROR


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keys`` (with ``generate``, ``rotate``, ``revoke``, ``public``) to ``subparsers``."""
    keys: argparse.ArgumentParser = subparsers.add_parser(
        "keys",
        help="generate, rotate, revoke and export keyrings",
        description=KEYS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys.set_defaults(func=lambda _args: _print_help(keys))
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    gen = actions.add_parser(
        "generate",
        help="print a new keyring (or write it to a 0600 file)",
        description="Generate a keyring: one AES-256 key and one signing key.",
    )
    gen.add_argument(
        "--signing",
        choices=["hmac-sha256", "ed25519"],
        default="hmac-sha256",
        help="hmac-sha256 (default; fast, one shared secret) or ed25519 (split trust: "
        "producers sign, workers hold only public keys)",
    )
    gen.add_argument("--out", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")
    gen.add_argument("--force", action="store_true", help="replace FILE if it exists")
    gen.set_defaults(func=cmd_generate)

    rot = actions.add_parser(
        "rotate",
        help="add new active encryption and signing keys, keep the old ones",
        description=(
            "Rotate FILE in place (atomic rename, mode 0600): new active encryption and "
            "signing keys; old keys stay to decrypt and verify jobs sealed before. Deploy "
            "the result to workers first, then producers; remove old keys by hand once "
            "every job sealed with them has expired."
        ),
    )
    rot.add_argument("file", metavar="FILE", help="key file to rotate (must be mode 0600)")
    rot.set_defaults(func=cmd_rotate)

    rev = actions.add_parser(
        "revoke",
        help="never trust a key again (a stolen key): drop it, record its id as revoked",
        description=REVOKE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rev.add_argument("file", metavar="FILE", help="key file to change (must be mode 0600)")
    rev.add_argument("key_ids", metavar="KEYID", nargs="*", help="key id(s) to revoke")
    rev.add_argument(
        "--all",
        action="store_true",
        help="revoke every encryption and signing key in FILE (the whole file leaked); "
        "new active keys replace them, verify (public) keys of other signers stay",
    )
    rev.set_defaults(func=cmd_revoke)

    pub = actions.add_parser(
        "public",
        help="write the verify-only keyring for split-trust workers (ed25519)",
        description=PUBLIC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pub.add_argument("file", metavar="FILE", help="full keyring file (must be mode 0600)")
    pub.add_argument("--out", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")
    pub.add_argument("--force", action="store_true", help="replace --out FILE if it exists")
    pub.set_defaults(func=cmd_public)
    return keys


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m vaultq.cli_keys keys generate``."""
    parser = argparse.ArgumentParser(prog="vaultq")
    add_keys_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_REFUSED
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
