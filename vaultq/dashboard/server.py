"""The standalone dashboard: ``vaultq dashboard MODULE`` (extra ``vaultq[dashboard]``).

A Starlette app served by Uvicorn. Every page and action needs a signed-in user
(:mod:`vaultq.dashboard.auth`); every POST needs the session's CSRF token and a
same-origin ``Origin`` when the browser sends one. Responses carry a strict
Content-Security-Policy (:data:`vaultq.dashboard.views.CSP`). The server refuses to
listen on a non-loopback address over plain HTTP unless told TLS is terminated in front
of it (``--behind-tls-proxy``) or given a certificate (``--tls-cert``/``--tls-key``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from vaultq.dashboard import auth, pages, views
from vaultq.errors import ConfigurationError
from vaultq.policy import AUDIT_LOGGER, safe_id

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["check_bind", "create_app", "serve"]

log = logging.getLogger("vaultq.dashboard")
audit = logging.getLogger(AUDIT_LOGGER)

SESSION_COOKIE = "vaultq_session"
LOGIN_COOKIE = "vaultq_login"
_MAX_FORM = 64 * 1024


def check_bind(host: str, *, tls: bool, behind_tls_proxy: bool) -> None:
    """Refuse plain HTTP on an address other machines can reach."""
    if tls or behind_tls_proxy:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            f"refusing to serve the dashboard over plain HTTP on {host}: passwords and session "
            "cookies would cross the network in clear. Bind 127.0.0.1 (and reach it through an "
            "SSH tunnel), give --tls-cert/--tls-key, or pass --behind-tls-proxy when a proxy "
            "in front of it terminates TLS"
        )


def create_app(
    app: App,
    users: dict[str, auth.User],
    *,
    allow_decrypt: bool = False,
    secure_cookies: bool = True,
    session_key: bytes | None = None,
) -> Any:
    """The ASGI app serving ``app``'s dashboard at ``/``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route

    sessions = auth.Sessions(session_key)

    def reply(r: views.Reply) -> Response:
        resp = Response(r.body, status_code=r.status, media_type=r.content_type)
        resp.headers.update(views.security_headers())
        return resp

    def cookie(resp: Response, name: str, value: str, max_age: int | None) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=secure_cookies,
            httponly=True,
            samesite="strict",
        )

    async def form_of(request: Request) -> dict[str, str] | None:
        body = await request.body()
        if len(body) > _MAX_FORM:
            return None
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def login_redirect(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        resp = RedirectResponse("/login?" + _q(next=target), status_code=303)
        resp.headers.update(views.security_headers())
        return resp

    async def login(request: Request) -> Response:
        error = None
        nxt = request.query_params.get("next", "/")
        if request.method == "POST":
            form = await form_of(request) or {}
            nonce = request.cookies.get(LOGIN_COOKIE, "")
            nxt = form.get("next", "/")
            token_ok = bool(nonce) and secrets.compare_digest(
                form.get("csrf", ""), sessions.login_token(nonce)
            )
            if not token_ok or not same_origin(request):
                return reply(
                    views.Reply(
                        403,
                        b"CSRF check failed: reload the sign-in page",
                        "text/plain; charset=utf-8",
                    )
                )
            user = auth.check_login(users, form.get("username", ""), form.get("password", ""))
            if user is not None:
                value, _ = sessions.issue(user.name)
                audit.warning("dashboard login: user=%s", safe_id(user.name))
                resp = RedirectResponse(_local(nxt), status_code=303)
                cookie(resp, SESSION_COOKIE, value, 8 * 3600)
                resp.delete_cookie(LOGIN_COOKIE, path="/")
                resp.headers.update(views.security_headers())
                return resp
            audit.warning("dashboard login refused: user=%s", safe_id(form.get("username", "")))
            error = "Wrong user name or password."
        nonce = secrets.token_urlsafe(16)
        page = pages.login_page(
            "/", error=error, csrf_token=sessions.login_token(nonce), next_url=_local(nxt)
        )
        shown = reply(views.Reply(401 if error else 200, page.encode()))
        cookie(shown, LOGIN_COOKIE, nonce, 3600)
        return shown

    async def logout(request: Request) -> Response:
        session = sessions.read(request.cookies.get(SESSION_COOKIE))
        form = await form_of(request) or {}
        if session is None or not secrets.compare_digest(
            form.get("csrfmiddlewaretoken", ""), session.csrf
        ):
            return reply(views.Reply(403, b"CSRF check failed", "text/plain; charset=utf-8"))
        sessions.end(session)
        audit.warning("dashboard logout: user=%s", safe_id(session.user))
        resp: Response = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        resp.headers.update(views.security_headers())
        return resp

    async def static(request: Request) -> Response:
        return reply(views.static_file(request.path_params["name"]))

    async def page(request: Request) -> Response:
        session = sessions.read(request.cookies.get(SESSION_COOKIE))
        user = users.get(session.user) if session is not None else None
        if session is None or user is None:
            if request.method == "GET" and not request.headers.get("x-vaultq-poll"):
                return login_redirect(request)
            return reply(views.Reply(401, b"sign in first", "text/plain; charset=utf-8"))
        form: dict[str, str] = {}
        if request.method == "POST":
            form = await form_of(request) or {}
            if not secrets.compare_digest(
                form.get("csrfmiddlewaretoken", ""), session.csrf
            ) or not same_origin(request):
                audit.warning(
                    "dashboard CSRF refusal: user=%s path=%s",
                    safe_id(user.name),
                    safe_id(request.url.path),
                )
                return reply(
                    views.Reply(
                        403,
                        b"CSRF check failed: reload the page and try again",
                        "text/plain; charset=utf-8",
                    )
                )
        ctx = pages.Context(
            base="/",
            user=user.name,
            can_operate="operate" in user.permissions,
            can_decrypt="decrypt" in user.permissions,
            csrf_token=session.csrf,
            app=app.name,
            logout="/logout",
        )
        result = await views.handle(
            app,
            ctx,
            request.method,
            request.path_params.get("path", ""),
            dict(request.query_params),
            form,
            allow_decrypt=allow_decrypt,
        )
        return reply(result)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.aclose()

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/{path:path}", page, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _q(**values: str) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


def _local(target: str) -> str:
    """A redirect target on this server only (no ``//evil.example`` open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def serve(
    app: App,
    users: dict[str, auth.User],
    *,
    host: str,
    port: int,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    behind_tls_proxy: bool = False,
    allow_decrypt: bool = False,
    session_key: bytes | None = None,
) -> None:
    """Run the dashboard until interrupted."""
    import uvicorn

    tls = bool(tls_cert and tls_key)
    if bool(tls_cert) != bool(tls_key):
        raise ConfigurationError("give both --tls-cert and --tls-key, or neither")
    check_bind(host, tls=tls, behind_tls_proxy=behind_tls_proxy)
    asgi = create_app(
        app,
        users,
        allow_decrypt=allow_decrypt,
        # Browsers keep Secure cookies on http://127.0.0.1 and localhost (secure contexts).
        secure_cookies=True,
        session_key=session_key,
    )
    log.info(
        "vaultq dashboard: app=%s on %s://%s:%s%s%s",
        app.name,
        "https" if tls else "http",
        host,
        port,
        " (TLS terminated in front)" if behind_tls_proxy else "",
        " decryption ALLOWED for users with 'decrypt'" if allow_decrypt else "",
    )
    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        proxy_headers=behind_tls_proxy,
        server_header=False,
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run()
