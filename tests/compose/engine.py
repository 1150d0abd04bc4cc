"""A Docker engine for the compose scenario, and the base images the project's files name.

The engine: the one that answers (DOCKER_HOST or the default socket), else Debian's
`dockerd` started here on a private socket with its own data root, exec root and pid file
(vfs storage: works on any filesystem), stopped — and its directory removed — at the end.

The base images: `python:3.11-slim` and `postgres:16-alpine` as the engine has them or can
pull them; else stand-ins built from Debian bookworm packages with debootstrap (their
rootfs tarballs are cached under .cache/compose-test/, so the next run skips debootstrap).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "compose-test"
HERE = Path(__file__).resolve().parent
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The certificate authorities this host adds (a TLS-inspecting proxy's, say): a build's
# `pip install` in a stand-in reaches PyPI as pip on this host does.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")

# name -> (packages for debootstrap, `docker import --change` lines)
STAND_INS = {
    "python:3.11-slim": (
        ["python3", "python3-pip", "python-is-python3", "ca-certificates"],
        # As in the official image: `python` and `pip`, installing for the whole system.
        ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "ENV LANG=C.UTF-8", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", 'CMD ["python3"]'],
    ),
    "postgres:16-alpine": (
        ["postgresql-15", "postgresql-client-15"],
        ["ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
         "/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8", "ENV PGDATA=/var/lib/postgresql/data",
         'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]', "EXPOSE 5432"],
    ),
}
# Not needed in a container, and each image layer is a full copy with vfs.
TRIM = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
        "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*",
        # PostgreSQL's JIT (LLVM, ~100 MB): without it queries run as without JIT.
        "usr/lib/postgresql/15/lib/llvmjit*", "usr/lib/*-linux-gnu/libLLVM-*"]


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, timeout=timeout, capture_output=True,
                          input=stdin.decode() if stdin is not None else None, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


class Engine:
    """`docker` with DOCKER_HOST pointing at the engine in use (``self.env``)."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.own_dir: Path | None = None
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.had_bridge = True

    @property
    def owned(self) -> bool:
        return self.own_dir is not None

    def answers(self) -> bool:
        try:
            return run(["docker", "info"], env=self.env, timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self) -> str:
        if self.answers():
            return f"the Docker engine that answers ({self.env.get('DOCKER_HOST', 'default')})"
        if shutil.which("dockerd") is None:
            raise RuntimeError("no Docker engine answers and there is no dockerd to start "
                               "(Debian: apt-get install docker.io)")
        # Short: containerd's sockets live under the exec root (108-byte socket paths).
        self.own_dir = Path(tempfile.mkdtemp(prefix="csdk-"))
        self.had_bridge = Path("/sys/class/net/docker0").exists()
        self.env["DOCKER_HOST"] = f"unix://{self.own_dir}/docker.sock"
        self.start_daemon()
        return f"a private dockerd on {self.env['DOCKER_HOST']} (vfs storage)"

    def start_daemon(self) -> None:
        assert self.own_dir is not None
        d = self.own_dir
        log = open(d / "dockerd.log", "ab")  # noqa: SIM115 - the daemon keeps it
        self.dockerd = subprocess.Popen(
            ["dockerd", "-H", self.env["DOCKER_HOST"], "--data-root", str(d / "data"),
             "--exec-root", str(d / "exec"), "--pidfile", str(d / "docker.pid"),
             "--storage-driver", "vfs"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.daemon_log()}")
            time.sleep(0.5)

    def stop_daemon(self) -> None:
        """SIGTERM (dockerd stops its containers, then itself), SIGKILL after 60 s."""
        if self.dockerd is None or self.dockerd.poll() is not None:
            return
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait(timeout=30)

    def daemon_log(self, lines: int = 40) -> str:
        if self.own_dir is None or not (self.own_dir / "dockerd.log").exists():
            return ""
        text = (self.own_dir / "dockerd.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop a daemon started here and remove everything it wrote."""
        if self.own_dir is None:
            return
        self.stop_daemon()
        self._kill_leftovers()
        run(["sh", "-c", f"grep -o ' {self.own_dir}[^ ]*' /proc/mounts | sort -r "
             "| xargs -r -n1 umount -l"], check=False)
        shutil.rmtree(self.own_dir, ignore_errors=True)
        self.own_dir = None
        if not self.had_bridge and Path("/sys/class/net/docker0").exists():
            run(["ip", "link", "delete", "docker0"], check=False)

    def _kill_leftovers(self) -> None:
        """containerd and its shims, if the daemon died without stopping them."""
        assert self.own_dir is not None
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.own_dir).encode() in cmdline:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def docker(self, *args: str, timeout: float = 120, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, timeout=timeout, check=check)

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def base_images(self, names: list[str]) -> str:
        """Make sure the engine has ``names``; say where they came from, in one line."""
        missing = [n for n in names if not self.has_image(n)]
        pulled = []
        for name in missing:
            try:
                if self.docker("pull", name, timeout=300, check=False).returncode == 0:
                    pulled.append(name)
                    continue
            except subprocess.TimeoutExpired:
                pass
            break  # no registry: no point trying the others
        stand_ins = [n for n in missing if n not in pulled]
        for name in stand_ins:
            self._build_stand_in(name)
        if stand_ins:
            return (f"no registry answered: stand-ins for {', '.join(stand_ins)} built from "
                    "Debian bookworm packages (debootstrap)")
        return "base images " + ("pulled" if pulled else "already in the engine")

    def _build_stand_in(self, name: str) -> None:
        packages, changes = STAND_INS[name]
        entrypoint = (HERE / "postgres-entrypoint.sh").read_bytes()
        cas = sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []
        key = hashlib.sha256(repr((packages, TRIM)).encode() + entrypoint + b"".join(
            ca.read_bytes() for ca in cas)).hexdigest()[:12]
        tarball = CACHE / f"{name.replace(':', '-')}-bookworm-{key}.tar"
        if not tarball.exists():
            self._debootstrap(packages, entrypoint, cas, tarball)
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        with open(tarball, "rb") as rootfs:
            imported = subprocess.run([*argv, "-", name], stdin=rootfs, env=self.env,
                                      capture_output=True, timeout=600)
        if imported.returncode != 0:
            raise RuntimeError(f"docker import {tarball}: {imported.stderr.decode()}")

    def _debootstrap(self, packages: list[str], entrypoint: bytes, cas: list[Path],
                     tarball: Path) -> None:
        if shutil.which("debootstrap") is None:
            raise RuntimeError("no registry answers and there is no debootstrap to build "
                               "stand-in base images (Debian: apt-get install debootstrap)")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run(["debootstrap", "--variant=minbase", "--include=" + ",".join(packages),
                 "bookworm", str(rootfs), MIRROR], timeout=1200)
            self._finish_rootfs(rootfs, entrypoint, cas, tarball)

    @staticmethod
    def _finish_rootfs(rootfs: Path, entrypoint: bytes, cas: list[Path],
                       tarball: Path) -> None:
        """Trim, add the entrypoint and this host's CAs, and cache as ``tarball``."""
        run(["sh", "-c", "cd " + shlex.quote(str(rootfs)) + " && rm -rf " + " ".join(TRIM)])
        script = rootfs / "usr/local/bin/docker-entrypoint.sh"
        script.write_bytes(entrypoint)
        script.chmod(0o755)
        if cas and (rootfs / "usr/sbin/update-ca-certificates").exists():
            for ca in cas:
                shutil.copy(ca, rootfs / "usr/local/share/ca-certificates")
            run(["chroot", str(rootfs), "update-ca-certificates"])
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            timeout=600)
        partial.rename(tarball)
