"""The web console's session: a signed cookie that stands for the admin credential, and the
CSRF token that must come with every state change made under it.

Stateless, so that every entry worker accepts a session another one issued: the cookie is
`<issued-at>.<HMAC-SHA256(admin token, "session:" + issued-at)>`, valid for a set time, and
its CSRF token is `HMAC-SHA256(admin token, "csrf:" + cookie)`. Neither can be made without
the admin token, and changing the token ends every session. The cookie is HttpOnly and
SameSite=Strict; the CSRF token travels in the page (a meta tag) and comes back in the
`X-CSRF-Token` header, which a cross-site form cannot set.
"""

from __future__ import annotations

import hashlib
import hmac
import time

COOKIE = "imgserve_console"
CSRF_HEADER = "X-CSRF-Token"


def _sign(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue(token: str, now_s: float | None = None) -> str:
    """A new session cookie value, signed with the admin token."""
    issued = str(int(time.time() if now_s is None else now_s))
    return f"{issued}.{_sign(token, 'session:' + issued)}"


def valid(token: str, cookie: str | None, max_age_s: float, now_s: float | None = None) -> bool:
    """Whether `cookie` is a session this token signed, no older than `max_age_s`."""
    if not cookie or cookie.count(".") != 1:
        return False
    issued, signature = cookie.split(".")
    if not issued.isdigit() or len(issued) > 12:
        return False
    age_s = (time.time() if now_s is None else now_s) - int(issued)
    if not 0 <= age_s <= max_age_s:
        return False
    return hmac.compare_digest(signature.encode(), _sign(token, "session:" + issued).encode())


def csrf_token(token: str, cookie: str) -> str:
    """The CSRF token of a session: state changes under the cookie must send it back."""
    return _sign(token, "csrf:" + cookie)


def csrf_valid(token: str, cookie: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(
        given.encode(), csrf_token(token, cookie).encode()
    )
