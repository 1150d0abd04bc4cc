"""The dashboard's files: plain HTML, CSS and JavaScript shipped in the package (``static/``),
no build step. The page reads the same JSON API as everyone else."""

from __future__ import annotations

import base64
import hashlib
import hmac
from importlib import resources
from typing import Any
from urllib.parse import quote

from chronocore.model import ValidationError
from chronosync_scheduler.api import ApiError, Raw

TOKEN_COOKIE = "chronosync_token"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def asset(name: str) -> Raw:
    suffix = name[name.rfind("."):] if "." in name else ""
    folder = resources.files("chronosync_scheduler").joinpath("static")
    entry = folder.joinpath(name)
    if suffix not in CONTENT_TYPES or "/" in name or not entry.is_file():
        raise ApiError(404, f"no such file: {name}")
    return Raw(CONTENT_TYPES[suffix], entry.read_bytes())


def login_page() -> bytes:
    """What a browser gets instead of a 401 JSON body: a form that posts the token to
    ``POST /session``, whose answer keeps it in an HttpOnly cookie (see sign_in)."""
    return LOGIN_PAGE.encode()


def sign_in(body: Any, *, token: str | None) -> Raw:
    """``POST /session {"token": ...}``: the right token comes back as a cookie the page's
    scripts cannot read (HttpOnly) and that no other site's request carries (SameSite=Strict;
    origin.py refuses same-site pages on other ports). http.py adds ``Secure`` when the
    browser came over TLS."""
    if token is None:
        raise ApiError(404, "this scheduler has no API token: there is nothing to sign in to")
    if not isinstance(body, dict):
        raise ValidationError('send {"token": "<the API token>"}', field="token")
    unknown = sorted(set(body) - {"token"})
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", field=unknown[0])
    given = body.get("token")
    if not isinstance(given, str) or not given:
        raise ValidationError("token must be a non-empty string", field="token")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
        raise ApiError(401, "that is not the API token", field="token")
    cookie = f"{TOKEN_COOKIE}={quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
    return Raw("application/json", b'{"signed_in":true}\n',
               headers=(("Set-Cookie", cookie), ("Cache-Control", "no-store")))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


LOGIN_STYLE = """body{font:16px system-ui,sans-serif;display:grid;place-items:center;height:100vh;
margin:0;background:#0f172a;color:#e2e8f0}form{background:#1e293b;padding:2rem;
border-radius:12px;display:grid;gap:.8rem;min-width:20rem}input,button{font:inherit;
padding:.5rem;border-radius:6px;border:1px solid #475569}button{background:#38bdf8;
border:0;color:#0f172a;font-weight:600;cursor:pointer}#message{margin:0;color:#fca5a5}"""

LOGIN_SCRIPT = """document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const message = document.getElementById("message");
  message.textContent = "";
  try {
    const response = await fetch("/session", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", Accept: "application/json"},
      body: JSON.stringify({token: document.getElementById("token").value})});
    if (response.ok) {
      location.reload();
      return;
    }
    const answer = await response.json().catch(() => null);
    message.textContent = answer && typeof answer.error === "string" ? answer.error
      : `sign-in failed (${response.status})`;
  } catch (_) {
    message.textContent = "the scheduler cannot be reached";
  }
});"""

LOGIN_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ChronoSync — sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{LOGIN_STYLE}</style></head>
<body><form id="login"><h1>ChronoSync</h1><label for="token">API token</label>
<input id="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button><p id="message" role="alert"></p></form>
<script>{LOGIN_SCRIPT}</script></body></html>
"""

# Sent with every response. The dashboard's own files only ('self'), the sign-in page's
# two inline blocks by hash, its favicon as a data: URI; never inside a frame (no
# clickjacking of the cancel buttons), no plugins, no <base> tricks.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    f"script-src 'self' {_csp_hash(LOGIN_SCRIPT)}",
    f"style-src 'self' {_csp_hash(LOGIN_STYLE)}",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
