"""The console's session cookie and CSRF token (serving.session): signed with the admin token,
time-limited, and refused when tampered with."""

from serving import session

TOKEN = "unit-token"


def test_a_session_is_valid_until_it_expires() -> None:
    cookie = session.issue(TOKEN, now_s=1000)
    assert session.valid(TOKEN, cookie, max_age_s=60, now_s=1059)
    assert not session.valid(TOKEN, cookie, max_age_s=60, now_s=1061)
    assert not session.valid(TOKEN, cookie, max_age_s=60, now_s=990)  # issued in the future


def test_a_tampered_or_foreign_session_is_refused() -> None:
    cookie = session.issue(TOKEN, now_s=1000)
    issued, signature = cookie.split(".")
    assert not session.valid("another-token", cookie, 60, now_s=1001)
    assert not session.valid(TOKEN, f"{int(issued) + 1}.{signature}", 60, now_s=1001)
    assert not session.valid(TOKEN, f"{issued}.{signature[:-1]}0", 60, now_s=1001)
    for bad in (None, "", "abc", "1.2.3", "x.y", "9" * 20 + ".0"):
        assert not session.valid(TOKEN, bad, 60, now_s=1001)


def test_the_csrf_token_belongs_to_its_session() -> None:
    one, two = session.issue(TOKEN, now_s=1000), session.issue(TOKEN, now_s=2000)
    token = session.csrf_token(TOKEN, one)
    assert session.csrf_valid(TOKEN, one, token)
    assert not session.csrf_valid(TOKEN, two, token)
    assert not session.csrf_valid(TOKEN, one, None)
    assert not session.csrf_valid(TOKEN, one, token[:-1])
