"""The console's routes and the admin check's session path, in process (no models loaded):
the login issues the session, the admin API takes it with its CSRF header only, and a closed
console sends every page to the login. The browser test (tests/integration/test_console.py)
runs the same against the real service."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import anyio
import httpx
from pydantic import SecretStr

from serving import session
from serving.app import create_app
from serving.settings import ServingSettings

TOKEN = "unit-console-token"


def client(**settings: object) -> httpx.AsyncClient:
    app = create_app(ServingSettings(admin_token=SecretStr(TOKEN), **settings))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    anyio.run(scenario)


async def login(browser: httpx.AsyncClient, credential: str = TOKEN) -> int:
    form = await browser.get("/console/login?next=/console/rollout")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None
    answer = await browser.post(
        "/console/login",
        data={"credential": credential, "nonce": nonce[1], "next": "/console/rollout"},
    )
    return answer.status_code


def test_the_session_stands_for_the_admin_credential_with_its_csrf_header() -> None:
    async def scenario() -> None:
        async with client() as browser:
            assert (await browser.post("/admin/rollback", json={})).status_code == 401
            assert await login(browser, "wrong") == 403
            assert session.COOKIE not in browser.cookies
            assert await login(browser) == 303
            cookie = browser.cookies[session.COOKIE]
            page = (await browser.get("/console/rollout")).text
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
            assert csrf is not None and csrf[1] == session.csrf_token(TOKEN, cookie)
            # Past the credential check, the handler answers: no rollouts object in this app.
            passed = await browser.post(
                "/admin/rollback", json={}, headers={session.CSRF_HEADER: csrf[1]}
            )
            assert passed.status_code == 404 and "not initialised" in passed.text
            refused = await browser.post("/admin/rollback", json={})
            assert refused.status_code == 403 and session.CSRF_HEADER in refused.text
            other = session.csrf_token(TOKEN, session.issue(TOKEN, now_s=1))
            stolen = await browser.post(
                "/admin/rollback", json={}, headers={session.CSRF_HEADER: other}
            )
            assert stolen.status_code == 403
            # A read under the session needs the cookie only (an <img> sends no header).
            assert (await browser.get("/admin/review/1/image")).status_code != 401
            logout = await browser.post("/console/logout", data={"csrf": csrf[1]})
            assert logout.status_code == 303

    run(scenario)


def test_an_expired_session_is_refused() -> None:
    async def scenario() -> None:
        async with client(console_session_s=60) as browser:
            old = session.issue(TOKEN, now_s=1_000_000)
            browser.cookies.set(session.COOKIE, old)
            csrf = session.csrf_token(TOKEN, old)
            answer = await browser.post(
                "/admin/rollback", json={}, headers={session.CSRF_HEADER: csrf}
            )
            assert answer.status_code == 401 and "expired" in answer.text

    run(scenario)


def test_a_closed_console_sends_pages_to_the_login_and_never_elsewhere() -> None:
    async def scenario() -> None:
        async with client(console_open=False) as browser:
            page = await browser.get("/console/models")
            assert page.status_code == 303
            assert page.headers["location"] == "/console/login?next=/console/models"
            assert await login(browser) == 303
            assert (await browser.get("/console/models")).status_code == 200
        async with client() as browser:
            assert (await browser.get("/console/models")).status_code == 200
            form = (await browser.get("/console/login?next=https://evil.example/")).text
            assert 'name="next" value="/console"' in form

    run(scenario)


def test_pages_and_assets_carry_the_security_headers() -> None:
    async def scenario() -> None:
        async with client() as browser:
            for path in ("/console", "/console/try", "/console/static/vendor/uPlot.iife.min.js"):
                answer = await browser.get(path)
                assert answer.status_code == 200, path
                assert "script-src 'self'" in answer.headers["content-security-policy"]
                assert answer.headers["x-content-type-options"] == "nosniff"
            assert (await browser.get("/console/static/../routes.py")).status_code == 404

    run(scenario)
