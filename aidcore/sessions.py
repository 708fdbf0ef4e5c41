"""Signed session cookies and CSRF tokens of the PMO dashboard. Pure: the key and the time are
passed in.

A session value is `<username>.<expires_s>.<nonce>.<mac>`, the MAC an HMAC-SHA256 under the
dashboard's session key over the first three parts. It holds no role: the shell reads the user's
row on every request, so a disabled user or a changed role takes effect at once. The CSRF token
of a session is an HMAC of its nonce under the same key with its own domain, sent back in every
form; a page of another site can neither read it nor compute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

NONCE_BYTES = 16
USERNAME_MAX_CHARS = 64


def _mac(key: bytes, domain: bytes, text: str) -> str:
    digest = hmac.new(key, domain + text.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def username_problem(username: str) -> str | None:
    if not username or len(username) > USERNAME_MAX_CHARS or not username.isascii():
        return f"a username is 1 to {USERNAME_MAX_CHARS} ASCII characters"
    if not all(c.isalnum() or c in "-_@" for c in username):
        return "a username holds letters, digits, '-', '_' and '@' only"
    return None


def new_nonce() -> str:
    return secrets.token_urlsafe(NONCE_BYTES)


def sign_session(key: bytes, username: str, expires_s: int, nonce: str) -> str:
    body = f"{username}.{expires_s}.{nonce}"
    return f"{body}.{_mac(key, b'session:', body)}"


def open_session(key: bytes, value: str, now_s: float) -> tuple[str, str] | None:
    """(username, nonce) of a session value signed under `key` that has not expired, else None."""
    parts = (value or "").split(".")
    if len(parts) != 4:
        return None
    username, expires, nonce, mac = parts
    if not hmac.compare_digest(_mac(key, b"session:", f"{username}.{expires}.{nonce}"), mac):
        return None
    if not expires.isdigit() or int(expires) <= now_s:
        return None
    return username, nonce


def csrf_token(key: bytes, nonce: str) -> str:
    return _mac(key, b"csrf:", nonce)


def csrf_matches(key: bytes, nonce: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(key, nonce), presented or "")
