"""``vaultq keys`` generate / rotate / public, through main(argv) and one real subprocess."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vaultq.cli_keys import main
from vaultq.envelope import JobMeta, open_job, seal_job
from vaultq.errors import KeyringError, RevokedKey
from vaultq.keyring import Keyring

ROOT = Path(__file__).resolve().parent.parent


def test_generate_prints_keyring(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate"]) == 0
    out = capsys.readouterr().out
    keyring = Keyring.from_json(out)
    assert keyring.signing_algorithm == "hmac-sha256"
    assert keyring.can_sign


def test_generate_ed25519_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "generate", "--signing", "ed25519", "--out", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # key material goes to the file only
    assert "0600" in captured.err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.from_file(path).signing_algorithm == "ed25519"


def test_generate_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "generate", "--out", str(path)]) == 0
    before = path.read_text()
    assert main(["keys", "generate", "--out", str(path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert path.read_text() == before
    assert main(["keys", "generate", "--out", str(path), "--force"]) == 0
    assert path.read_text() != before


def test_rotate_in_place_keeps_old_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "generate", "--out", str(path)]) == 0
    old = Keyring.from_file(path)
    assert main(["keys", "rotate", str(path)]) == 0
    new = Keyring.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert new.active_key_id != old.active_key_id
    assert old.active_key_id in new.key_ids
    assert old.signer_id is not None
    assert new.trusts(old.signer_id)
    err = capsys.readouterr().err
    assert old.active_key_id in err
    assert new.active_key_id in err
    for key in new.to_dict()["encryption"]["keys"].values():
        assert key not in err


def test_rotate_refuses_insecure_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    Keyring.generate().save(path)
    path.chmod(0o644)
    before = path.read_text()
    assert main(["keys", "rotate", str(path)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    assert path.read_text() == before


def test_revoke_a_stolen_signing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`keys revoke FILE KEYID`: the stolen active signing key is replaced, dropped from
    the file and recorded as revoked; what the thief signs no longer opens."""
    path = tmp_path / "keys.json"
    assert main(["keys", "generate", "--signing", "ed25519", "--out", str(path)]) == 0
    stolen = Keyring.from_file(path)
    assert stolen.signer_id is not None
    capsys.readouterr()
    assert main(["keys", "revoke", str(path), stolen.signer_id]) == 0
    err = capsys.readouterr().err
    fixed = Keyring.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fixed.is_revoked(stolen.signer_id)
    assert fixed.signer_id not in (None, stolen.signer_id)
    assert fixed.active_key_id == stolen.active_key_id  # only the signing key was named
    assert f"new active signing key {fixed.signer_id}" in err
    assert "revoked_key" in err
    for key in stolen.to_dict()["signing"]["keys"].values():
        assert key["key"] not in path.read_text()
        assert key["key"] not in err
    forged = seal_job(
        stolen,
        job_id="f" * 32,
        app="a",
        task="t",
        queue="q",
        payload=b"{}",
        principal=None,
        meta=JobMeta(),
        issued_at=1.0,
        not_before=1.0,
        expires_at=2.0,
    )
    for receiver in (fixed, fixed.public()):
        with pytest.raises(RevokedKey):
            open_job(forged, receiver, app="a", tasks={"t"}, now=1.0)
    # the same id again is a no-op; an unknown id is an error that leaves the file alone
    before = path.read_text()
    assert main(["keys", "revoke", str(path), stolen.signer_id]) == 0
    assert path.read_text() == before
    assert main(["keys", "revoke", str(path), "snothere"]) == 1
    assert "not in this keyring" in capsys.readouterr().err
    assert path.read_text() == before


def test_revoke_all_after_the_whole_file_leaked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    Keyring.generate().rotate().save(path)
    leaked = Keyring.from_file(path)
    assert main(["keys", "revoke", str(path)]) == 2  # nothing named
    assert main(["keys", "revoke", str(path), "--all"]) == 0
    fixed = Keyring.from_file(path)
    assert len(fixed.revoked_ids) == 4
    assert not set(fixed.key_ids) & set(leaked.key_ids)
    assert not set(fixed.trusted_signers) & set(leaked.trusted_signers)
    text = path.read_text()
    for key in leaked.to_dict()["encryption"]["keys"].values():
        assert key not in text
    forged = seal_job(
        leaked,
        job_id="f" * 32,
        app="a",
        task="t",
        queue="q",
        payload=b"{}",
        principal=None,
        meta=JobMeta(),
        issued_at=1.0,
        not_before=1.0,
        expires_at=2.0,
    )
    with pytest.raises(RevokedKey):
        open_job(forged, fixed, app="a", tasks={"t"}, now=1.0)


def test_revoke_refuses_an_insecure_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    keyring = Keyring.generate()
    keyring.save(path)
    path.chmod(0o640)
    assert main(["keys", "revoke", str(path), keyring.active_key_id]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_public_output_cannot_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.json"
    out = tmp_path / "worker.json"
    assert main(["keys", "generate", "--signing", "ed25519", "--out", str(path)]) == 0
    assert main(["keys", "public", str(path), "--out", str(out)]) == 0
    public = Keyring.from_file(out)
    assert not public.can_sign
    with pytest.raises(KeyringError):
        public.sign(b"x")
    full = Keyring.from_file(path)
    assert full.signer_id is not None
    assert public.trusts(full.signer_id)
    capsys.readouterr()
    assert main(["keys", "public", str(path)]) == 0
    printed = Keyring.from_json(capsys.readouterr().out)
    assert not printed.can_sign


def test_public_refuses_hmac_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    assert main(["keys", "generate", "--out", str(path)]) == 0
    capsys.readouterr()
    assert main(["keys", "public", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ed25519" in captured.err
    assert "both signs and verifies" in captured.err


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys", "--help"], ["keys", "public", "--help"], ["keys", "generate", "-h"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    text = capsys.readouterr().out
    assert "split trust" in text
    assert "hmac-sha256" in text
    assert main(["keys"]) == 2


def test_module_runs_standalone(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    proc = subprocess.run(
        [sys.executable, "-m", "vaultq.cli_keys", "keys", "generate", "--signing", "ed25519"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1
    Keyring.from_json(proc.stdout).save(path)
    proc = subprocess.run(
        [sys.executable, "-m", "vaultq.cli_keys", "keys", "public", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not Keyring.from_json(proc.stdout).can_sign


@pytest.mark.parametrize("action", ["rotate", "public", "revoke"])
def test_cli_refuses_a_key_file_with_a_small_order_verify_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    """A verify key someone pasted into the file by hand (there is no `keys add`): the
    identity point, under which any signature R = identity, S = 0 verifies. Every
    `vaultq keys` command refuses the file with the reason, and leaves it as it was."""
    full = Keyring.generate(signing="ed25519")
    doc = full.to_dict()
    doc["verify"] = {"s00000009": {"alg": "ed25519", "key": "AQ" + "A" * 41}}  # 01 00 .. 00
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    before = path.read_text()
    args = {"rotate": [str(path)], "public": [str(path)], "revoke": [str(path), "s00000009"]}
    assert main(["keys", action, *args[action]]) != 0
    err = capsys.readouterr().err
    assert "ed25519 verify key s00000009 is a point of small order" in err
    assert path.read_text() == before
