"""The broker registry: URL schemes registered in one place, through the ``vaultq.brokers``
entry point group (vaultq's own brokers too), and capabilities the app reads instead of
broker types."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
from support.packages import THIRDPARTY, installed, write_package

import vaultq
from vaultq.brokers import (
    ENTRY_POINT_GROUP,
    BrokerCapabilities,
    broker_from_url,
    registered_schemes,
)
from vaultq.brokers.redis import RedisBroker
from vaultq.brokers.registry import BUILTIN_BROKERS
from vaultq.brokers.sqlite import SqliteBroker
from vaultq.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_the_builtin_table() -> None:
    """The entry points an installed vaultq declares and the fallback table of an
    un-installed checkout are the same registrations."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == BUILTIN_BROKERS


def test_builtin_schemes() -> None:
    for scheme, cls in [("redis", RedisBroker), ("rediss+cluster", RedisBroker)]:
        assert isinstance(broker_from_url(f"{scheme}://h:1/0", namespace="a"), cls)
    assert isinstance(broker_from_url("SQLITE:///x.db", namespace="a"), SqliteBroker)


def test_unknown_scheme_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigurationError) as err:
        broker_from_url("postgres://db/jobs", namespace="a")
    message = str(err.value)
    assert "'postgres'" in message
    for scheme in BUILTIN_BROKERS:
        assert f"{scheme}://" in message
    assert ENTRY_POINT_GROUP in message


def test_a_url_without_scheme_says_what_to_write() -> None:
    with pytest.raises(ConfigurationError, match="no scheme"):
        broker_from_url("/var/lib/vaultq.db", namespace="a")


def test_an_installed_package_registers_its_scheme() -> None:
    assert "thirdparty" not in registered_schemes()
    with installed(THIRDPARTY):
        assert registered_schemes()["thirdparty"] == "vaultq_thirdparty_broker:ThirdPartyBroker"
        broker = broker_from_url("thirdparty:////tmp/x.db", namespace="a")
        assert type(broker).__name__ == "ThirdPartyBroker"
        assert broker.url == "thirdparty:////tmp/x.db"
        assert broker.capabilities == BrokerCapabilities(
            shared=False, local_path="/tmp/x.db", priorities=True
        )
    with pytest.raises(ConfigurationError, match="thirdparty"):
        broker_from_url("thirdparty:////tmp/x.db", namespace="a")


def test_an_installed_package_cannot_take_a_builtin_scheme(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_package(
        tmp_path,
        "hijack",
        {ENTRY_POINT_GROUP: {"redis": "hijack_mod:Hijack"}},
        {"hijack_mod": "raise SystemExit('the hijacking module was imported')\n"},
    )
    with installed(root), caplog.at_level(logging.WARNING, "vaultq.brokers"):
        assert isinstance(broker_from_url("redis://h:1/0", namespace="a"), RedisBroker)
        assert caplog.text == ""  # the hijacking entry point was not even looked at
        assert registered_schemes()["redis"] == BUILTIN_BROKERS["redis"]
    assert "ignoring the vaultq.brokers entry point 'redis'" in caplog.text


def test_only_the_asked_scheme_is_imported(tmp_path: Path) -> None:
    """Registering does not import: a broken package for another scheme costs nothing
    until an operator's URL names its scheme, and then it fails with a clear error."""
    root = write_package(
        tmp_path,
        "broken",
        {ENTRY_POINT_GROUP: {"broken": "broken_mod:Broker"}},
        {"broken_mod": "raise ImportError('missing dependency of the broken broker')\n"},
    )
    with installed(root):
        assert isinstance(broker_from_url("sqlite:///x.db", namespace="a"), SqliteBroker)
        with pytest.raises(ConfigurationError, match="failed to import.*missing dependency"):
            broker_from_url("broken://x", namespace="a")


def test_two_packages_for_one_scheme_is_an_error(tmp_path: Path) -> None:
    one = write_package(
        tmp_path / "one", "one", {ENTRY_POINT_GROUP: {"dup": "one_mod:B"}}, {"one_mod": ""}
    )
    two = write_package(
        tmp_path / "two", "two", {ENTRY_POINT_GROUP: {"dup": "two_mod:B"}}, {"two_mod": ""}
    )
    with installed(one, two), pytest.raises(ConfigurationError, match="several installed"):
        broker_from_url("dup://x", namespace="a")


def test_a_factory_that_builds_no_broker_is_refused(tmp_path: Path) -> None:
    root = write_package(
        tmp_path,
        "notbroker",
        {ENTRY_POINT_GROUP: {"nb": "nb_mod:NotABroker"}},
        {"nb_mod": "class NotABroker:\n    def __init__(self, url, *, namespace):\n        pass\n"},
    )
    with installed(root), pytest.raises(ConfigurationError, match="does not implement"):
        broker_from_url("nb://x", namespace="a")


# -- capabilities drive the app, not broker types --------------------------------------


def test_capabilities_of_the_builtin_brokers(tmp_path: Path) -> None:
    redis_caps = RedisBroker("redis://h/0", namespace="a").capabilities
    assert redis_caps == BrokerCapabilities(shared=True, priorities=True)
    db = tmp_path / "q.db"
    assert SqliteBroker(f"sqlite:///{db}", namespace="a").capabilities == BrokerCapabilities(
        shared=False, local_path=str(db), priorities=True
    )
    memory = SqliteBroker("sqlite:///:memory:", namespace="a").capabilities
    assert memory == BrokerCapabilities(shared=False, local_path=None, priorities=True)


def test_app_puts_the_key_file_beside_a_third_party_brokers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULTQ_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)
    with installed(THIRDPARTY):
        app = vaultq.App("tp", broker=f"thirdparty:///{tmp_path}/data/jobs.db")
        assert not app.shared_broker
        assert app.keyring.can_sign
    assert (tmp_path / "data" / "jobs.keys").exists()
    assert not (tmp_path / "vaultq.keys").exists()


def test_app_refuses_a_shared_broker_without_keys_whatever_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULTQ_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)
    with installed(THIRDPARTY):
        broker = broker_from_url(f"thirdparty:///{tmp_path}/jobs.db", namespace="x")
    shared = BrokerCapabilities(shared=True)
    monkeypatch.setattr(type(broker), "capabilities", property(lambda self: shared))
    app = vaultq.App("x", broker=broker)
    assert app.shared_broker
    with pytest.raises(ConfigurationError, match="shared broker"):
        _ = app.keyring
    assert list(tmp_path.iterdir()) == []
