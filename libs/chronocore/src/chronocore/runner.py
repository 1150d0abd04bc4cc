"""The run of one command, as SPEC §4 says: ``/bin/sh -c`` in its own session (process
group), stdout and stderr captured as a bounded tail, a timeout and a cancel that
terminate the whole group (SIGTERM, then SIGKILL after a grace period).

One ``CommandRun`` is driven by one pool thread: ``wait()`` polls the output pipe, a pidfd
(readable when the shell exits) and a wake-up eventfd written by ``cancel()`` from other
threads (``poll``, not an epoll selector: no descriptor of its own to create per run).
When the shell exits, whatever it left behind in its group is killed, so nothing
outlives the run unattended and the pipe reaches EOF.

A run with a spawn deadline is gated in the child: the shell itself reads the clock
just before the command and refuses to run it past the deadline (``gated``). A check in
the worker alone cannot close the window between that check and the spawn: a worker
frozen there (SIGSTOP, a starved host) would start the command when it thaws, after
its attempt may have been recovered and retried elsewhere.
"""

from __future__ import annotations

import errno
import math
import os
import pwd
import select
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chronocore import failpoints
from chronocore.reaper import Reaper

OUTPUT_TAIL_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024
_DRAIN_S = 1.0
_NEVER = float("inf")

# How many times a run gated off by its deadline is asked about again (the guard
# confirms the claim with the database, which renews the deadline) and spawned anew.
SPAWN_TRIES = 3

# The gate in front of a command, in the same shell (no exec of its own, and one line,
# so a syntax error in the command is reported as without it: on line 1, nothing run).
# /proc/uptime is CLOCK_BOOTTIME in hundredths of a second, which never runs slower than
# the worker's monotonic clock. Past the deadline the shell writes a byte on its stdin,
# the write end of the gate's pipe, and exits; otherwise the command gets /dev/null as
# its stdin, as any run does, and the variable is gone before it starts.
_GATE = ('read -r _chronosync_up _ </proc/uptime; '
         '_chronosync_up=${{_chronosync_up%.*}}${{_chronosync_up#*.}}; '
         '[ "$_chronosync_up" -lt {deadline} ] || {{ echo >&0; exit 125; }}; '
         'unset _chronosync_up; exec </dev/null; ')


def gated(command: str, deadline: float) -> str:
    """``command`` behind a gate that refuses to run it at or after ``deadline`` (an
    instant of ``time.monotonic()``, which all processes of the host share)."""
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)  # first: a pause in between only
    left = deadline - time.monotonic()  # makes the deadline earlier
    return _GATE.format(deadline=math.floor((boot + left) * 100)) + command


def output_text(tail: bytes) -> str:
    """The text stored for a run's output: the tail decoded as UTF-8, each invalid byte
    (and NUL, which PostgreSQL text refuses) as U+FFFD, cut to its last
    OUTPUT_TAIL_BYTES of UTF-8. A replacement character takes three bytes: undecodable
    output would otherwise be stored three times over its bound."""
    text = tail.decode("utf-8", "replace").replace("\x00", "\ufffd")
    encoded = text.encode()
    if len(encoded) <= OUTPUT_TAIL_BYTES:
        return text
    # The cut may split a character: its remaining continuation bytes are dropped.
    return encoded[-OUTPUT_TAIL_BYTES:].decode("utf-8", "ignore")


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user a root worker runs commands as (CHRONOSYNC_RUN_AS).

    The switch is made by util-linux's ``setpriv`` exec'd before the shell, not by
    Popen's ``user=``: that makes Python fork (not vfork) a process full of gRPC threads
    and change ids in the child, which crashed now and then (SIGSEGV before exec)."""

    name: str
    uid: int
    gid: int
    home: str
    setpriv: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        entry = pwd.getpwnam(name)  # KeyError when there is no such user
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise FileNotFoundError("setpriv (util-linux) is needed to run commands as "
                                    f"{name}")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, setpriv)

    def wrap(self, argv: list[str]) -> list[str]:
        return [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}",
                "--clear-groups", "--", *argv]


# The sandbox's two steps, as /bin/sh scripts. The first runs in a user namespace where
# it is root: it covers each path to hide with an empty read-only tmpfs, then enters a
# nested user namespace that gives the worker's own uid back (no capability left to lift
# the covers: mounts made in a more privileged namespace are locked), with a PID
# namespace and its own /proc. There the second is process 1 and waits for the command:
# process 1 ignores every signal it has no handler for, and the command must not. The
# command keeps the run's stdin (the gate's pipe): an asynchronous list's is /dev/null.
_SANDBOX_COVER = """uid=$1 gid=$2 unshare=$3 n=$4; shift 4
while [ "$n" -gt 0 ]; do
  mount -t tmpfs -o ro,size=4k,mode=0 chronosync-hidden "$1" || exit 125
  shift; n=$((n - 1))
done
exec "$unshare" --user --map-user="$uid" --map-group="$gid" --pid --fork --mount-proc \\
  -- /bin/sh -c "$0" chronosync-init "$@"
"""
_SANDBOX_INIT = 'exec 3<&0; "$@" <&3 3<&- & wait $! 2>/dev/null'


@dataclass(frozen=True)
class Sandbox:
    """Namespaces around each command of a worker that is not root (CHRONOSYNC_SANDBOX):
    a PID namespace (the command can neither see nor signal the nodes, and its /proc
    shows its own processes only), a mount namespace in which the CHRONOSYNC_SANDBOX_HIDE
    paths are empty (the database's files, the nodes' keys), and a user namespace in which
    it keeps the worker's uid and holds no capability. Made with util-linux's unshare, as
    an unprivileged user may where the kernel allows user namespaces; a root worker runs
    commands as another user instead (RunAs)."""

    unshare: str
    hide: tuple[str, ...]

    @classmethod
    def lookup(cls, hide: tuple[str, ...]) -> Sandbox:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise FileNotFoundError("unshare (util-linux) is needed for the sandbox")
        return cls(unshare, hide)

    def wrap(self, argv: list[str]) -> list[str]:
        return [self.unshare, "--user", "--map-root-user", "--mount", "--",
                "/bin/sh", "-c", _SANDBOX_COVER, _SANDBOX_INIT, str(os.geteuid()),
                str(os.getegid()), self.unshare, str(len(self.hide)), *self.hide, *argv]

    def check(self) -> None:
        """Raise OSError saying why, unless a command can run in the sandbox here."""
        try:
            res = subprocess.run(self.wrap(["/bin/sh", "-c", "true"]), capture_output=True,
                                 text=True, timeout=30, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OSError("a trial command in the sandbox did not end within 30 s") from None
        if res.returncode != 0:
            raise OSError(f"a trial command in the sandbox failed ({res.returncode}): "
                          f"{(res.stderr or res.stdout).strip()[-500:]}")


# With an allowlist, a command must be an allowed prefix followed by plain arguments:
# shell control characters could chain anything after an allowed prefix.
SHELL_CONTROL = set(";&|`$()<>\n\\")


def allowed(command: str, allowlist: tuple[str, ...] | None) -> bool:
    """Whether a worker with this allowlist may run the command (None: anything)."""
    if allowlist is None:
        return True
    if SHELL_CONTROL & set(command):
        return False
    return any(command == prefix or command.startswith(prefix.rstrip() + " ")
               for prefix in allowlist)


def env_refused(env: Mapping[str, str], allowlist: tuple[str, ...] | None,
                env_allowlist: tuple[str, ...]) -> str | None:
    """The first task env name a worker with this command allowlist refuses (None: all
    accepted). Without a command allowlist any command may set any variable itself, so
    names are only checked with one; with one, a name like BASH_ENV or LD_PRELOAD would
    turn an allowed command into an arbitrary one, hence an allowlist of names too."""
    if allowlist is None:
        return None
    return next((name for name in sorted(env) if not name_matches(name, env_allowlist)),
                None)


def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """``patterns``: exact names, or ``PREFIX*`` for every name starting with PREFIX."""
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


# The worker's own variables a command sees: what programs need to behave ordinarily,
# never a credential (PGPASSWORD, AWS_*, tokens): an allowlist, not a denylist, so a
# secret added to the worker's environment later does not reach commands either.
PASSED_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TZ", "USER", "LOGNAME", "SHELL",
              "TMPDIR", "TERM")


def base_environment(worker_env: Mapping[str, str],
                     pass_env: tuple[str, ...] = ()) -> dict[str, str]:
    """The part of the worker's environment commands get (PASSED_ENV plus ``pass_env``,
    CHRONOSYNC_PASS_ENV); CHRONOSYNC_* settings never, whatever is asked."""
    patterns = PASSED_ENV + pass_env
    return {k: v for k, v in worker_env.items()
            if name_matches(k, patterns) and not k.startswith("CHRONOSYNC_")}


@dataclass(frozen=True, kw_only=True)
class RunResult:
    succeeded: bool
    exit_code: int | None
    error: str | None  # None, "exit N", "timeout", "cancelled", "worker_lost", "spawn: ..."
    output: str


def gate_fault(*, run_as: RunAs | None = None, sandbox: Sandbox | None = None) -> str | None:
    """None if the spawn gate works where this worker's commands run (a deadline ahead
    lets a command through, one passed stops it), else what is wrong: a /proc/uptime
    that is not the host's boot time (lxcfs in some containers) would let every late
    spawn through, or stop every spawn. Tried once, at the worker's start."""
    for ahead, should_run in ((60.0, True), (-1.0, False)):
        deadline = time.monotonic() + ahead
        try:
            result = CommandRun(command="echo ran", env={"PATH": os.defpath}, cwd="/",
                                timeout_s=30, kill_grace_s=1, run_as=run_as,
                                sandbox=sandbox, spawn_by=lambda d=deadline: d,
                                trial=True).run()
        except Exception as exc:  # a trial must never keep a worker from starting
            return f"the trial failed: {type(exc).__name__}: {exc}"
        if (result.output == "ran\n") != should_run:
            return (f"a trial command {'with' if should_run else 'past'} time to spawn "
                    f"{'did not run' if should_run else 'ran'} ({result.error or 'ok'}: "
                    f"{result.output.strip()[-200:]!r}): /proc/uptime is not the "
                    "clock the worker reads (CLOCK_BOOTTIME)")
    return None


def _gated_off(gate: int) -> bool:
    """Whether the shell wrote its refusal on the gate's pipe (it has exited by now)."""
    try:
        return os.read(gate, 1) != b""
    except BlockingIOError:
        return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is already empty
    except PermissionError:
        pass  # only possible once the group id was reused by someone else's process


class CommandRun:
    def __init__(self, *, command: str, env: Mapping[str, str], cwd: str,
                 timeout_s: float | None, kill_grace_s: float,
                 reaper: Reaper | None = None, run_as: RunAs | None = None,
                 sandbox: Sandbox | None = None, identity: tuple[str, ...] = (),
                 guard: Callable[[], str | None] | None = None,
                 spawn_by: Callable[[], float] | None = None, trial: bool = False) -> None:
        """``identity``: names of ``env`` only this run's processes carry; the reaper finds
        them by it should the worker die between the spawn and reporting its group.
        ``guard``: asked right before the spawn and right after it; None while the run may
        go on, else why it must not (before: it never spawns; after: it is stopped).
        ``spawn_by``: the monotonic instant after which the command must not start, as
        the guard last found it; the child checks it itself (``gated``), and a run gated
        off asks the guard again and is spawned anew (at most SPAWN_TRIES times).
        ``trial``: the worker's own trial run, which never pauses at a failpoint."""
        self._command = command
        self._trial = trial
        self._spawn_by = spawn_by
        self.gated_off = 0  # spawns whose gate found the deadline past
        self._reaper = reaper
        self._identity = tuple(f"{name}={env[name]}" for name in identity)
        self._guard = guard
        self._run_as = run_as
        self._sandbox = sandbox
        self._env = dict(env)
        if run_as is not None:
            self._env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
        self._cwd = cwd
        self._timeout_s = timeout_s
        self._kill_grace_s = kill_grace_s
        self._lock = threading.Lock()
        self._stop_reason: str | None = None  # "timeout" or "cancelled", once decided
        self._kill_at: float | None = None  # monotonic instant for SIGKILL after SIGTERM
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False
        self._reaped = False  # the shell was waited for: its pid may name another group
        self._proc: subprocess.Popen[bytes] | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        """Terminate the run (from any thread); a run not yet spawned never spawns.

        ``reason`` becomes the run's error: "cancelled", or "worker_lost" when the worker
        gives the task up (shutdown, or the claim was taken from it)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            if not self._closed:
                os.eventfd_write(self._wake, 1)

    def kill_now(self, reason: str = "worker_lost") -> None:
        """SIGKILL the run's process group at once, from any thread, with no grace: its
        lease ran out (``chronocore.fence``). A run not yet spawned never spawns. When
        this returns, the signal has been sent."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._kill_at = time.monotonic()  # the run's own loop sends no SIGTERM first
            if self._proc is not None and not self._reaped:
                # The shell is not reaped yet, so its pid still names this group.
                _killpg(self._proc.pid, signal.SIGKILL)
            if not self._closed:
                os.eventfd_write(self._wake, 1)

    def run(self) -> RunResult:
        """Spawn the command and wait for it; never raises for the command's failures."""
        try:
            for _ in range(SPAWN_TRIES):
                result = self._spawn_and_wait()
                if result is not None:
                    return result
                # Gated off (the child found the deadline past): ask the guard again once
                # this clock agrees (the gate's rounds to a hundredth of a second).
                self.gated_off += 1
                assert self._spawn_by is not None
                # Event.wait, not time.sleep: the nodes' one way to wait (the latter fails
                # under libfaketime, see test_clock_skew).
                threading.Event().wait(min(0.02, max(0.0, self._spawn_by() - time.monotonic())))
            return RunResult(succeeded=False, exit_code=None,
                             error="spawn: claim not confirmed in time", output="")
        finally:
            with self._lock:
                self._closed = True
                os.close(self._wake)

    def _spawn_and_wait(self) -> RunResult | None:
        """One spawn and its wait; None when its gate refused the command (nothing ran)."""
        # Asked outside the lock: it may take a round trip, and cancel() must not wait.
        refused = self._guard() if self._guard is not None else None
        gate = None  # the read end of the gate's pipe
        with self._lock:
            self._stop_reason = self._stop_reason or refused
            if self._stop_reason is not None:
                return RunResult(succeeded=False, exit_code=None,
                                 error=self._stop_reason, output="")
            ticket = (self._reaper.expect(self._identity)
                      if self._reaper is not None else None)
            # The window the gate closes: checked, not spawned, nothing can stop it now.
            if not self._trial:
                failpoints.pause(failpoints.BEFORE_SPAWN)
            stdin: int = subprocess.DEVNULL
            try:
                command = self._command
                if self._spawn_by is not None:
                    gate, stdin = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                    command = gated(command, self._spawn_by())
                argv = ["/bin/sh", "-c", command]
                if self._sandbox is not None:
                    argv = self._sandbox.wrap(argv)
                if self._run_as is not None:
                    argv = self._run_as.wrap(argv)
                self._proc = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=self._cwd,
                    env=self._env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                if gate is not None:
                    os.close(gate)
                if self._reaper is not None and ticket is not None:
                    self._reaper.forget(ticket, self._identity)
                return RunResult(succeeded=False, exit_code=None,
                                 error=f"spawn: {exc}", output="")
            finally:
                if stdin != subprocess.DEVNULL:
                    os.close(stdin)
            self._reaped = False  # a new shell: its pid names its group again
            if self._reaper is not None and ticket is not None:
                self._reaper.spawned(ticket, self._proc.pid, self._identity)
        try:
            if not self._trial:
                failpoints.pause(failpoints.AFTER_SPAWN)
            if self._reaper is not None:
                self._reaper.watch(self._proc.pid, self._identity)
            if self._guard is not None and (reason := self._guard()) is not None:
                self.cancel(reason)  # paused between the guard and the spawn
            try:
                result = self._wait(self._proc)
            finally:
                if self._reaper is not None:
                    self._reaper.unwatch(self._proc.pid)
            return None if gate is not None and _gated_off(gate) else result
        finally:
            if gate is not None:
                os.close(gate)

    def _wait(self, proc: subprocess.Popen[bytes]) -> RunResult:
        assert proc.stdout is not None
        pgid = proc.pid  # start_new_session: the shell leads its own group
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        tail = bytearray()
        pidfd = os.pidfd_open(proc.pid)
        out_fd = proc.stdout.fileno()
        poller = select.poll()
        for fd in (out_fd, pidfd, self._wake):
            poller.register(fd, select.POLLIN)
        exited = at_eof = reported = False
        try:
            while not exited:
                now = time.monotonic()
                self._escalate(now=now, deadline=deadline, pgid=pgid)
                wake_at = self._kill_at if self._kill_at is not None else deadline
                timeout_ms = (None if wake_at in (None, _NEVER)
                              else max(0, math.ceil((wake_at - now) * 1000)))
                for fd, _ in poller.poll(timeout_ms):
                    if fd == out_fd:
                        if not self._read_into(out_fd, tail):
                            poller.unregister(out_fd)
                            at_eof = True
                    elif fd == pidfd:
                        exited = True
                    else:
                        os.eventfd_read(self._wake)
            with self._lock:
                returncode = proc.wait()
                self._reaped = True
            # Anything the shell left running in its group dies with the run.
            _killpg(pgid, signal.SIGKILL)
            if not at_eof:
                at_eof = not self._read_available(out_fd, tail)
            if self._reaper is not None:
                # Output still held open: something of the run is still alive, maybe out
                # of its group; the worker looks for it now.
                reported = True
                self._reaper.reaped(proc.pid, leftovers=not at_eof)
            if not at_eof:
                self._drain(out_fd, tail)
        finally:
            os.close(pidfd)
            proc.stdout.close()
            if proc.returncode is None:  # only on an unexpected error above
                _killpg(pgid, signal.SIGKILL)
                with self._lock:
                    proc.wait()
                    self._reaped = True
            if self._reaper is not None and not reported:
                self._reaper.reaped(proc.pid, leftovers=True)
        output = output_text(bytes(tail))
        exit_code = returncode if returncode >= 0 else 128 - returncode
        if self._stop_reason is not None:
            return RunResult(succeeded=False, exit_code=exit_code, error=self._stop_reason,
                             output=output)
        if exit_code == 0:
            return RunResult(succeeded=True, exit_code=0, error=None, output=output)
        return RunResult(succeeded=False, exit_code=exit_code, error=f"exit {exit_code}",
                         output=output)

    def _escalate(self, *, now: float, deadline: float | None, pgid: int) -> None:
        """Timeout or cancel: SIGTERM the group once, SIGKILL it after the grace period."""
        if deadline is not None and now >= deadline and self._kill_at is None:
            with self._lock:
                self._stop_reason = self._stop_reason or "timeout"
        if self._stop_reason is not None and self._kill_at is None:
            _killpg(pgid, signal.SIGTERM)
            self._kill_at = now + self._kill_grace_s
        if self._kill_at is not None and now >= self._kill_at:
            _killpg(pgid, signal.SIGKILL)
            self._kill_at = _NEVER

    @classmethod
    def _drain(cls, fd: int, tail: bytearray) -> None:
        """Read what is left after the group died; a writer that escaped the group (a new
        session of its own) cannot hold the run open for longer than _DRAIN_S."""
        os.set_blocking(fd, False)
        give_up_at = time.monotonic() + _DRAIN_S
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while (left := give_up_at - time.monotonic()) > 0:
                if sel.select(left) and not cls._read_into(fd, tail):
                    return

    @classmethod
    def _read_available(cls, fd: int, tail: bytearray) -> bool:
        """Read what is there without waiting; False at EOF."""
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            tail.extend(chunk)
            if len(tail) > OUTPUT_TAIL_BYTES:
                del tail[: len(tail) - OUTPUT_TAIL_BYTES]

    @staticmethod
    def _read_into(fd: int, tail: bytearray) -> bool:
        """Read one chunk into the bounded tail; False at EOF."""
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EINTR)
        if not chunk:
            return False
        tail.extend(chunk)
        if len(tail) > OUTPUT_TAIL_BYTES:
            del tail[: len(tail) - OUTPUT_TAIL_BYTES]
        return True
