"""The Django view: the site's user, permissions and CSRF token around the shared
dashboard request handler (:func:`vaultq.dashboard.views.handle`)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.views.decorators.csrf import csrf_protect

from vaultq.dashboard import pages, views
from vaultq.dashboard.html import el

__all__ = ["PERMISSIONS", "dashboard"]

PERMISSIONS = {
    "view": "vaultq_dashboard.view_dashboard",
    "operate": "vaultq_dashboard.operate_dashboard",
    "decrypt": "vaultq_dashboard.decrypt_job",
}


def _reply(r: views.Reply) -> HttpResponse:
    resp = HttpResponse(r.body, status=r.status, content_type=r.content_type)
    for key, value in views.security_headers().items():
        resp[key] = value
    return resp


def _allow_decrypt() -> bool:
    from vaultq.django.conf import read_settings

    return read_settings().dashboard_allow_decrypt


# csrf_protect: enforced here even when the site runs without CsrfViewMiddleware.
@csrf_protect  # type: ignore[untyped-decorator]
def dashboard(request: HttpRequest, path: str = "") -> HttpResponse:
    from vaultq.django import get_app

    if path.startswith("static/") and request.method == "GET":
        return _reply(views.static_file(path.removeprefix("static/")))
    user: Any = request.user
    if not user.is_authenticated:
        if request.method == "GET" and not request.headers.get("x-vaultq-poll"):
            return redirect_to_login(request.get_full_path())
        return _reply(views.Reply(401, b"sign in first", "text/plain; charset=utf-8"))
    base = request.path[: len(request.path) - len(path)]
    app = get_app()
    ctx = pages.Context(
        base=base,
        user=f"django:{user.get_username()}",
        can_operate=bool(user.has_perm(PERMISSIONS["operate"])),
        can_decrypt=bool(user.has_perm(PERMISSIONS["decrypt"])),
        csrf_token=get_token(request),
        app=app.name,
    )
    if not (user.is_staff and user.has_perm(PERMISSIONS["view"])):
        page = pages.document(
            ctx, "Not allowed", el("p", "You may not view the vaultq dashboard.", class_="bad")
        )
        return _reply(views.Reply(403, page.encode()))
    form = {k: request.POST.get(k, "") for k in request.POST} if request.method == "POST" else {}
    # The App's own event-loop thread: one broker connection for every request, not one
    # per request's event loop.
    result = app.run_sync(
        views.handle,
        app,
        ctx,
        request.method or "GET",
        path,
        {k: request.GET.get(k, "") for k in request.GET},
        form,
        allow_decrypt=_allow_decrypt(),
    )
    return _reply(result)
