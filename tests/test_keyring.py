"""Keyring: formats, loaders, file permissions, rotation, split trust, no key leaks."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vaultq.envelope import JobMeta, ResultBody, open_job, open_result, seal_job, seal_result
from vaultq.errors import InsecureKeyFile, KeyringError, RevokedKey, UntrustedSigner
from vaultq.keyring import Keyring

NOW = 1_700_000_000.0


def key_material(keyring: Keyring) -> list[str]:
    """Every base64url key string in the keyring's JSON."""
    doc = keyring.to_dict()
    found = list(doc["encryption"]["keys"].values())
    found += [e["key"] for e in doc["signing"]["keys"].values()]
    found += [e["key"] for e in doc["verify"].values()]
    return found


def seal(keyring: Keyring, job_id: str = "0" * 32) -> bytes:
    return seal_job(
        keyring,
        job_id=job_id,
        app="shop",
        task="refund",
        queue="default",
        payload=b"{}",
        principal=None,
        meta=JobMeta(),
        issued_at=NOW,
        not_before=NOW,
        expires_at=NOW + 3600,
    )


def opens(data: bytes, keyring: Keyring) -> bool:
    return open_job(data, keyring, app="shop", tasks={"refund"}, now=NOW).header.app == "shop"


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_generate(alg: Any) -> None:
    keyring = Keyring.generate(signing=alg)
    assert keyring.can_sign
    assert keyring.signing_algorithm == alg
    assert re.fullmatch(r"k[0-9a-f]{8}", keyring.active_key_id)
    assert keyring.signer_id is not None
    assert re.fullmatch(r"s[0-9a-f]{8}", keyring.signer_id)
    assert keyring.trusts(keyring.signer_id)
    assert not keyring.trusts("s00000000")
    assert keyring.key_ids == (keyring.active_key_id,)
    other = Keyring.generate(signing=alg)
    assert key_material(other) != key_material(keyring)


def test_generate_rejects_unknown_algorithm() -> None:
    with pytest.raises(KeyringError):
        Keyring.generate(signing="rsa")  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_json_round_trip_keeps_keys(alg: Any) -> None:
    keyring = Keyring.generate(signing=alg)
    text = keyring.to_json()
    doc = json.loads(text)
    assert doc["version"] == 1
    assert set(doc) == {"version", "encryption", "signing", "verify"}
    again = Keyring.from_json(text)
    assert again.to_json() == text
    assert opens(seal(keyring), again)
    assert opens(seal(again), keyring)
    assert Keyring.from_dict(doc).to_json() == text
    assert Keyring.from_json(text.encode()).to_json() == text


def test_repr_str_and_errors_never_show_key_material() -> None:
    for keyring in (Keyring.generate(), Keyring.generate(signing="ed25519").rotate()):
        for text in (repr(keyring), str(keyring), f"{keyring}"):
            assert keyring.active_key_id in text
            for key in key_material(keyring):
                assert key not in text
                assert key[:12] not in text
    keyring = Keyring.generate()
    doc = keyring.to_dict()
    short = doc["encryption"]["keys"][keyring.active_key_id][:20]
    doc["encryption"]["keys"][keyring.active_key_id] = short
    with pytest.raises(KeyringError) as info:
        Keyring.from_dict(doc)
    assert short not in str(info.value)
    assert "32 bytes" in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d["encryption"].update(active="knothere"), "encryption.active"),
        (lambda d: d["signing"].update(active="snothere"), "signing.active"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d["encryption"]["keys"].update({"bad id!": "AAAA"}), "key id"),
        (lambda d: d["encryption"]["keys"].update({"k2": "not*base64"}), "base64url"),
        (lambda d: d["signing"]["keys"][d["signing"]["active"]].update(alg="rsa"), "alg"),
        (lambda d: d["verify"].update({"v1": {"alg": "ed25519", "key": "AAAA"}}), "32-byte"),
        (lambda d: d.pop("encryption"), "encryption"),
    ],
)
def test_invalid_documents(mutate: Any, message: str) -> None:
    doc = Keyring.generate().to_dict()
    mutate(doc)
    with pytest.raises(KeyringError, match=message):
        Keyring.from_dict(doc)
    with pytest.raises(KeyringError):
        Keyring.from_json(json.dumps(doc))


def test_invalid_json_text() -> None:
    with pytest.raises(KeyringError):
        Keyring.from_json("{not json")
    with pytest.raises(KeyringError):
        Keyring.from_json(b'{"version":"\xff"}')


def test_id_listed_as_signing_and_verify_is_refused() -> None:
    ed = Keyring.generate(signing="ed25519")
    doc = ed.to_dict()
    doc["verify"] = ed.public().to_dict()["verify"]
    with pytest.raises(KeyringError, match="both"):
        Keyring.from_dict(doc)


# --- files and environment --------------------------------------------------------------


def test_save_is_0600_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("old")
    path.chmod(0o644)
    keyring = Keyring.generate()
    keyring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.from_file(path).to_json() == keyring.to_json()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]  # no temp left behind


def test_save_into_missing_directory_is_keyring_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot write"):
        Keyring.generate().save(tmp_path / "missing" / "keys.json")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o610])
def test_from_file_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.json"
    keyring = Keyring.generate()
    keyring.save(path)
    path.chmod(mode)
    with pytest.raises(InsecureKeyFile) as info:
        Keyring.from_file(path)
    assert "chmod 600" in str(info.value)
    for key in key_material(keyring):
        assert key not in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_from_file_accepts_owner_only(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.json"
    Keyring.generate().save(path)
    path.chmod(mode)
    assert Keyring.from_file(path).can_sign


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="cannot open"):
        Keyring.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1}')
    bad.chmod(0o600)
    with pytest.raises(KeyringError, match="bad.json"):
        Keyring.from_file(bad)


def test_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keyring = Keyring.generate()
    monkeypatch.setenv("VAULTQ_KEYS", keyring.to_json())
    assert Keyring.from_env().to_json() == keyring.to_json()
    path = tmp_path / "keys.json"
    keyring.save(path)
    monkeypatch.setenv("MY_KEYS", f"@{path}")
    assert Keyring.from_env("MY_KEYS").to_json() == keyring.to_json()
    path.chmod(0o644)
    with pytest.raises(InsecureKeyFile):
        Keyring.from_env("MY_KEYS")
    monkeypatch.delenv("VAULTQ_KEYS")
    with pytest.raises(KeyringError, match="VAULTQ_KEYS is not set"):
        Keyring.from_env()
    monkeypatch.setenv("VAULTQ_KEYS", "garbage")
    with pytest.raises(KeyringError, match="VAULTQ_KEYS"):
        Keyring.from_env()


# --- rotation ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_rotation_keeps_old_jobs_readable(alg: Any) -> None:
    old = Keyring.generate(signing=alg)
    old_job = seal(old)
    new = old.rotate()
    assert new.active_key_id != old.active_key_id
    assert new.signer_id != old.signer_id
    assert new.signing_algorithm == alg
    assert set(new.key_ids) == {old.active_key_id, new.active_key_id}
    assert old.signer_id is not None
    assert new.trusts(old.signer_id)
    assert opens(old_job, new)
    new_job = seal(new)
    with pytest.raises(Exception, match="key|signer"):
        opens(new_job, old)  # old keyrings cannot read jobs sealed with new keys
    assert opens(new_job, new.rotate())


def test_rotate_verify_only_is_refused() -> None:
    with pytest.raises(KeyringError, match="verify-only"):
        Keyring.generate(signing="ed25519").public().rotate()


def test_rotated_keyring_survives_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keyring = Keyring.generate().rotate().rotate()
    keyring.save(path)
    again = Keyring.from_file(path)
    assert again.key_ids == keyring.key_ids
    assert again.trusted_signers == keyring.trusted_signers
    assert again.active_key_id == keyring.active_key_id


# --- split trust ------------------------------------------------------------------------


def test_public_keyring_cannot_sign() -> None:
    full = Keyring.generate(signing="ed25519").rotate()
    public = full.public()
    assert not public.can_sign
    assert public.signer_id is None
    assert public.signing_algorithm is None
    assert public.key_ids == full.key_ids
    assert public.trusted_signers == full.trusted_signers
    with pytest.raises(KeyringError, match="verify-only"):
        public.sign(b"data")
    with pytest.raises(KeyringError, match="verify-only"):
        seal(public)
    private_keys = [e["key"] for e in full.to_dict()["signing"]["keys"].values()]
    text = public.to_json()
    for key in private_keys:
        assert key not in text
    assert json.loads(text)["signing"] == {"active": None, "keys": {}}
    # Exporting the public keyring again is stable.
    assert public.public().to_json() == text


def test_hmac_public_is_refused_with_explanation() -> None:
    with pytest.raises(KeyringError) as info:
        Keyring.generate().public()
    message = str(info.value)
    assert "hmac" in message
    assert "ed25519" in message
    assert "both signs and verifies" in message


def test_ed25519_split_trust_end_to_end() -> None:
    producer = Keyring.generate(signing="ed25519")
    worker = producer.public()
    data = seal(producer, job_id="a" * 32)
    job = open_job(data, worker, app="shop", tasks={"refund"}, now=NOW)
    assert job.header.signer_id == producer.signer_id
    result = seal_result(worker, job.header, ResultBody(status="succeeded"), now=NOW)
    assert open_result(result, producer, app="shop", job_id="a" * 32).status == "succeeded"
    # A worker key file alone cannot produce a job another worker accepts.
    with pytest.raises(KeyringError):
        seal(worker)


def test_sign_and_verify_use_receivers_algorithm() -> None:
    ed = Keyring.generate(signing="ed25519")
    signature = ed.sign(b"message")
    assert len(signature) == 64
    assert ed.signer_id is not None
    assert ed.verify(ed.signer_id, b"message", signature)
    assert not ed.verify(ed.signer_id, b"other", signature)
    assert not ed.verify("s-unknown", b"message", signature)
    assert ed.signer_algorithm(ed.signer_id) == "ed25519"
    hm = Keyring.generate()
    assert hm.signer_id is not None
    assert len(hm.sign(b"m")) == 32
    assert hm.verify(hm.signer_id, b"m", hm.sign(b"m"))
    assert not hm.verify(hm.signer_id, b"m", bytes(32))


def test_keyring_file_written_by_save_is_private_even_with_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "k.json"
        Keyring.generate().save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- revocation -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_revoked_signing_key_cannot_forge_jobs_or_results(alg: Any) -> None:
    """The attack: a thief holds the signing key (and, with it, every old encryption
    key). Rotation alone left the stolen key trusted; revocation does not."""
    stolen = Keyring.generate(signing=alg)
    assert stolen.signer_id is not None
    rotated = stolen.rotate()
    forged = seal(stolen, job_id="f" * 32)
    assert opens(forged, rotated)  # rotation is not revocation
    fixed = rotated.revoke(stolen.signer_id)
    assert fixed.is_revoked(stolen.signer_id)
    assert stolen.signer_id not in fixed.trusted_signers
    with pytest.raises(RevokedKey):
        opens(forged, fixed)
    job = open_job(seal(fixed, job_id="a" * 32), fixed, app="shop", tasks={"refund"}, now=NOW)
    forged_result = seal_result(stolen, job.header, ResultBody(status="succeeded"), now=NOW)
    with pytest.raises(RevokedKey):
        open_result(forged_result, fixed, app="shop", job_id="a" * 32)
    # the split-trust worker keyring exported afterwards refuses it too
    if alg == "ed25519":
        with pytest.raises(RevokedKey):
            opens(forged, fixed.public())


def test_revoked_encryption_key_refuses_jobs_and_aead_only_results() -> None:
    """The attack: a thief holds an encryption key. Without a signing key they cannot
    forge jobs, but they could seal AEAD-only results (signer "") that producers used to
    accept under any key of the keyring."""
    full = Keyring.generate(signing="ed25519")
    thief = full.public()  # what a compromised split-trust worker holds
    job = open_job(seal(full, job_id="b" * 32), thief, app="shop", tasks={"refund"}, now=NOW)
    forged = seal_result(thief, job.header, ResultBody(status="succeeded"), now=NOW)
    assert open_result(forged, full, app="shop", job_id="b" * 32).status == "succeeded"
    fixed = full.revoke(full.active_key_id)
    assert fixed.active_key_id != full.active_key_id  # a new active key replaces it
    assert full.active_key_id not in fixed.key_ids
    with pytest.raises(RevokedKey):
        open_result(forged, fixed, app="shop", job_id="b" * 32)
    with pytest.raises(RevokedKey):  # jobs sealed under it, even properly signed
        opens(seal(full, job_id="c" * 32), fixed)
    assert opens(seal(fixed, job_id="d" * 32), fixed.public())


def test_unsigned_results_only_under_the_active_key() -> None:
    """A rotated-out (not yet revoked) key no longer authenticates AEAD-only results."""
    full = Keyring.generate(signing="ed25519")
    worker = full.public()
    job = open_job(seal(full, job_id="e" * 32), worker, app="shop", tasks={"refund"}, now=NOW)
    old_result = seal_result(worker, job.header, ResultBody(status="succeeded"), now=NOW)
    rotated = full.rotate()
    with pytest.raises(UntrustedSigner, match="active encryption key"):
        open_result(old_result, rotated, app="shop", job_id="e" * 32)
    new_result = seal_result(rotated.public(), job.header, ResultBody(status="ok"), now=NOW)
    assert open_result(new_result, rotated, app="shop", job_id="e" * 32).status == "ok"
    # signed results under an older key still open: the signature authenticates them
    signed = seal_result(full, job.header, ResultBody(status="signed"), now=NOW)
    assert open_result(signed, rotated, app="shop", job_id="e" * 32).status == "signed"


def test_revoked_id_is_refused_even_if_its_key_is_still_listed() -> None:
    """Merging an old copy of the file back must not resurrect a revoked key."""
    old = Keyring.generate().rotate()
    victim = [k for k in old.key_ids if k != old.active_key_id][0]
    doc = old.to_dict()
    doc["revoked"] = [victim]  # material still present under encryption.keys
    merged = Keyring.from_dict(doc)
    assert merged.cipher(victim) is None
    assert victim not in merged.key_ids
    assert merged.is_revoked(victim)
    assert opens(seal(old), merged)  # sealed under the active key, which is not revoked


def test_revocation_survives_save_load_rotate_and_public(tmp_path: Path) -> None:
    full = Keyring.generate(signing="ed25519")
    assert full.signer_id is not None
    old_signer, old_key = full.signer_id, full.active_key_id
    revoked = full.revoke(old_signer).revoke(old_key)
    assert revoked.revoked_ids == tuple(sorted({old_signer, old_key}))
    assert revoked.signer_id not in (None, old_signer)
    path = tmp_path / "keys.json"
    revoked.save(path)
    text = path.read_text()
    assert json.loads(text)["revoked"] == sorted([old_signer, old_key])
    for key in key_material(full):
        assert key not in text  # the revoked material is gone from the file
    again = Keyring.from_file(path)
    assert again.revoked_ids == revoked.revoked_ids
    assert again.rotate().revoked_ids == revoked.revoked_ids
    assert again.public().revoked_ids == revoked.revoked_ids
    assert again.revoke(old_key).to_json() == again.to_json()  # idempotent
    # files without revocations keep the exact old format
    assert "revoked" not in Keyring.generate().to_dict()


def test_revoke_errors() -> None:
    keyring = Keyring.generate(signing="ed25519")
    with pytest.raises(KeyringError, match="not in this keyring"):
        keyring.revoke("knothere")
    with pytest.raises(KeyringError, match="key id"):
        keyring.revoke("bad id!")
    public = keyring.public()
    with pytest.raises(KeyringError, match="full keyring") as refused:
        public.revoke(public.active_key_id)
    assert _frames_hold(refused.value, _secrets_of(keyring.to_dict())) == []
    assert keyring.signer_id is not None
    assert public.revoke(keyring.signer_id).trusted_signers == ()  # workers may distrust now
    doc = keyring.to_dict()
    doc["revoked"] = [keyring.active_key_id]
    with pytest.raises(KeyringError, match="encryption.active names revoked key"):
        Keyring.from_dict(doc)


# --- weaknesses: hmac verify entries, key material in traceback frames -------------------


def test_hmac_verify_entries_are_refused() -> None:
    """The attack: a 'verify-only' keyring holding an hmac secret under verify. Anyone
    handed that "public" file could sign jobs its holders accept."""
    hm = Keyring.generate()
    assert hm.signer_id is not None
    entry = hm.to_dict()["signing"]["keys"][hm.signer_id]
    doc = Keyring.generate(signing="ed25519").public().to_dict()
    doc["verify"]["s-shared"] = entry
    with pytest.raises(KeyringError, match="hmac-sha256 secret.*cannot be a verify-only entry"):
        Keyring.from_dict(doc)


def _invalid_documents() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for name, mutate in [
        ("short aes key", lambda d: d["encryption"]["keys"].update({"kbad": "AAAA"})),
        ("bad base64", lambda d: d["encryption"]["keys"].update({"kbad": "*" * 43})),
        ("unknown field", lambda d: d.update(extra=1)),
        ("hmac verify", lambda d: d["verify"].update({"v": d["signing"]["keys"]["sx"]})),
        ("revoked active", lambda d: d.update(revoked=[d["encryption"]["active"]])),
        (
            "short hmac",
            lambda d: d["signing"]["keys"].update({"sy": {"alg": "hmac-sha256", "key": "AAAA"}}),
        ),
    ]:
        full = Keyring.generate().to_dict()
        signer = full["signing"]["active"]
        full["signing"]["keys"]["sx"] = full["signing"]["keys"][signer]
        mutate(full)
        cases.append((name, full))
    return cases


def _secrets_of(doc: dict[str, Any]) -> list[str]:
    found = list(doc["encryption"]["keys"].values())
    found += [e["key"] for e in doc["signing"]["keys"].values()]
    found += [e["key"] for e in doc.get("verify", {}).values()]
    return [k for k in found if len(k) >= 40]


def _frames_hold(exc: BaseException, secrets: list[str]) -> list[str]:
    """Names of locals, in vaultq's frames of ``exc``'s traceback (and of any chained
    exception's), whose value or repr contains one of ``secrets``."""
    hits = []
    seen: BaseException | None = exc
    while seen is not None:
        tb = seen.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if "/vaultq/" in frame.f_code.co_filename:
                for name, value in frame.f_locals.items():
                    text = value.decode("latin-1") if isinstance(value, bytes) else repr(value)
                    if any(s in text for s in secrets):
                        hits.append(f"{frame.f_code.co_name}.{name}")
            tb = tb.tb_next
        seen = seen.__cause__ or seen.__context__
    return hits


@pytest.mark.parametrize(("name", "doc"), _invalid_documents(), ids=lambda v: str(v)[:20])
def test_loader_errors_leave_no_key_material_in_traceback_frames(
    name: str, doc: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sentry and Django's debug page record the locals of every frame of a traceback;
    a parse error must not hand them the keyring."""
    secrets = _secrets_of(doc)
    assert secrets
    text = json.dumps(doc)
    path = tmp_path / "keys.json"
    path.write_text(text)
    path.chmod(0o600)
    monkeypatch.setenv("VQTEST_KEYS_JSON", text)
    loaders = [
        lambda: Keyring.from_json(text),
        lambda: Keyring.from_json(text.encode()),
        lambda: Keyring.from_dict(doc),
        lambda: Keyring.from_file(path),
        lambda: Keyring.from_env("VQTEST_KEYS_JSON"),
    ]
    for load in loaders:
        with pytest.raises(KeyringError) as info:
            load()
        assert _frames_hold(info.value, secrets) == [], name
        assert info.value.__context__ is None
        for secret in secrets:
            assert secret not in str(info.value)


def test_key_documents_repr_redacts_keys() -> None:
    from vaultq.keyring import KeyringDoc

    keyring = Keyring.generate(signing="ed25519")
    doc = msgspec.convert(keyring.to_dict(), KeyringDoc)
    for key in key_material(keyring):
        assert key not in repr(doc)
        assert key not in repr(doc.signing)
        assert key not in repr(doc.encryption)
