"""Mutual TLS between coordinators (and schedulers, for cancels) and workers.

A cluster CA signs every node's certificate. A worker with TLS configured accepts gRPC
calls only from a peer presenting a certificate from that CA, and its own certificate
must name ``WORKER_TLS_NAME`` (callers check it, whatever address they dial). Without TLS
a worker listens on loopback only. Paths come from CHRONOSYNC_TLS_CA, CHRONOSYNC_TLS_CERT
and CHRONOSYNC_TLS_KEY; ``make_certs`` writes a throwaway set for development and tests.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc

from chronocore.config import Config, ConfigError

# The name every worker certificate carries, so a caller can verify it whatever address
# (IP, pod name) the worker advertises.
WORKER_TLS_NAME = "chronosync-worker"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_config(cls, config: Config) -> TlsFiles | None:
        given = [config.tls_ca, config.tls_cert, config.tls_key]
        if not any(given):
            return None
        if not all(given):
            raise ConfigError("set all of CHRONOSYNC_TLS_CA, CHRONOSYNC_TLS_CERT and "
                              "CHRONOSYNC_TLS_KEY, or none")
        files = cls(Path(config.tls_ca), Path(config.tls_cert), Path(config.tls_key))
        for path in (files.ca, files.cert, files.key):
            if not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        return files

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def open_channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    """A channel to a worker: mutual TLS when configured, plain on loopback otherwise."""
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(
        address, tls.channel_credentials(),
        options=[("grpc.ssl_target_name_override", WORKER_TLS_NAME)],
    )


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(directory: Path, *, nodes: tuple[str, ...] = ("node",)) -> dict[str, TlsFiles]:
    """A throwaway CA and one certificate per name in ``nodes`` (each usable by a worker
    and by its callers), with the openssl command line. Returns name -> files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "30",
             "-subj", "/CN=chronosync-dev-ca")
    made = {}
    for name in nodes:
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{WORKER_TLS_NAME},DNS:localhost,IP:127.0.0.1\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "30", "-extfile", str(ext))
        for leftover in (csr, ext):
            leftover.unlink()
        key.chmod(0o600)
        made[name] = TlsFiles(ca_cert, cert, key)
    ca_key.chmod(0o600)
    return made
