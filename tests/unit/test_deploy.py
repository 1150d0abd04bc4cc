"""The deployment files agree with the code: docker-compose.yml, the Dockerfile, the
Makefile's ``up`` and the Kubernetes manifests in deploy/k8s/ name only console scripts the
packages declare, environment variables the code reads (with values it accepts), ports
the processes listen on and routes the scheduler serves without a token. Pure file checks:
no Docker engine, no cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from chronocore.config import Config, is_loopback, split_host_port
from chronocore.tls import make_certs
from chronosync_dev.cli import cmd_certs, parser
from chronosync_scheduler.http import UNAUTHENTICATED_PATHS, Routes

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ROLES = {"scheduler": "chronosync-scheduler", "coordinator": "chronosync-coordinator",
         "worker": "chronosync-worker"}
EXPECTED_REPLICAS = {"scheduler": 2, "coordinator": 2, "worker": 3}
TLS_NAMES = ("CHRONOSYNC_TLS_CA", "CHRONOSYNC_TLS_CERT", "CHRONOSYNC_TLS_KEY")
ENV_NAME = re.compile(r"\bCHRONOSYNC_[A-Z0-9_]*[A-Z0-9]\b")
SECRET = "<from a secret>"  # an env value the files do not show (secretKeyRef)


def load_yaml(path: Path) -> list[Any]:
    """The documents in ``path``, as Kubernetes and compose read them (YAML 1.1: ``0440``
    is octal, merge keys merge)."""
    return list(yaml.safe_load_all(path.read_text()))


# --- what the code says -----------------------------------------------------------------


@cache
def console_scripts() -> dict[str, str]:
    """Console script -> the package directory whose pyproject.toml declares it."""
    scripts = {}
    for pyproject in sorted(ROOT.glob("*/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for script in project.get("scripts", {}):
            scripts[script] = pyproject.parent.relative_to(ROOT).as_posix()
    return scripts


@cache
def names_the_code_reads() -> frozenset[str]:
    """Every ``"CHRONOSYNC_*"`` string in the sources, but those only set for commands.
    The test harness counts too: the Makefile sets what it reads (make test-pgbouncer)."""
    names = set()
    sources = [*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py"),
               ROOT / "tests/conftest.py", ROOT / "tests/integration/harness.py"]
    for path in sources:
        for line in path.read_text().splitlines():
            for name in re.findall(r'"(CHRONOSYNC_[A-Z0-9_]+)"', line):
                if not re.search(rf'\["{name}"\]\s*=[^=]', line):
                    names.add(name)
    return frozenset(names)


def shutdown_grace_default() -> float:
    return Config(dsn="").shutdown_grace_s


def unauthenticated_get_paths() -> set[str]:
    """Paths the scheduler serves on GET without a token (what probes can reach)."""
    routes = [p for m, p in Routes(api=None).described() if m == "GET"]  # type: ignore[arg-type]
    return {path for path in UNAUTHENTICATED_PATHS
            if any(re.fullmatch(pattern, path) for pattern in routes)}


def nodes_columns() -> set[str]:
    sql = "\n".join(p.read_text() for p in
                    sorted((ROOT / "libs/chronocore/src/chronocore/migrations").glob("*.sql")))
    columns = set()
    table = re.search(r"CREATE TABLE nodes \((.*?)\n\);", sql, re.S)
    assert table, "the migrations create the nodes table"
    columns.update(re.findall(r"^\s+([a-z_]+)\s", table.group(1), re.M))
    columns.update(re.findall(r"ALTER TABLE nodes ADD COLUMN (?:IF NOT EXISTS )?([a-z_]+)", sql))
    return columns


@cache
def certs_files() -> tuple[str, str, str]:
    """The (CA, certificate, key) file names `chronosync certs DIR` writes."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with tempfile.TemporaryDirectory() as directory:
        args = parser().parse_args(["certs", directory])
        assert args.func is cmd_certs
        files = make_certs(Path(directory))["node"]  # what cmd_certs writes
        for path in (files.ca, files.cert, files.key):
            assert path.is_file()
        return files.ca.name, files.cert.name, files.key.name


def check_python_one_liner(argv: list[str], where: str) -> None:
    """A ``python -c CODE`` health check compiles, and what it asks of PostgreSQL exists."""
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, f"{where}: {argv}"
    compile(argv[2], where, "exec")
    if "FROM nodes" in argv[2]:
        sql = re.search(r"'(SELECT .*? FROM nodes .*?)'", argv[2])
        assert sql, f"{where}: the query is one single-quoted string"
        words = set(re.findall(r"\b([a-z_]+)\b", sql.group(1))) - {
            "nodes", "now", "make_interval", "secs", "s"}
        missing = words - nodes_columns()
        assert not missing, f"{where}: no such columns in nodes: {sorted(missing)}"


def startup_problems(role: str, env: Mapping[str, str]) -> list[str]:
    """Why the process of ``role`` would refuse to start with ``env`` (the code's rules)."""
    concrete = {k: ("x" if v == SECRET else v.replace("$(POD_IP)", "10.0.0.7"))
                for k, v in env.items()}
    try:
        config = Config.from_env(concrete)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    tls = [name for name in TLS_NAMES if env.get(name)]
    if tls and len(tls) != len(TLS_NAMES):
        problems.append("TLS: set all of CA, CERT and KEY, or none")
    if role == "scheduler":
        host, _ = split_host_port(config.http_addr, name="CHRONOSYNC_HTTP_ADDR")
        if not is_loopback(host) and config.api_token is None and not config.insecure:
            problems.append(f"scheduler on {config.http_addr} without CHRONOSYNC_API_TOKEN")
    if role == "worker":
        host, _ = split_host_port(config.worker_addr, name="CHRONOSYNC_WORKER_ADDR")
        if not is_loopback(host) and not tls and not config.insecure:
            problems.append(f"worker on {config.worker_addr} without TLS")
    return problems


def port_of(addr: str, name: str) -> int:
    return split_host_port(addr, name=name)[1]


def seconds(duration: str | int) -> float:
    """A compose duration ("40s", "1m30s") or a number of seconds."""
    if isinstance(duration, int):
        return duration
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    hours, minutes, secs = (float(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def assert_every_name_is_read(paths: list[Path]) -> None:
    read = names_the_code_reads()
    assert {"CHRONOSYNC_DSN", "CHRONOSYNC_HTTP_ADDR", "CHRONOSYNC_SHUTDOWN_GRACE_S"} <= read
    for path in paths:
        unknown = set(ENV_NAME.findall(path.read_text())) - read
        assert not unknown, f"{path.relative_to(ROOT)} names variables no code reads: " \
                            f"{sorted(unknown)}"


# --- the Dockerfile and the Makefile ------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def dockerfile_uid() -> int:
    users = [args for instr, args in dockerfile() if instr == "USER"]
    assert users, "the Dockerfile sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "USER is numeric, so Kubernetes' runAsNonRoot can check it"
    return int(uid)


def installed_packages() -> set[str]:
    """Package directories (as in the repository) the image pip-installs."""
    copies, installed, workdir = {}, set(), "/"
    for instr, args in dockerfile():
        if instr == "WORKDIR":
            workdir = args
        elif instr == "COPY" and not args.startswith("--"):
            source, dest = args.split()
            copies[(Path(workdir) / dest).as_posix()] = source.rstrip("/")
        elif instr == "RUN" and "pip install" in args:
            for word in shlex.split(args.split("pip install", 1)[1].split("&&")[0]):
                target = (Path(workdir) / word).as_posix()
                for dest, source in copies.items():
                    if target == dest or target.startswith(dest + "/"):
                        installed.add(source + target[len(dest):])
    return installed


def test_the_dockerfile_runs_as_a_fixed_non_root_user() -> None:
    uid = dockerfile_uid()
    assert uid != 0
    runs = " ".join(args for instr, args in dockerfile() if instr == "RUN")
    assert re.search(rf"useradd\b[^&]*--uid {uid}\b", runs), "the USER's uid is created"
    if uid > 999:  # --system ids end at SYS_UID_MAX (999): useradd warns, groupadd too
        assert not re.search(r"\b(useradd|groupadd)\b[^&]*--system", runs), runs


def test_the_image_runs_an_init_that_reaps_what_commands_leave_behind() -> None:
    """A command's background child outlives it, re-parented to PID 1: without an init
    there, the node never waits for it, and each is a zombie until the container restarts."""
    runs = " ".join(args for instr, args in dockerfile() if instr == "RUN")
    entrypoints = [json.loads(args) for instr, args in dockerfile() if instr == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1][:1] == ["tini"], "tini is the image's PID 1"
    assert re.search(r"apt-get install\b[^&]*\btini\b", runs), "the image installs tini"
    for name, svc in compose_services().items():
        assert "entrypoint" not in svc, f"compose {name} replaces the init"


def test_the_image_installs_every_package_the_commands_need() -> None:
    base = next(args for instr, args in dockerfile() if instr == "FROM")
    version = re.match(r"python:(\d+)\.(\d+)", base)
    assert version, f"a python base image: {base}"
    for package in set(console_scripts().values()):
        requires = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]
        minimum = re.match(r">=(\d+)\.(\d+)", requires["requires-python"])
        assert minimum and tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups()))
    needed = {console_scripts()[script] for script in used_commands()}
    missing = needed - installed_packages()
    assert not missing, f"the Dockerfile does not install {sorted(missing)}"
    runs = " ".join(args for instr, args in dockerfile() if instr == "RUN")
    assert re.search(r"apt-get install [^&]*\bopenssl\b", runs), "`chronosync certs` needs openssl"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignored = [line.strip().rstrip("/") for line in
               (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for instr, args in dockerfile():
        if instr == "COPY" and not args.startswith("--"):
            source = args.split()[0].rstrip("/")
            for pattern in ignored:
                assert not ("*" not in pattern and (source == pattern
                                                    or source.startswith(pattern + "/"))), \
                    f".dockerignore drops {source}, which the Dockerfile copies"


def make_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M)
    assert match, f"the Makefile has a {target} target"
    return re.sub(r"\\\n\t*", " ", match.group(1))


def test_make_up_keeps_its_token_in_a_git_ignored_env_file_that_make_down_reads(
        tmp_path: Path) -> None:
    """make up makes a token once and keeps it in .env (compose reads it from there):
    `ps`, `down` and the next `make up` use the same token without being given it."""
    def make(target: str, **env: str) -> str:
        argv = ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), target,
                "COMPOSE=echo compose", "ARGS=-v"]
        clean = {k: v for k, v in os.environ.items() if k != "CHRONOSYNC_API_TOKEN"}
        return subprocess.run(argv, env={**clean, **env}, capture_output=True, text=True,
                              check=True).stdout

    env_file = tmp_path / ".env"
    out = make("up")
    (token,) = re.findall(r"^CHRONOSYNC_API_TOKEN=(\w{16,})$", env_file.read_text(), re.M)
    assert token in out and "compose up --build" in out
    assert env_file.stat().st_mode & 0o077 == 0, "only its owner reads the token"
    make("up")
    assert env_file.read_text() == f"CHRONOSYNC_API_TOKEN={token}\n", "the token is reused"
    env_file.unlink()
    make("up", CHRONOSYNC_API_TOKEN="given-token-0123456789")
    assert env_file.read_text() == "CHRONOSYNC_API_TOKEN=given-token-0123456789\n"
    assert make("down").split() == ["compose", "down", "-v"]
    for ignore in (".gitignore", ".dockerignore"):
        lines = (ROOT / ignore).read_text().splitlines()
        assert ".env" in lines, f"{ignore} keeps the token's .env out"


def published_port(mapping: str) -> tuple[str, str, str]:
    """A compose ports entry -> (host address as by default, host port, container port)."""
    mapping = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", mapping)
    match = re.fullmatch(r"(?:(.+):)?(\d+):(\d+)", mapping)
    assert match, f"a HOST:PORT:PORT mapping: {mapping}"
    return match.group(1) or "0.0.0.0", match.group(2), match.group(3)


def test_make_up_builds_and_starts_the_compose_cluster_with_what_it_needs() -> None:
    recipe = make_recipe("up")
    assert re.search(r"\$\(COMPOSE\) up --build\b", recipe)
    required = {name for name, modifier in
                re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}",
                           (ROOT / "docker-compose.yml").read_text())
                if not modifier.lstrip(":").startswith(("-", "+"))}
    for name in required:
        assert re.search(rf"\b{name}=", recipe), f"make up does not set {name} for compose"
    published = {int(published_port(port)[1]) for svc in compose_services().values()
                 for port in svc.get("ports", [])}
    for port in re.findall(r"localhost:(\d+)", recipe):
        assert int(port) in published, f"make up points at localhost:{port}, not published"


# --- docker-compose.yml -------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    (document,) = load_yaml(ROOT / "docker-compose.yml")
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # As compose interpolates them when the variable is unset: ${NAME:-default}.
    return {k: re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(v))
            for k, v in env.items()}


def compose_nodes(role: str) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose_services().items()
            if svc.get("command", [None])[0] == ROLES[role]}


def one_shots() -> set[str]:
    return {dependency for svc in compose_services().values()
            for dependency, how in (svc.get("depends_on") or {}).items()
            if isinstance(how, dict) and how.get("condition") == "service_completed_successfully"}


def mount_targets(service: dict[str, Any]) -> dict[str, str]:
    """Volume mounts: target -> volume name (short syntax)."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}


def used_commands() -> set[str]:
    """Console scripts compose and the manifests run."""
    commands = set()
    for svc in compose_services().values():
        command = svc.get("command") or []
        if command and command[0] in console_scripts():
            commands.add(command[0])
        commands.update(w for w in shlex.split(" ".join(command)) if w in console_scripts())
    for _, container in k8s_containers():
        commands.add(container["args"][0])
    return commands


def test_every_environment_name_in_the_deployment_files_is_read_by_the_code() -> None:
    assert_every_name_is_read([ROOT / "docker-compose.yml", ROOT / "Dockerfile",
                               ROOT / "Makefile", *sorted(K8S.rglob("*.yaml")),
                               K8S / "README.md"])


def test_compose_runs_postgres_2_schedulers_2_coordinators_and_3_workers() -> None:
    services = compose_services()
    assert any(svc.get("image", "").startswith("postgres:") for svc in services.values())
    for role, expected in EXPECTED_REPLICAS.items():
        count = sum(svc.get("deploy", {}).get("replicas", 1)
                    for svc in compose_nodes(role).values())
        assert count == expected, f"compose runs {count} {role}s"


def test_compose_commands_are_console_scripts_and_nodes_share_the_built_image() -> None:
    images = set()
    for name, svc in compose_services().items():
        command = svc.get("command")
        if svc.get("image", "").startswith("postgres:"):
            continue
        assert command, f"{name} names its command"
        words = shlex.split(" ".join(command)) if command[0] == "sh" else command
        assert any(w in console_scripts() for w in words), f"{name}: {command}"
        if command[0] != "sh":
            assert command[0] in console_scripts(), f"{name}: no console script {command[0]}"
        images.add(svc.get("image"))
        assert svc.get("build") == ".", f"{name} is built from the Dockerfile"
    assert len(images) == 1, f"one image for every node: {images}"


def test_compose_nodes_reach_postgres_and_start() -> None:
    services = compose_services()
    for role in ROLES:
        for name, svc in compose_nodes(role).items():
            env = compose_env(svc)
            assert not startup_problems(role, env), f"{name}: {startup_problems(role, env)}"
            host = conninfo_to_dict(env["CHRONOSYNC_DSN"]).get("host")
            assert host in services and services[host]["image"].startswith("postgres:")
            assert svc["depends_on"][host]["condition"] == "service_healthy"
            assert "healthcheck" in services[host]


def test_compose_nodes_use_the_certificates_the_certs_service_writes() -> None:
    ca, cert, key = certs_files()
    services = compose_services()
    (certs,) = [name for name, svc in services.items()
                if re.search(r"\bchronosync certs\b", " ".join(svc.get("command", [])))]
    directory = re.search(r"\bchronosync certs (\S+)", " ".join(services[certs]["command"]))
    assert directory
    written = mount_targets(services[certs]).get(directory.group(1))
    assert written, "the certs service writes into a volume"
    for role in ROLES:
        for name, svc in compose_nodes(role).items():
            env = compose_env(svc)
            assert all(env.get(n) for n in TLS_NAMES), f"{name}: workers need mutual TLS"
            for variable, file in zip(TLS_NAMES, (ca, cert, key), strict=True):
                path = Path(env[variable])
                assert path.name == file, f"{name}: {variable} is not {file}"
                assert mount_targets(svc).get(path.parent.as_posix()) == written, \
                    f"{name}: {path.parent} is not the certs volume"
            assert svc["depends_on"][certs]["condition"] == "service_completed_successfully"


def test_every_long_running_compose_service_has_a_healthcheck() -> None:
    for name, svc in compose_services().items():
        if name in one_shots():
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        if test[0] == "CMD" and test[1] == "python":
            check_python_one_liner(test[1:], f"compose {name} healthcheck")


def test_compose_ports_and_healthchecks_agree_with_the_listen_addresses() -> None:
    published = []
    for name, svc in compose_nodes("scheduler").items():
        addr = compose_env(svc).get("CHRONOSYNC_HTTP_ADDR", Config(dsn="x").http_addr)
        host, port = split_host_port(addr, name="CHRONOSYNC_HTTP_ADDR")
        assert host in ("0.0.0.0", "::"), f"{name} listens on {addr}: unreachable from the host"
        for mapping in svc["ports"]:
            host_addr, host_port, container_port = published_port(mapping)
            # Plain HTTP: only this host, unless PUBLISH_ADDR opens it on purpose.
            assert host_addr == "127.0.0.1", f"{name} publishes {mapping} beyond this host"
            assert int(container_port) == port, f"{name} publishes {mapping}, listens on {port}"
            published.append(int(host_port))
        url = re.search(r"http://(127\.0\.0\.1|localhost):(\d+)(/\w+)",
                        " ".join(svc["healthcheck"]["test"]))
        assert url and int(url.group(2)) == port, f"{name}'s healthcheck misses port {port}"
        assert url.group(3) in unauthenticated_get_paths(), f"{name}: {url.group(3)}"
    assert len(published) == len(set(published)), f"host ports collide: {published}"
    for name, svc in compose_nodes("worker").items():
        addr = compose_env(svc)["CHRONOSYNC_WORKER_ADDR"]
        port = port_of(addr, "CHRONOSYNC_WORKER_ADDR")
        assert port != 0, f"{name}: a fixed port, for the healthcheck"
        test = " ".join(svc["healthcheck"]["test"])
        assert re.search(rf"'127\.0\.0\.1',\s*{port}\)", test), f"{name}'s healthcheck port"


def test_every_long_running_compose_service_comes_back_after_a_docker_restart() -> None:
    """PostgreSQL too: else after a host reboot the nodes loop on resolving it."""
    for name, svc in compose_services().items():
        if name not in one_shots():
            assert svc.get("restart") in ("always", "unless-stopped"), f"{name} stays down"


def test_compose_sets_each_worker_containers_capacity() -> None:
    """The default, 2 x CPUs, counts the host's CPUs in every container."""
    for name, svc in compose_nodes("worker").items():
        value = compose_env(svc).get("CHRONOSYNC_WORKER_CAPACITY", "")
        assert value.isdigit() and int(value) > 0, f"{name}: capacity {value!r}"


def test_compose_gives_stopping_workers_their_shutdown_grace() -> None:
    for name, svc in compose_nodes("worker").items():
        grace = float(compose_env(svc).get("CHRONOSYNC_SHUTDOWN_GRACE_S",
                                           shutdown_grace_default()))
        stop = seconds(svc.get("stop_grace_period", "10s"))
        assert stop > grace, f"{name}: stop_grace_period {stop}s <= shutdown grace {grace}s"


# --- deploy/k8s ---------------------------------------------------------------------------


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    """What `kubectl apply -f deploy/k8s/` applies (not subdirectories)."""
    objects = []
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("*.yml"), *K8S.glob("*.json")]):
        for document in load_yaml(path):
            assert {"apiVersion", "kind", "metadata"} <= set(document), path
            assert "namespace" not in document["metadata"], f"{path}: namespace-less"
            objects.append(document)
    return tuple(objects)


def k8s(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in k8s_objects() if obj["kind"] == kind]


def deployment(role: str) -> dict[str, Any]:
    found = [d for d in k8s("Deployment")
             if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == ROLES[role]]
    assert len(found) == 1, f"one Deployment runs {ROLES[role]}: {len(found)}"
    return found[0]


def k8s_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for d in k8s("Deployment"):
        for container in d["spec"]["template"]["spec"]["containers"]:
            yield d, container


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(container: dict[str, Any]) -> dict[str, str]:
    configmaps = {c["metadata"]["name"]: c["data"] for c in k8s("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"only ConfigMaps in envFrom: {source}"
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"no ConfigMap {name} in deploy/k8s"
        env.update({k: str(v) for k, v in configmaps[name].items()})
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"]) if "value" in item else SECRET
    return env


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"{container['name']} has no port named {port}"
    return named[port]


def volume_mounts(deployment: dict[str, Any], container: dict[str, Any]) -> dict[str, dict]:
    """mountPath -> {"volume": <the pod volume>, "readOnly": bool}."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"no volume {mount['name']}"
        mounts[mount["mountPath"]] = {"volume": volumes[mount["name"]],
                                      "readOnly": mount.get("readOnly", False)}
    return mounts


def test_a_deployment_per_service_running_its_console_script_from_the_image() -> None:
    image = next(iter(compose_nodes("scheduler").values()))["image"]
    assert len(k8s("Deployment")) == len(ROLES)
    for role, replicas in EXPECTED_REPLICAS.items():
        d = deployment(role)
        assert d["spec"]["replicas"] == replicas, f"{role}: {d['spec']['replicas']} replicas"
        (container,) = d["spec"]["template"]["spec"]["containers"]
        # args, not command: a command would replace the image's init (its ENTRYPOINT).
        assert "command" not in container, f"{role}: command replaces the ENTRYPOINT"
        assert container["args"] == [ROLES[role]]
        assert container["args"][0] in console_scripts()
        assert container["image"] == image, f"{role} runs {container['image']}, not {image}"
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selects(d["spec"]["selector"]["matchLabels"], labels)
        for other in k8s("Deployment"):
            if other is not d:
                assert not selects(d["spec"]["selector"]["matchLabels"],
                                   other["spec"]["template"]["metadata"]["labels"])


def test_k8s_nodes_get_settings_the_code_accepts() -> None:
    tls_roles = set()
    for role in ROLES:
        (container,) = deployment(role)["spec"]["template"]["spec"]["containers"]
        env = container_env(container)
        assert not startup_problems(role, env), f"{role}: {startup_problems(role, env)}"
        if all(env.get(n) for n in TLS_NAMES):
            tls_roles.add(role)
        names = [item["name"] for item in container.get("env", [])]
        for position, item in enumerate(container.get("env", [])):
            for ref in re.findall(r"\$\((\w+)\)", str(item.get("value", ""))):
                assert ref in names[:position], f"{role}: $({ref}) is not defined before use"
    if "worker" in tls_roles:
        assert tls_roles == set(ROLES), "callers need TLS to reach TLS workers"


def test_k8s_secret_references_exist_in_the_example_secret_with_placeholders() -> None:
    examples = [doc for path in sorted((K8S / "secret").glob("*.yaml"))
                for doc in load_yaml(path) if doc["kind"] == "Secret"]
    assert examples, "deploy/k8s/secret/ holds an example Secret"
    assert not k8s("Secret"), "no Secret with placeholders in what `kubectl apply` applies"
    keys = {(s["metadata"]["name"], k) for s in examples
            for k in {**s.get("stringData", {}), **s.get("data", {})}}
    for s in examples:
        for key, value in s.get("stringData", {}).items():
            assert "REPLACE_ME" in value, f"{key}: a placeholder clearly marked"
    for _, container in k8s_containers():
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert (ref["name"], ref["key"]) in keys, f"no {ref} in the example Secret"
                assert ref["key"] == item["name"]


def test_the_scheduler_is_probed_on_healthz_and_readyz_and_served_on_its_port() -> None:
    d = deployment("scheduler")
    (container,) = d["spec"]["template"]["spec"]["containers"]
    port = port_of(container_env(container)["CHRONOSYNC_HTTP_ADDR"], "CHRONOSYNC_HTTP_ADDR")
    assert [p["containerPort"] for p in container["ports"]] == [port]
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path
        assert resolve_port(container, probe["port"]) == port
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe_name in container:
            probe = container[probe_name]["httpGet"]
            assert probe["path"] in unauthenticated_get_paths(), \
                f"{probe_name} {probe['path']}: not served without a token"
            assert resolve_port(container, probe["port"]) == port
    (service,) = [s for s in k8s("Service")
                  if selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    for other in ("coordinator", "worker"):
        labels = deployment(other)["spec"]["template"]["metadata"]["labels"]
        assert not selects(service["spec"]["selector"], labels)
    for service_port in service["spec"]["ports"]:
        assert resolve_port(container, service_port.get("targetPort",
                                                        service_port["port"])) == port


def test_workers_listen_advertise_and_are_probed_on_one_grpc_port() -> None:
    (container,) = deployment("worker")["spec"]["template"]["spec"]["containers"]
    env = container_env(container)
    port = port_of(env["CHRONOSYNC_WORKER_ADDR"], "CHRONOSYNC_WORKER_ADDR")
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert env["CHRONOSYNC_WORKER_ADVERTISE_ADDR"] == f"$(POD_IP):{port}"
    (pod_ip,) = [item for item in container["env"] if item["name"] == "POD_IP"]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for probe_name in ("livenessProbe", "readinessProbe"):
        assert resolve_port(container, container[probe_name]["tcpSocket"]["port"]) == port
    assert "startupProbe" not in container or resolve_port(
        container, container["startupProbe"]["tcpSocket"]["port"]) == port


def test_coordinators_are_ready_while_they_heartbeat() -> None:
    (container,) = deployment("coordinator")["spec"]["template"]["spec"]["containers"]
    command = container["readinessProbe"]["exec"]["command"]
    check_python_one_liner(command, "coordinator readinessProbe")
    assert "'coordinator'" in command[2]


def test_every_deployment_requests_resources_and_runs_non_root_read_only() -> None:
    """Schedulers and coordinators run as the image's user; workers start as root with
    only the capabilities to run commands as another user (checked below)."""
    uid = dockerfile_uid()
    for d, container in k8s_containers():
        name = d["metadata"]["name"]
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{name}: requests"
        assert "memory" in resources.get("limits", {}), f"{name}: a memory limit"
        pod = d["spec"]["template"]["spec"]
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        if container["args"][0] != ROLES["worker"]:
            assert security.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
            assert security.get("runAsUser") == uid, f"{name}: runAsUser is the image's {uid}"
        assert security.get("allowPrivilegeEscalation") is False, name
        assert security.get("readOnlyRootFilesystem") is True, name
        assert security.get("capabilities", {}).get("drop") == ["ALL"], name
        assert pod.get("automountServiceAccountToken") is False, f"{name}: no API token"


def image_users() -> dict[str, int]:
    """Users the Dockerfile creates: name -> uid."""
    runs = " ".join(args for instr, args in dockerfile() if instr == "RUN")
    return {m.group(2): int(m.group(1)) for m in
            re.finditer(r"useradd\b[^&]*?--uid (\d+)\b[^&]*?\s([a-z][a-z0-9-]*)\s*(?:&&|$)",
                        runs)}


# What a worker needs to run commands as another user: switch to it, and signal it.
WORKER_CAPABILITIES = {"SETUID", "SETGID", "KILL"}


def assert_commands_run_as_their_own_user(where: str, env: Mapping[str, str]) -> None:
    users = image_users()
    run_as = env.get("CHRONOSYNC_RUN_AS")
    assert run_as in users, f"{where}: CHRONOSYNC_RUN_AS names a user the image makes"
    assert users[run_as] not in (0, dockerfile_uid()), \
        f"{where}: commands must not share a node's uid"


def test_k8s_workers_run_commands_as_a_user_of_their_own() -> None:
    d = deployment("worker")
    (container,) = d["spec"]["template"]["spec"]["containers"]
    security = container["securityContext"]
    assert security["runAsUser"] == 0 and security["runAsNonRoot"] is False
    assert set(security["capabilities"]["add"]) <= WORKER_CAPABILITIES
    assert_commands_run_as_their_own_user("k8s worker", container_env(container))
    tls = volume_mounts(d, container)["/certs"]["volume"]["secret"]
    assert tls["defaultMode"] & 0o007 == 0, "the TLS Secret is not readable by others"


def test_compose_workers_run_commands_as_a_user_of_their_own() -> None:
    runs = " ".join(args for instr, args in dockerfile() if instr == "RUN")
    for name, svc in compose_nodes("worker").items():
        assert str(svc["user"]).split(":")[0] == "0", f"{name}: starts as root"
        assert svc["cap_drop"] == ["ALL"], name
        assert set(svc["cap_add"]) <= WORKER_CAPABILITIES, name
        env = compose_env(svc)
        assert_commands_run_as_their_own_user(name, env)
        workdir = env["CHRONOSYNC_WORKDIR"]
        assert re.search(rf"mkdir {workdir}\b", runs), f"{name}: the image makes {workdir}"


def test_the_ca_key_never_leaves_the_certs_step() -> None:
    ca, _, key = certs_files()
    ca_key = Path(ca).with_suffix(".key").name
    services = compose_services()
    (certs,) = [name for name, svc in services.items()
                if re.search(r"\bchronosync certs\b", " ".join(svc.get("command", [])))]
    command = " ".join(services[certs]["command"])
    directory = re.search(r"\bchronosync certs (\S+)", command).group(1)  # type: ignore[union-attr]
    assert f"rm -f {directory}/{ca_key}" in command, "the certs step removes the CA key"
    assert f"chmod 0640 {directory}/{key}" in command, "the node key is not world-readable"
    readme = (K8S / "README.md").read_text()
    assert f"--from-file=./certs/{ca_key}" not in readme


def test_a_pod_disruption_budget_per_deployment() -> None:
    budgets = k8s("PodDisruptionBudget")
    for d in k8s("Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, f"{d['metadata']['name']}: {len(mine)} budgets"
        assert 1 <= mine[0]["spec"]["minAvailable"] < d["spec"]["replicas"], \
            f"{d['metadata']['name']}: minAvailable must leave room to drain a node"
    assert len(budgets) == len(k8s("Deployment"))


def test_k8s_files_the_code_opens_are_mounted() -> None:
    ca, cert, key = certs_files()
    readme = (K8S / "README.md").read_text()
    for d, container in k8s_containers():
        name = d["metadata"]["name"]
        env = container_env(container)
        mounts = volume_mounts(d, container)
        for variable, file in zip(TLS_NAMES, (ca, cert, key), strict=True):
            path = Path(env[variable])
            assert path.name == file, f"{name}: {variable} is not {file}"
            mount = mounts.get(path.parent.as_posix())
            assert mount, f"{name}: nothing mounted at {path.parent}"
            secret = mount["volume"]["secret"]["secretName"]
            assert secret == "chronosync-tls", f"{name}: TLS from {secret}"
            assert f"--from-file=./certs/{file}" in readme, f"README: the {file} key"
        if container["securityContext"].get("readOnlyRootFilesystem"):
            assert mounts.get("/tmp", {}).get("readOnly") is False, f"{name}: a writable /tmp"
    (worker,) = deployment("worker")["spec"]["template"]["spec"]["containers"]
    workdir = container_env(worker).get("CHRONOSYNC_WORKDIR")
    assert workdir, "the worker's commands get a working directory"
    mount = volume_mounts(deployment("worker"), worker).get(workdir)
    assert mount and mount["readOnly"] is False and "emptyDir" in mount["volume"], \
        f"{workdir} is a writable emptyDir"
    assert "kubectl apply -f deploy/k8s/" in readme
    assert "chronosync certs ./certs" in readme
    assert "kubectl create secret generic chronosync-tls" in readme


def test_k8s_workers_get_their_shutdown_grace() -> None:
    d = deployment("worker")
    (container,) = d["spec"]["template"]["spec"]["containers"]
    grace = float(container_env(container).get("CHRONOSYNC_SHUTDOWN_GRACE_S",
                                               shutdown_grace_default()))
    termination = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    assert termination > grace, f"terminationGracePeriodSeconds {termination} <= {grace}"
