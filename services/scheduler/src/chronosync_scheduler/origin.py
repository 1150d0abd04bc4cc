"""Which requests a browser sent on behalf of another site: the scheduler refuses them
before anything else (SPEC §3), because a page the user merely visits must not be able
to submit commands to a scheduler on their machine or read its tasks.

Two attacks, two checks:

- **Cross-site requests.** A page on another origin can send a "simple" request (a POST
  labelled ``application/x-www-form-urlencoded`` or ``text/plain``, a no-cors fetch, a
  form) without any preflight, and curl's ``-d`` sends exactly that content type, so the
  content type cannot tell them apart. The browser can: it adds ``Origin`` to every
  cross-origin POST and ``Sec-Fetch-Site`` (``cross-site`` / ``same-site``) to requests
  for trustworthy origins, localhost included. A request whose ``Origin`` is not the
  scheduler's own, or which the browser labels as coming from another site, is refused.
  curl sends neither header, so it is unaffected. One exception: following a link from
  another site to the dashboard page itself (a top-level GET of ``/``). A page cannot
  forge these headers, nor ``X-Forwarded-Host`` (not a CORS-safelisted header: it needs a
  preflight, which is itself a request with a foreign ``Origin``).
- **DNS rebinding.** A page on ``evil.example:8081`` has its name re-resolved to
  127.0.0.1: its requests are then same-origin to the browser, but carry
  ``Host: evil.example:8081``. Without a token, only a ``Host`` naming this machine is
  served: ``localhost``, a loopback IP literal, the listen address, or (when listening on
  every address) the IP literal of the local address the connection came in on. DNS
  names other than ``localhost`` are refused even if they resolve here, because a DNS
  name is exactly what an attacker can repoint. The port is not compared: it says nothing
  about who chose the name, and port mappings (``docker -p 9000:8081``) change it. With a
  token the Host is not checked (deployments sit behind names); a rebound page has no
  token and no cookie for its own name.

A request with no ``Host`` at all cannot come from a browser and is not refused for it.
"""

from __future__ import annotations

import ipaddress
from email.message import Message

REFUSED_SITES = ("cross-site", "same-site")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def foreign_request(headers: Message, *, method: str, path: str, listen_host: str,
                    local_address: str, token_set: bool) -> str | None:
    """Why this request must be refused, in words; None when it may go on."""
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in REFUSED_SITES and not _follows_a_link_to_the_dashboard(headers, method, path):
        return (f"refused: the browser says this request comes from another site "
                f"(Sec-Fetch-Site: {site})")
    hosts = headers.get_all("Host") or []
    if len(hosts) > 1:
        return "refused: more than one Host header"
    host = hosts[0].strip() if hosts else None
    origins = headers.get_all("Origin") or []
    if len(origins) > 1:
        return "refused: more than one Origin header"
    if origins and not _own_origin(origins[0].strip(), host, headers):
        return (f"refused: Origin {origins[0].strip()!r} is not this scheduler's own; "
                f"pages on other origins may not use the API")
    if not token_set and host is not None and not _names_this_machine(
            host, listen_host=listen_host, local_address=local_address):
        return (f"refused: Host {host!r} does not name this scheduler; without "
                f"CHRONOSYNC_API_TOKEN only localhost, a loopback address or the listen "
                f"address is served (a defence against DNS rebinding)")
    return None


def _follows_a_link_to_the_dashboard(headers: Message, method: str, path: str) -> bool:
    """A link on another site (a wiki, a chat) opening the dashboard in a tab: the page is
    static, the other site cannot read it, and it may not be framed. With a token the
    SameSite=Strict cookie stays home, so the sign-in form shows."""
    return (method in ("GET", "HEAD") and path == "/"
            and headers.get("Sec-Fetch-Mode", "").strip().lower() == "navigate"
            and headers.get("Sec-Fetch-Dest", "").strip().lower() == "document")


def _own_origin(origin: str, host: str | None, headers: Message) -> bool:
    """``http(s)://`` plus the Host the browser addressed (the proxy's name, when a proxy
    passes it on in X-Forwarded-Host). The scheme is not compared: behind a TLS proxy the
    page is https while this server speaks http."""
    scheme, separator, authority = origin.lower().partition("://")
    if scheme not in ("http", "https") or not separator or not authority:
        return False
    forwarded = headers.get("X-Forwarded-Host", "").split(",")[0]
    own = {name.strip().lower() for name in (host or "", forwarded)} - {""}
    return authority in own


def _names_this_machine(host: str, *, listen_host: str, local_address: str) -> bool:
    name = _host_name(host)
    if name is None:
        return False
    address = _ip(name)
    if name == "localhost" or (address is not None and address.is_loopback):
        return True
    listening = listen_host.strip("[]").lower()
    if listening in WILDCARD_HOSTS:
        return address is not None and address == _ip(local_address)
    return name == listening or (address is not None and address == _ip(listening))


def _host_name(host: str) -> str | None:
    """``"[::1]:8081"`` -> ``"::1"``, ``"Localhost.:80"`` -> ``"localhost"``; None if it
    is not a host[:port] at all."""
    host = host.lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        port_given, _, port = rest.partition(":")
        if not bracket or port_given or (rest and not _is_port(port)):
            return None
        return name or None
    name, colon, port = host.partition(":")
    if colon and not _is_port(port):
        return None
    return name.rstrip(".") or None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None
