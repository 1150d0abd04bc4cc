"""Secrets read from files (CHRONOSYNC_DSN_FILE and the like)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chronocore.config import Config, ConfigError


def test_it_reads_the_dsn_and_the_token_from_files(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("host=db password=p4ss dbname=c\n")
    (tmp_path / "session").write_text("host=db-direct password=p4ss\r\n")
    (tmp_path / "token").write_text("t0ken")
    config = Config.from_env({"CHRONOSYNC_DSN_FILE": str(tmp_path / "dsn"),
                              "CHRONOSYNC_SESSION_DSN_FILE": str(tmp_path / "session"),
                              "CHRONOSYNC_API_TOKEN_FILE": str(tmp_path / "token")})
    assert (config.dsn, config.session_dsn, config.api_token) == (
        "host=db password=p4ss dbname=c", "host=db-direct password=p4ss", "t0ken")


def test_it_refuses_a_secret_given_both_ways(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("host=db")
    with pytest.raises(ConfigError, match="CHRONOSYNC_DSN_FILE"):
        Config.from_env({"CHRONOSYNC_DSN": "host=db",
                         "CHRONOSYNC_DSN_FILE": str(tmp_path / "dsn")})


def test_it_names_the_variable_of_an_unreadable_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CHRONOSYNC_API_TOKEN_FILE"):
        Config.from_env({"CHRONOSYNC_DSN": "host=db",
                         "CHRONOSYNC_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_an_empty_dsn_file_is_a_missing_dsn(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("\n")
    with pytest.raises(ConfigError, match="CHRONOSYNC_DSN"):
        Config.from_env({"CHRONOSYNC_DSN_FILE": str(tmp_path / "dsn")})


def test_it_reads_the_session_timeouts_and_takes_0_as_no_statement_bound() -> None:
    config = Config.from_env({"CHRONOSYNC_DSN": "host=db", "CHRONOSYNC_LOCK_TIMEOUT_S": "2.5",
                              "CHRONOSYNC_IDLE_IN_TRANSACTION_TIMEOUT_S": "30",
                              "CHRONOSYNC_STATEMENT_TIMEOUT_S": "0"})
    assert config.session_timeouts.options() == (
        "-c lock_timeout=2500 -c idle_in_transaction_session_timeout=30000"
        " -c statement_timeout=0")


@pytest.mark.parametrize("name", ["CHRONOSYNC_LOCK_TIMEOUT_S",
                                  "CHRONOSYNC_IDLE_IN_TRANSACTION_TIMEOUT_S"])
def test_a_lock_or_idle_timeout_of_0_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({"CHRONOSYNC_DSN": "host=db", name: "0"})


def test_the_shutdown_grace_is_read_with_the_rest_and_may_be_zero() -> None:
    def grace(raw: str) -> float:
        return Config.from_env({"CHRONOSYNC_DSN": "host=db",
                                "CHRONOSYNC_SHUTDOWN_GRACE_S": raw}).shutdown_grace_s

    assert Config.from_env({"CHRONOSYNC_DSN": "host=db"}).shutdown_grace_s == 30
    assert (grace("2.5"), grace("0"), grace("0.0")) == (2.5, 0, 0)
    for bad in ("soon", "-1"):
        with pytest.raises(ConfigError, match="CHRONOSYNC_SHUTDOWN_GRACE_S"):
            grace(bad)
