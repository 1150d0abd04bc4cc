"""Webhooks without a network: the signature, the validation of a submission's webhooks,
the operator's allowlist, and the backoff."""

from __future__ import annotations

import pytest

from chronocore.config import Config, ConfigError
from chronocore.model import ValidationError, parse_submission
from chronocore.webhooks import (
    MAX_ATTEMPTS,
    WebhookError,
    allowed,
    backoff_s,
    check_allowed,
    parse_allowlist,
    parse_webhooks,
    sign,
    verify,
)

SECRET = "a-webhook-secret-of-some-length"
BODY = b'{"event":"failed"}'
NOW = 1_700_000_000
# printf '%s' '1700000000.{"event":"failed"}' | openssl dgst -sha256 -hmac "$SECRET"
EXPECTED = "825156110e9ff04bfde9d819eb5e22f1a23f45b03f08573073454914e3e0e000"


def hook(**fields: object) -> dict[str, object]:
    return {"url": "https://hooks.example.com/cs", "events": ["failed"], "secret": SECRET,
            **fields}


def test_the_signature_is_the_hmac_sha256_of_timestamp_dot_body() -> None:
    assert sign(SECRET, NOW, BODY) == f"t={NOW},v1={EXPECTED}"


def test_a_receiver_verifies_a_signature_and_refuses_a_changed_body_key_or_old_one() -> None:
    header = sign(SECRET, NOW, BODY)
    assert verify(SECRET, header, BODY, now=NOW + 10)
    assert not verify(SECRET, header, BODY + b" ", now=NOW)
    assert not verify("another-secret-of-some-length", header, BODY, now=NOW)
    assert not verify(SECRET, header, BODY, now=NOW + 3600)  # a replay
    assert not verify(SECRET, "garbage", BODY, now=NOW)


def test_webhooks_are_validated_with_the_field_named() -> None:
    assert parse_webhooks(None) is None and parse_webhooks([]) is None
    assert parse_webhooks([hook(events=["recovered", "failed", "failed"])]) == [
        hook(events=["failed", "recovered"])]
    for bad, says in [
        ("https://x", "must be a list"),
        ([hook(url="file:///etc/passwd")], "http:// or https://"),
        ([hook(url="https://hooks.example.com/a b")], "spaces"),
        ([hook(url="https://user:pw@hooks.example.com/")], "user name"),
        ([hook(url="http://[::1/x")], "not a valid URL"),
        ([hook(url="http://h:port/x")], "not a valid URL"),
        ([hook(url="https://hooks.example.com/cs/../admin")], r"\. or \.\. path"),
        ([hook(url="https://hooks.example.com/cs/%2E%2e/admin")], r"\. or \.\. path"),
        ([hook(url="https://hooks.example.com/cs/..;x/admin")], r"\. or \.\. path"),
        ([hook(url="https://hooks.example.com/cs/%252e%252e/admin")], "percent-encoded"),
        ([hook(url="https://hooks.example.com/cs/%2e%2e%5cadmin")], "percent-encoded"),
        ([hook(url="https://hooks.example.com/cs/\ud800")], "ASCII"),
        ([hook(url="https://hooks.example.com/caf\u00e9")], "ASCII"),
        ([hook(events=["exploded"])], "unknown event"),
        ([hook(events="failed")], "non-empty list"),
        ([hook(secret="short")], "16 to 256"),
        ([hook(secret="x" * 257)], "16 to 256"),
        ([hook(extra=1)], "unknown field"),
        ([hook()] * 6, "more than 5"),
    ]:
        with pytest.raises(WebhookError, match=says):
            parse_webhooks(bad)
    with pytest.raises(ValidationError) as raised:
        parse_submission({"command": "true", "webhooks": [hook(events=["nope"])]})
    assert raised.value.field == "webhooks"


def test_the_allowlist_matches_prefixes_on_the_same_host_only() -> None:
    allow = parse_allowlist(" https://hooks.example.com , http://127.0.0.1:9000/in/")
    assert allow == ("https://hooks.example.com/", "http://127.0.0.1:9000/in/")
    assert allowed("https://hooks.example.com/cs", allow)
    assert allowed("http://127.0.0.1:9000/in/x?y=1", allow)
    for url in ("https://hooks.example.com.evil.net/cs", "https://hooks.example.com:444/",
                "http://hooks.example.com/cs", "http://127.0.0.1:9000/out",
                "http://127.0.0.1:9000/in", "http://169.254.169.254/latest",
                # Under the prefix as text, outside it once a receiver resolves the path.
                "http://127.0.0.1:9000/in/../admin", "http://127.0.0.1:9000/in/./%2e%2E/x"):
        assert not allowed(url, allow), url
    with pytest.raises(WebhookError, match=r"not enabled.*CHRONOSYNC_WEBHOOK_ALLOW"):
        check_allowed([hook()], ())
    check_allowed(None, ())  # no webhooks, nothing to allow


def test_a_bad_allowlist_fails_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CHRONOSYNC_WEBHOOK_ALLOW"):
        Config.from_env({"CHRONOSYNC_DSN": "host=db",
                         "CHRONOSYNC_WEBHOOK_ALLOW": "hooks.example.com"})
    assert Config.from_env({"CHRONOSYNC_DSN": "host=db"}).webhook_allow == ()


def test_the_backoff_doubles_and_is_bounded() -> None:
    assert [backoff_s(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_s(MAX_ATTEMPTS + 50) == 1800.0
