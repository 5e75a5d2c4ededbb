"""The dashboard mounted in a Django site (``include("vaultq.django.dashboard")``): the
site's staff users and permissions, its session and CSRF protection; a real browser
session (the system's Chromium through Playwright) against a live WSGI server while a
real worker (``manage.py vaultq_worker --events``) drains the queue."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vqhelpers import Workers, wait_for

from vaultq import Secret

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = ["", "jobs", "jobs?id=abc", "dead", "workers", "schedules", "api/overview"]
ACTIONS = ["dead/retry", "dead/purge"]
BASE = "/vaultq/"


def _user(name: str, *, staff: bool = True, perms: tuple[str, ...] = ()) -> Any:
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(name + uuid.uuid4().hex[:6], password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="vaultq_dashboard", codename=codename)
        )
    return User.objects.get(pk=user.pk)  # a fresh object: no permission cache


def _client(user: Any | None) -> Any:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def _token(client: Any) -> str:
    """The site's CSRF token (the cookie Django's ``get_token`` set on a dashboard page)."""
    assert client.get(BASE).status_code == 200
    return str(client.cookies["csrftoken"].value)


def test_the_three_permissions_exist() -> None:
    from django.contrib.auth.models import Permission

    found = set(
        Permission.objects.filter(content_type__app_label="vaultq_dashboard").values_list(
            "codename", flat=True
        )
    )
    assert found == {"view_dashboard", "operate_dashboard", "decrypt_job"}


def test_every_page_and_action_refuses_anonymous_and_unpermitted_users() -> None:
    anon = _client(None)
    for path in PAGES:
        reply = anon.get(BASE + path)
        assert reply.status_code == 302 and "/login/" in reply["Location"], path
    for path in ACTIONS:
        assert anon.post(BASE + path, {"queue": "dash", "confirm": "yes"}).status_code in (401, 403)

    # Not staff, or staff without the view permission: 403 on every page.
    for user in (_user("nostaff", staff=False, perms=("view_dashboard",)), _user("noperm")):
        client = _client(user)
        for path in PAGES:
            assert client.get(BASE + path).status_code == 403, path

    viewer = _client(_user("viewer", perms=("view_dashboard",)))
    for path in PAGES:
        reply = viewer.get(BASE + path)
        assert reply.status_code == 200, path
        assert reply["Content-Security-Policy"].startswith("default-src 'none'")
    assert viewer.get(BASE + "dead/confirm?action=purge&queue=dash").status_code == 403
    token = _token(viewer)
    for path in ACTIONS:
        form = {"csrfmiddlewaretoken": token, "queue": "dash", "confirm": "yes", "id": "a"}
        assert viewer.post(BASE + path, form).status_code == 403, path

    operator = _client(_user("op", perms=("view_dashboard", "operate_dashboard")))
    token = _token(operator)
    for path in ACTIONS:
        form = {"queue": "dash", "confirm": "yes", "id": "a"}
        assert operator.post(BASE + path, form).status_code == 403  # no CSRF token
        assert (
            operator.post(BASE + path, {**form, "csrfmiddlewaretoken": "x" * 64}).status_code == 403
        )
    reply = operator.post(
        BASE + "dead/purge", {"csrfmiddlewaretoken": token, "queue": "dash", "confirm": "yes"}
    )
    assert reply.status_code == 200 and b"purged" in reply.content


@contextlib.contextmanager
def live_server() -> Iterator[str]:
    """The site under Uvicorn (Django's ASGI handler) in a thread of this process, so it
    shares the test's database file and settings."""
    import time

    import uvicorn
    from django.core.asgi import get_asgi_application

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        get_asgi_application(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_browser_session_in_django(workers: Workers, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/test.sh does)")
    from vqtestapp.jobs import DashNote, dash

    from vaultq.django import get_app

    app = get_app()
    marker = "PLAINTEXT-" + uuid.uuid4().hex
    ids = [dash.enqueue_sync(DashNote(text=marker, secret=Secret(marker))).id for _ in range(20)]
    failed = dash.enqueue_sync(DashNote(text=marker, secret=Secret(marker), fail=True)).id
    operator = _client(_user("browser", perms=("view_dashboard", "operate_dashboard")))
    session = operator.cookies["sessionid"].value
    responses: list[tuple[str, bytes]] = []
    logging.getLogger("django.request").disabled = True  # 403s of this test are expected
    try:
        with live_server() as root, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1280, "height": 900},
            )  # fmt: skip
            try:
                page = browser.new_page()

                def scan(route: Any) -> None:
                    reply = route.fetch(max_redirects=0)
                    responses.append((route.request.url, reply.body()))
                    route.fulfill(response=reply)

                page.route("**/*", scan)
                page.goto(root + BASE)
                assert "/accounts/login/" in page.url  # the site's own login
                browser.add_cookies([{"name": "sessionid", "value": session, "url": root}])
                page.goto(root + BASE)
                row = page.locator("#queues tr", has_text="dash")
                assert int(row.locator("[data-count=ready]").inner_text()) >= 20
                worker = workers.start("--events", "--queues", "dash", "--health-interval", "1")
                wait_for(lambda: b"vaultq worker " in workers.log(worker).encode(), 60, "worker")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#queues tr')].some(r =>"
                    " r.textContent.startsWith('dash') &&"
                    " r.querySelector('[data-count=ready]').textContent === '0' &&"
                    " r.querySelector('[data-count=running]').textContent === '0')",
                    timeout=60_000,
                )
                page.screenshot(path=str(tmp_path / "django-overview.png"), full_page=True)
                page.goto(root + BASE + "jobs?id=" + failed)
                page.wait_for_selector("#job")
                assert "failed" in page.locator("#job").inner_text()
                page.goto(root + BASE + "dead?queue=dash")
                page.locator("#dead tr", has_text=failed).locator("text=Retry…").click()
                page.click("#confirm")
                assert "re-enqueued" in page.locator("#outcome").inner_text()
                wait_for(
                    lambda: app.run_sync(_dead_count, app) >= 1, 60, "the retried job to fail again"
                )
                page.goto(root + BASE + "dead?queue=dash")
                page.click("text=Purge every dead letter")
                page.click("#confirm")
                assert "purged" in page.locator("#outcome").inner_text()
                page.goto(root + BASE + "jobs?id=" + ids[0])
                assert "succeeded" in page.locator("#job").inner_text()
                assert "reveal=1" not in page.content()  # no decrypt permission
            finally:
                browser.close()
    finally:
        logging.getLogger("django.request").disabled = False
    assert len(responses) > 8
    for address, body in responses:
        assert marker.encode() not in body, f"the plaintext marker leaked in {address}"


def test_decrypt_needs_the_setting_and_the_permission(workers: Workers) -> None:
    from django.conf import settings
    from django.test import override_settings
    from vqtestapp.jobs import DashNote, dash

    shown, hidden = "SHOWN-" + uuid.uuid4().hex, "HIDDEN-" + uuid.uuid4().hex
    handle = dash.enqueue_sync(DashNote(text=shown, secret=Secret(hidden)))
    workers.start("--queues", "dash")
    handle.result_sync(timeout=60)
    reveal = BASE + "jobs?id=" + handle.id + "&reveal=1"
    dec = _client(_user("dec", perms=("view_dashboard", "decrypt_job")))
    op = _client(_user("op", perms=("view_dashboard", "operate_dashboard")))
    assert dec.get(reveal).status_code == 403  # the setting is off
    with override_settings(VAULTQ={**settings.VAULTQ, "DASHBOARD_ALLOW_DECRYPT": True}):
        assert op.get(reveal).status_code == 403  # no decrypt permission
        reply = dec.get(reveal)
    body = reply.content.decode()
    assert reply.status_code == 200 and shown in body
    assert hidden not in body and "Secret(&#x27;***&#x27;)" in body


async def _dead_count(app: Any) -> int:
    broker = await app.broker()
    return int((await broker.stats("dash")).dead)
