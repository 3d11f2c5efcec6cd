"""The web console's routes: its pages, the login that issues the session, its static files.

The pages are server-rendered shells (Jinja2); the browser fills them from the service's own
public and admin APIs (`/metrics`, `/v1/models`, `/v1/classify`, `/v1/detect`, `/admin/...`)
with the session cookie and its CSRF token (`serving.session`), so the console can do nothing
a client of those APIs cannot. Every console answer carries the security headers below: no inline
script or style is ever needed, so the CSP allows scripts and styles from this origin only.
"""

from __future__ import annotations

import hmac
import mimetypes
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from serving import session
from serving.admin import admin_token
from serving.settings import ServingSettings

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
LOGIN_COOKIE = "imgserve_console_login"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Page:
    path: str
    template: str
    title: str


PAGES = (
    Page("", "overview.html", "Overview"),
    Page("/try", "try.html", "Try it"),
    Page("/models", "models.html", "Models"),
    Page("/monitoring", "monitoring.html", "Monitoring"),
    Page("/review", "review.html", "Review"),
    Page("/retrain", "retrain.html", "Retrain"),
    Page("/rollout", "rollout.html", "Rollout"),
)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file under static/, read once: the console's assets are small and fixed."""
    found = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if media_type.startswith("text/") or media_type.endswith("javascript"):
                media_type += "; charset=utf-8"
            found[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), media_type)
    return found


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def console_router(settings: ServingSettings) -> APIRouter:
    token = admin_token(settings)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    static = _static_files()
    router = APIRouter(prefix="/console", include_in_schema=False)

    def session_of(request: Request) -> str | None:
        cookie = request.cookies.get(session.COOKIE)
        if token is not None and session.valid(token, cookie, settings.console_session_s):
            return cookie
        return None

    def render(
        request: Request, template: str, title: str, status: int = 200, **context: Any
    ) -> Response:
        cookie = session_of(request)
        csrf = None if cookie is None or token is None else session.csrf_token(token, cookie)
        response = templates.TemplateResponse(
            request,
            template,
            {
                "title": title,
                "pages": PAGES,
                "path": request.url.path,
                "logged_in": cookie is not None,
                "csrf": csrf,
                "models": settings.models,
                "admin_configured": token is not None,
                **context,
            },
            status_code=status,
        )
        response.headers["Cache-Control"] = "no-store"
        return secured(response)

    def page_route(page: Page) -> Callable[[Request], Awaitable[Response]]:
        async def show(request: Request) -> Response:
            if not settings.console_open and session_of(request) is None:
                return secured(RedirectResponse(_login_url(request.url.path), 303))
            return render(request, page.template, page.title)

        return show

    for page in PAGES:
        router.add_api_route(page.path or "", page_route(page), methods=["GET"])

    def login_page(request: Request, then: str, status: int = 200, error: str = "") -> Response:
        # The form's nonce, also in a cookie: a login posted from another site has neither.
        nonce = secrets.token_urlsafe(32)
        response = render(
            request, "login.html", "Log in", status, nonce=nonce, then=_local(then), error=error
        )
        _set_cookie(response, LOGIN_COOKIE, nonce, 600, settings.console_secure_cookie)
        return response

    @router.get("/login")
    async def login_form(
        request: Request, then: Annotated[str, Query(alias="next", max_length=512)] = "/console"
    ) -> Response:
        return login_page(request, then)

    @router.post("/login")
    async def login(
        request: Request,
        credential: Annotated[str, Form(max_length=4096)] = "",
        nonce: Annotated[str, Form(max_length=128)] = "",
        then: Annotated[str, Form(alias="next", max_length=512)] = "/console",
    ) -> Response:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(nonce.encode(), expected.encode()):
            return login_page(request, then, 400, "the login form expired: send it again")
        if token is None:
            return login_page(request, then, 403, "no admin credential is configured")
        if not hmac.compare_digest(credential.encode(), token.encode()):
            return login_page(request, then, 403, "the admin credential is wrong")
        response = secured(RedirectResponse(_local(then), 303))
        _set_cookie(
            response,
            session.COOKIE,
            session.issue(token),
            int(settings.console_session_s),
            settings.console_secure_cookie,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/console")
        return response

    @router.post("/logout")
    async def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        cookie = session_of(request)
        if cookie is None or token is None or not session.csrf_valid(token, cookie, csrf):
            return secured(Response("no valid session to end", 403, media_type="text/plain"))
        response = secured(RedirectResponse("/console", 303))
        response.delete_cookie(session.COOKIE, path="/")
        return response

    @router.get("/static/{name:path}")
    async def asset(name: str) -> Response:
        found = static.get(name)
        if found is None:
            return secured(Response("no such file", 404, media_type="text/plain"))
        content, media_type = found
        response = Response(content, media_type=media_type)
        response.headers["Cache-Control"] = "no-cache"
        return secured(response)

    return router


def _local(target: str) -> str:
    """Only a console path is a place to go after login: never another origin."""
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


def _login_url(path: str) -> str:
    return f"/console/login?next={quote(_local(path))}"


def _set_cookie(response: Response, name: str, value: str, max_age_s: int, secure: bool) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        path="/" if name == session.COOKIE else "/console",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConsoleAtRoot:
    """`GET /` goes to the console: ASGI around the served app, which answers `/` itself
    (BentoML's generic page) before a mounted app sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            await secured(RedirectResponse("/console", 307))(scope, receive, send)
            return
        await self.app(scope, receive, send)
