"""Key files and private directories: what a second local user can and cannot do.

The tests run as root (CI and the dev container), so "another user" is uid 65534
(nobody), given files and directories with ``os.chown``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import vaultq
from vaultq.brokers.sqlite import SqliteBroker
from vaultq.errors import InsecureKeyFile
from vaultq.keyring import Keyring, load_or_create_file

OTHER_UID = 65534

needs_root = pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0, reason="chown to another uid needs root"
)
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX ownership and modes")


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_root
def test_swapped_key_file_of_another_user_is_refused(tmp_path: Path) -> None:
    """The attack: a directory others can write to, and user 65534 renames their own
    keyring (mode 0600, so the mode check alone passed it) over ours."""
    shared = tmp_path / "shared"
    shared.mkdir()
    ours = shared / "vaultq.keys"
    Keyring.generate().save(ours)
    assert Keyring.from_file(ours).can_sign
    shared.chmod(0o777)  # what mkdir under umask 000 used to give
    attacker = Keyring.generate()
    swapped = shared / ".swap"
    attacker.save(swapped)
    os.chown(swapped, OTHER_UID, OTHER_UID)
    os.replace(swapped, ours)
    with pytest.raises(InsecureKeyFile, match=rf"owned by uid {OTHER_UID}.*chown 0 ") as info:
        Keyring.from_file(ours)
    assert str(ours) in str(info.value)


@needs_root
def test_file_of_another_user_is_refused_even_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    Keyring.generate().save(path)
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(InsecureKeyFile, match="owned by uid 65534"):
        Keyring.from_file(path)
    with pytest.raises(InsecureKeyFile):  # the @file form of VAULTQ_KEYS too
        os.environ["VQTEST_KEYFILE"] = f"@{path}"
        try:
            Keyring.from_env("VQTEST_KEYFILE")
        finally:
            del os.environ["VQTEST_KEYFILE"]
    os.chown(path, 0, -1)
    assert Keyring.from_file(path).can_sign


@pytest.mark.parametrize("dir_mode", [0o777, 0o775, 0o757, 0o722, 0o770])
def test_key_file_in_a_directory_others_can_write_is_refused(tmp_path: Path, dir_mode: int) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "keys.json"
    Keyring.generate().save(path)
    directory.chmod(dir_mode)
    with pytest.raises(
        InsecureKeyFile, match=rf"writable by group or others.*chmod go-w {directory}"
    ):
        Keyring.from_file(path)


def test_writable_grandparent_is_refused_too(tmp_path: Path) -> None:
    """Whoever can write the grandparent can rename the whole parent away and put their
    own directory (with their own key file) in its place."""
    top = tmp_path / "top"
    inner = top / "inner"
    inner.mkdir(parents=True)
    path = inner / "keys.json"
    Keyring.generate().save(path)
    inner.chmod(0o700)
    top.chmod(0o777)
    with pytest.raises(InsecureKeyFile, match=f"directory {top} "):
        Keyring.from_file(path)


@needs_root
def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    path = directory / "keys.json"
    Keyring.generate().save(path)
    os.chown(directory, OTHER_UID, -1)
    with pytest.raises(InsecureKeyFile, match=f"directory {directory} .*owned by uid 65534"):
        Keyring.from_file(path)


@needs_root
def test_sticky_root_owned_directory_like_tmp_is_accepted(tmp_path: Path) -> None:
    """In a sticky directory only an entry's owner can rename or delete it, so /tmp-like
    directories (1777, root) do not let others swap our own private subdirectory."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    mine = sticky / "mine"
    mine.mkdir(mode=0o700)
    path = mine / "keys.json"
    Keyring.generate().save(path)
    assert Keyring.from_file(path).can_sign
    # ...but a file directly in it that another user owns is still refused
    theirs = sticky / "keys.json"
    Keyring.generate().save(theirs)
    os.chown(theirs, OTHER_UID, -1)
    with pytest.raises(InsecureKeyFile, match="owned by uid"):
        Keyring.from_file(theirs)


def test_symlinked_key_file_is_judged_where_it_points(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    Keyring.generate().save(private / "keys.json")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    # the link sits in a directory anyone can write: anyone could re-point it
    (open_dir / "keys.json").symlink_to(private / "keys.json")
    with pytest.raises(InsecureKeyFile, match=f"directory {open_dir} "):
        Keyring.from_file(open_dir / "keys.json")
    link_dir = tmp_path / "links"
    link_dir.mkdir(mode=0o700)
    (link_dir / "keys.json").symlink_to(private / "keys.json")
    assert Keyring.from_file(link_dir / "keys.json").can_sign


def test_generated_key_file_and_directories_are_private_under_umask_000(
    tmp_path: Path, loose_umask: None
) -> None:
    path = tmp_path / "a" / "b" / "vaultq.keys"
    keyring, created = load_or_create_file(path)
    assert created
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700
    assert mode(path) == 0o600
    again, created_again = load_or_create_file(path)
    assert not created_again
    assert again.to_json() == keyring.to_json()


@pytest.mark.anyio
async def test_embedded_broker_directories_are_0700_under_umask_000(
    tmp_path: Path, loose_umask: None, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim in docs/sqlite.md: the database's directory and the key file's are
    0700, parents vaultq creates included, whatever the umask."""
    monkeypatch.delenv("VAULTQ_KEYS", raising=False)
    db = tmp_path / "state" / "q" / "jobs.db"
    app = vaultq.App(unique_name, broker=f"sqlite:///{db}")

    @app.task(name="t.noop")
    async def noop(job: vaultq.Principal) -> None:
        return None

    try:
        await noop.enqueue(vaultq.Principal("p"))
        assert mode(tmp_path / "state") == 0o700
        assert mode(tmp_path / "state" / "q") == 0o700
        assert mode(db) == 0o600
        assert mode(db.with_suffix(".keys")) == 0o600
    finally:
        await app.aclose()


@pytest.mark.anyio
async def test_sqlite_broker_parent_directories_are_0700_under_umask_000(
    tmp_path: Path, loose_umask: None
) -> None:
    db = tmp_path / "x" / "y" / "q.db"
    broker = SqliteBroker(f"sqlite:///{db}", namespace="n")
    await broker.connect()
    try:
        assert mode(tmp_path / "x") == 0o700
        assert mode(tmp_path / "x" / "y") == 0o700
    finally:
        await broker.close()
