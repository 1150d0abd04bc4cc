"""The dashboard's files: plain HTML, CSS and JavaScript shipped in the package (``static/``),
no build step. The page reads the same JSON API as everyone else."""

from __future__ import annotations

from importlib import resources

from chronosync_scheduler.api import ApiError

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def asset(name: str):  # -> http.Raw (imported lazily: http imports this module)
    from chronosync_scheduler.http import Raw

    suffix = name[name.rfind("."):] if "." in name else ""
    folder = resources.files("chronosync_scheduler").joinpath("static")
    entry = folder.joinpath(name)
    if suffix not in CONTENT_TYPES or "/" in name or not entry.is_file():
        raise ApiError(404, f"no such file: {name}")
    return Raw(CONTENT_TYPES[suffix], entry.read_bytes())


def login_page() -> bytes:
    """What a browser gets instead of a 401 JSON body: a form that keeps the token in a
    SameSite cookie, which the dashboard's requests then carry."""
    return LOGIN_PAGE.encode()


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ChronoSync — sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px system-ui,sans-serif;display:grid;place-items:center;height:100vh;
margin:0;background:#0f172a;color:#e2e8f0}form{background:#1e293b;padding:2rem;
border-radius:12px;display:grid;gap:.8rem;min-width:20rem}input,button{font:inherit;
padding:.5rem;border-radius:6px;border:1px solid #475569}button{background:#38bdf8;
border:0;color:#0f172a;font-weight:600;cursor:pointer}</style></head>
<body><form id="login"><h1>ChronoSync</h1><label for="token">API token</label>
<input id="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form>
<script>document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = encodeURIComponent(document.getElementById("token").value);
  document.cookie = `chronosync_token=${token}; path=/; SameSite=Strict`;
  location.reload();
});</script></body></html>
"""
