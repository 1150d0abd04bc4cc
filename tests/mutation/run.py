"""`make mutation-test`: break each guarantee on purpose, one at a time, and check that the
test named for it goes red.

The mutations are listed in ``mutations.toml`` beside this file: each names a file, a text
that must occur there exactly once, its replacement, the guarantee it breaks and the tests
that must fail. The repository is copied once to a scratch directory (the working tree is
never touched); each mutation is applied alone to the copy, its named tests run with the
copy's sources first on ``sys.path``, and the file is put back. A mutation whose named tests
pass is run against a broader set of tests to tell "caught only by others" from "missed".
Exit status 0 only if every mutation that is run was caught by its own tests, every anchor
still applies, and the unmutated baseline passes.

    .venv/bin/python tests/mutation/run.py            # all of them
    .venv/bin/python tests/mutation/run.py --ci       # the subset CI runs
    .venv/bin/python tests/mutation/run.py NAME ...   # some, by name
    .venv/bin/python tests/mutation/run.py --list     # what there is
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).with_name("mutations.toml")
# Not copied: the virtualenv (the copy's sources are put first on sys.path instead), VCS
# data, caches and local run data.
NOT_COPIED = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", ".dev", "*.pyc", "node_modules")
GUARANTEES_HEADING = "## Guarantees, in plain words"
# After SIGINT (pytest then runs its teardowns, which stop the cluster's nodes), how long
# a timed-out run may take to end before it is killed.
INTERRUPT_GRACE_S = 60.0

# Checks the list itself, not behaviour: a mutation removes its own anchor, so this test
# would "catch" every one; never counted as a catch.
LIST_CHECK = "tests/unit/test_mutation_list.py"

CAUGHT = "caught by named test"
CAUGHT_BY_OTHERS = "caught only by others"
MISSED = "missed"
NOT_APPLIED = "does not apply"
BROKEN = "broken"  # the named tests could not run (collection error, unknown test id)


@dataclass(frozen=True)
class Edit:
    file: str
    find: str
    replace: str


@dataclass(frozen=True)
class Mutation:
    name: str
    guarantee: str
    what: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...] = ()
    others: tuple[str, ...] = ()
    timeout_s: float = 0.0
    ci: bool = False
    equivalent: str | None = None  # why it cannot change behaviour: listed, not run


@dataclass
class Result:
    mutation: Mutation
    outcome: str
    seconds: float = 0.0
    detail: str = ""
    logs: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    timeout_s: float
    others: tuple[str, ...]
    guarantees: dict[str, str]


def load(path: Path = LIST) -> tuple[Settings, list[Mutation]]:
    data = tomllib.loads(path.read_text())
    settings = Settings(timeout_s=float(data["settings"]["timeout_s"]),
                        others=tuple(data["settings"]["others"]),
                        guarantees=dict(data["guarantees"]))
    mutations = []
    for raw in data["mutation"]:
        edits = raw.get("edits") or [{"file": raw["file"], "find": raw["find"],
                                      "replace": raw["replace"]}]
        mutations.append(Mutation(
            name=raw["name"], guarantee=raw["guarantee"], what=raw["what"],
            edits=tuple(Edit(e["file"], e["find"], e["replace"]) for e in edits),
            tests=tuple(raw.get("tests", ())), others=tuple(raw.get("others", ())),
            timeout_s=float(raw.get("timeout_s", 0)), ci=bool(raw.get("ci", False)),
            equivalent=raw.get("equivalent")))
    return settings, mutations


def readme_guarantees(readme: str) -> list[str]:
    """The bold titles of the bullets under the README's guarantees heading."""
    section = readme.split(GUARANTEES_HEADING, 1)[1].split("\n## ", 1)[0]
    return [m.rstrip(".") for m in re.findall(r"^- \*\*(.+?)\*\*", section, re.MULTILINE)]


def check_list(settings: Settings, mutations: list[Mutation], readme: str) -> list[str]:
    """What is wrong with the list itself (empty when it is sound)."""
    problems = []
    names = [m.name for m in mutations]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"mutation {name!r} is listed twice")
    for title in readme_guarantees(readme):
        if title not in settings.guarantees:
            problems.append(f"README guarantee {title!r} is missing from [guarantees]")
    for name, words in settings.guarantees.items():
        if words not in readme:
            problems.append(f"guarantee {name!r}: the README no longer says {words!r}")
        if not any(m.guarantee == name and m.equivalent is None for m in mutations):
            problems.append(f"guarantee {name!r} has no mutation that is run")
    for m in mutations:
        if m.guarantee not in settings.guarantees:
            problems.append(f"mutation {m.name!r}: unknown guarantee {m.guarantee!r}")
        if m.equivalent is None and not m.tests:
            problems.append(f"mutation {m.name!r} names no test")
    return problems


def source_dirs(tree: Path) -> list[Path]:
    return sorted([*tree.glob("libs/*/src"), *tree.glob("services/*/src")])


def scratch_environment(tree: Path, dsn: str | None) -> dict[str, str]:
    """The copy's sources first on sys.path (ahead of .venv's editable installs of the
    working tree), for pytest and every node process it starts; no bytecode written, so
    a file put back is never run from a cache of its mutated self."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(str(p) for p in source_dirs(tree)),
           "PYTHONDONTWRITEBYTECODE": "1"}
    if dsn is not None:
        env["CHRONOSYNC_TEST_DSN"] = dsn
    return env


PACKAGES = ("chronocore", "chronosync_dev", "chronosync_scheduler",
            "chronosync_coordinator", "chronosync_worker")


def check_imports(tree: Path, env: dict[str, str]) -> str:
    """Where the copy's interpreter finds each package; fails unless all are in the copy."""
    code = "; ".join(f"import {p}; print({p}.__file__)" for p in PACKAGES)
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True,
                         capture_output=True, text=True).stdout
    for package, where in zip(PACKAGES, out.split(), strict=True):
        if not Path(where).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{package} imports from {where}, not from the copy {tree}")
    return out.split()[0]


@contextmanager
def shared_postgres() -> Iterator[str | None]:
    """One PostgreSQL for every run (each pytest session makes its own databases on it),
    unless CHRONOSYNC_TEST_DSN already names one. It runs from the working tree's
    chronosync_dev, which no mutation touches."""
    if os.environ.get("CHRONOSYNC_TEST_DSN"):
        yield None
        return
    from chronosync_dev.pgcluster import FAST_TEST_SETTINGS, LocalCluster

    base = Path(tempfile.mkdtemp(prefix="chronosync-mutation-pg-"))
    base.chmod(0o755)  # under root the server runs as an unprivileged user
    try:
        with LocalCluster(datadir=base / "pgdata", settings=FAST_TEST_SETTINGS) as server:
            yield server.dsn()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_pytest(tree: Path, env: dict[str, str], tests: tuple[str, ...], *, timeout_s: float,
               log: Path, stop_first: bool = True) -> tuple[int | None, float]:
    """Run pytest on ``tests`` in the copy; returns (exit status or None on timeout,
    seconds). Its output goes to ``log``."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--ignore", LIST_CHECK, *(["-x"] if stop_first else []), *tests]
    began = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s), time.monotonic() - began
        except KeyboardInterrupt:  # pytest runs in its own session: pass the Ctrl-C on
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait()
            raise
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # pytest tears its clusters down
            try:
                proc.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return None, time.monotonic() - began


def summary_line(log: Path) -> str:
    """pytest's last line (e.g. "1 failed, 2 passed in 9.1s")."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def failed_tests(log: Path) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", log.read_text(errors="replace"),
                      re.MULTILINE)


def apply(tree: Path, mutation: Mutation) -> dict[Path, str] | str:
    """Apply every edit to the copy; returns the originals to restore, or why not."""
    originals: dict[Path, str] = {}
    for edit in mutation.edits:
        path = tree / edit.file
        if not path.exists():
            return f"{edit.file} does not exist"
        originals.setdefault(path, path.read_text())
        current = path.read_text()
        count = current.count(edit.find)
        if count != 1:
            restore(originals)
            return f"its text occurs {count} times in {edit.file}, not once"
        path.write_text(current.replace(edit.find, edit.replace))
    return originals


def applies(tree: Path, mutation: Mutation) -> str:
    """"yes", or why not, without changing anything."""
    for edit in mutation.edits:
        path = tree / edit.file
        count = path.read_text().count(edit.find) if path.exists() else 0
        if count != 1:
            return f"no: found {count} times in {edit.file}"
    return "yes"


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def try_mutation(tree: Path, env: dict[str, str], settings: Settings, mutation: Mutation,
                 logs: Path) -> Result:
    applied = apply(tree, mutation)
    if isinstance(applied, str):
        return Result(mutation, NOT_APPLIED, detail=applied)
    timeout_s = mutation.timeout_s or settings.timeout_s
    try:
        named_log = logs / f"{mutation.name}.log"
        status, seconds = run_pytest(tree, env, mutation.tests, timeout_s=timeout_s,
                                     log=named_log)
        if status is None:
            return Result(mutation, CAUGHT, seconds,
                          f"named tests still running after {timeout_s:.0f}s (hung)",
                          [named_log])
        if status == 1:
            return Result(mutation, CAUGHT, seconds,
                          ", ".join(failed_tests(named_log)) or summary_line(named_log),
                          [named_log])
        if status != 0:
            return Result(mutation, BROKEN, seconds,
                          f"pytest exit {status}: {summary_line(named_log)}", [named_log])
        others_log = logs / f"{mutation.name}.others.log"
        status, more = run_pytest(tree, env, mutation.others or settings.others,
                                  timeout_s=timeout_s * 4, log=others_log)
        seconds += more
        if status == 0:
            return Result(mutation, MISSED, seconds, "no test failed",
                          [named_log, others_log])
        caught_by = failed_tests(others_log)
        if caught_by:  # a test that fails without the mutation too caught nothing
            restore(applied)
            again_log = logs / f"{mutation.name}.others-unmutated.log"
            status, more = run_pytest(tree, env, tuple(caught_by), timeout_s=timeout_s,
                                      log=again_log, stop_first=False)
            seconds += more
            if status != 0:
                return Result(mutation, MISSED, seconds,
                              f"{', '.join(caught_by)} failed, but fails unmutated too",
                              [named_log, others_log, again_log])
        return Result(mutation, CAUGHT_BY_OTHERS, seconds,
                      ", ".join(caught_by) or summary_line(others_log), [named_log, others_log])
    finally:
        restore(applied)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--ci", action="store_true", help="only the mutations marked ci")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch copy and the logs (their path is printed)")
    args = parser.parse_args(argv)

    settings, mutations = load()
    problems = check_list(settings, mutations, (ROOT / "README.md").read_text())
    if args.list:
        print(table([["mutation", "guarantee", "ci", "applies", "what"]]
                    + [[m.name, m.guarantee, "yes" if m.ci else "", applies(ROOT, m),
                        m.what + (f"  [equivalent: {m.equivalent}]" if m.equivalent else "")]
                       for m in mutations]))
        print("\n".join(f"  - {p}" for p in problems))
        return 1 if problems else 0
    if problems:
        print("The mutation list is out of step with the code or the README:")
        print("\n".join(f"  - {p}" for p in problems))
        return 2
    unknown = set(args.names) - {m.name for m in mutations}
    if unknown:
        print(f"no such mutation: {', '.join(sorted(unknown))} (see --list)")
        return 2
    chosen = [m for m in mutations
              if (not args.names or m.name in args.names) and (not args.ci or m.ci)]
    to_run = [m for m in chosen if m.equivalent is None]
    equivalent = [m for m in chosen if m.equivalent is not None]

    scratch = Path(tempfile.mkdtemp(prefix="chronosync-mutation-"))
    scratch.chmod(0o755)  # some tests run nodes as an unprivileged user, from this copy
    tree, logs = scratch / "repo", scratch / "logs"
    logs.mkdir()
    began = time.monotonic()
    try:
        shutil.copytree(ROOT, tree, ignore=NOT_COPIED, symlinks=True)
        with shared_postgres() as dsn:
            env = scratch_environment(tree, dsn)
            print(f"scratch copy: {tree}")
            print(f"chronocore imported from: {check_imports(tree, env)}")
            results: list[Result] = []
            for m in equivalent:  # not run, but their anchors must still hold
                applied = apply(tree, m)
                if isinstance(applied, str):
                    results.append(Result(m, NOT_APPLIED, detail=applied))
                else:
                    restore(applied)
            baseline = tuple(dict.fromkeys(t for m in to_run for t in m.tests))
            print(f"baseline: {len(baseline)} named tests, unmutated ...", flush=True)
            status, seconds = run_pytest(tree, env, baseline, log=logs / "baseline.log",
                                         timeout_s=settings.timeout_s * 4, stop_first=False)
            print(f"baseline: {summary_line(logs / 'baseline.log')} ({seconds:.0f}s)")
            if status != 0:
                print("The named tests fail without any mutation; fix that first:")
                print("\n".join(f"  {t}" for t in failed_tests(logs / "baseline.log")))
                print((logs / "baseline.log").read_text(errors="replace")[-6000:])
                args.keep = True
                return 1
            for i, m in enumerate(to_run, 1):
                print(f"[{i}/{len(to_run)}] {m.name} ...", end=" ", flush=True)
                result = try_mutation(tree, env, settings, m, logs)
                print(f"{result.outcome} ({result.seconds:.0f}s)", flush=True)
                results.append(result)
    finally:
        if args.keep:
            print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(table([["mutation", "guarantee", "result", "time"]]
                + [[r.mutation.name, r.mutation.guarantee, r.outcome,
                    f"{r.seconds:.0f}s" if r.seconds else "-"] for r in results]))
    bad = [r for r in results if r.outcome != CAUGHT]
    for r in results:
        if r.detail and r.outcome != CAUGHT:
            print(f"\n{r.mutation.name}: {r.outcome}: {r.detail}")
    if equivalent:
        print("\nEquivalent (cannot change behaviour; listed, not run):")
        for m in equivalent:
            print(f"  {m.name} ({m.guarantee}): {m.equivalent}")
    caught = sum(r.outcome == CAUGHT for r in results)
    print(f"\n{caught}/{len(to_run)} caught by their own tests, {len(equivalent)} equivalent; "
          f"{time.monotonic() - began:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
