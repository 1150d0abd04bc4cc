"""origin.foreign_request on header shapes the integration tests do not send: odd Host
spellings, duplicated headers, a proxy's forwarded name."""

from __future__ import annotations

from email.message import Message

import pytest

from chronosync_scheduler.origin import foreign_request


def headers(*pairs: tuple[str, str]) -> Message:
    message = Message()
    for name, value in pairs:
        message[name] = value
    return message


def refused(*pairs: tuple[str, str], method: str = "GET", path: str = "/tasks",
            listen_host: str = "127.0.0.1", local_address: str = "127.0.0.1",
            token_set: bool = False) -> bool:
    return foreign_request(headers(*pairs), method=method, path=path,
                           listen_host=listen_host, local_address=local_address,
                           token_set=token_set) is not None


@pytest.mark.parametrize("host", [
    "localhost", "LocalHost:8081", "localhost.:8081", "127.0.0.1", "127.1.2.3:80",
    "[::1]", "[::1]:8081",
])
def test_it_serves_loopback_names_without_a_token(host: str) -> None:
    assert not refused(("Host", host))


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:8081", "localhost.evil.example", "::1", "[::1",
    "[::1]x:80", "localhost:http", "localhost:", "[]:80", ":8081", "127.0.0.1 :8081",
    "10.0.0.5:8081",
])
def test_it_refuses_other_or_malformed_hosts_without_a_token(host: str) -> None:
    assert refused(("Host", host))


def test_without_a_host_it_is_not_a_browser_and_not_refused() -> None:
    assert not refused()
    assert refused(("Origin", "http://127.0.0.1:8081"))  # an Origin with nothing to match


def test_the_listen_address_and_the_local_address_on_a_wildcard_are_served() -> None:
    assert not refused(("Host", "10.0.0.5:8081"), listen_host="10.0.0.5")
    assert not refused(("Host", "sched.lan"), listen_host="sched.lan")
    assert not refused(("Host", "10.0.0.5:8081"), listen_host="0.0.0.0",
                       local_address="10.0.0.5")
    assert refused(("Host", "10.0.0.6:8081"), listen_host="0.0.0.0",
                   local_address="10.0.0.5")
    assert refused(("Host", "sched.lan"), listen_host="0.0.0.0", local_address="10.0.0.5")


def test_with_a_token_any_host_but_still_no_foreign_origin() -> None:
    assert not refused(("Host", "cron.example.com"), token_set=True)
    assert not refused(("Host", "cron.example.com"), ("Origin", "https://cron.example.com"),
                       token_set=True)
    assert refused(("Host", "cron.example.com"), ("Origin", "https://evil.example"),
                   token_set=True)


def test_a_proxys_forwarded_host_is_the_schedulers_own_origin() -> None:
    assert not refused(("Host", "scheduler:8081"), ("X-Forwarded-Host", "cron.example.com"),
                       ("Origin", "https://cron.example.com"), token_set=True)
    assert refused(("Host", "scheduler:8081"), ("X-Forwarded-Host", "cron.example.com"),
                   ("Origin", "https://evil.example"), token_set=True)


@pytest.mark.parametrize("name", ["Host", "Origin"])
def test_a_duplicated_host_or_origin_is_refused(name: str) -> None:
    assert refused(("Host", "localhost:8081"), (name, "http://localhost:8081"),
                   (name, "http://localhost:8081"))


@pytest.mark.parametrize("origin", [
    "null", "file://", "http://", "ftp://localhost:8081", "localhost:8081",
    "http://localhost:8081/", "http://user@localhost:8081",
])
def test_an_origin_that_is_not_exactly_the_host_is_refused(origin: str) -> None:
    assert refused(("Host", "localhost:8081"), ("Origin", origin))


LINK = (("Host", "localhost:8081"), ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Mode", "navigate"))


def test_a_link_from_another_site_may_open_the_dashboard_page_only() -> None:
    assert not refused(*LINK, ("Sec-Fetch-Dest", "document"), path="/")
    assert refused(*LINK, ("Sec-Fetch-Dest", "iframe"), path="/")  # framing: no
    assert refused(*LINK, ("Sec-Fetch-Dest", "document"), path="/tasks")
    assert refused(*LINK, ("Sec-Fetch-Dest", "document"), method="POST", path="/")
    assert refused(("Host", "evil.example"), *LINK[1:], ("Sec-Fetch-Dest", "document"),
                   path="/")  # still not for a rebound name
