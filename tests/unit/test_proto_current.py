"""The committed gRPC code is what ``make proto`` generates from proto/ right now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "chronocore/rpc/worker.proto"
COMMITTED = ROOT / "libs/chronocore/src/chronocore/rpc"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_committed_grpc_code_matches_the_proto(tmp_path: Path) -> None:
    # The same invocation as the Makefile's `proto` target, into a temporary directory.
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"proto/{PROTO}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    generated_dir = tmp_path / Path(PROTO).parent
    generated = sorted(p.name for p in generated_dir.iterdir())
    assert generated, "protoc generated nothing"

    stale = [name for name in generated
             if not (COMMITTED / name).exists()
             or (COMMITTED / name).read_bytes() != (generated_dir / name).read_bytes()]
    assert not stale, (
        f"{', '.join(stale)} in {COMMITTED.relative_to(ROOT)} differ from what"
        f" proto/{PROTO} generates: run `make proto` and commit the result"
    )
    leftover = sorted(p.name for p in COMMITTED.iterdir()
                      if p.name.endswith(GENERATED_SUFFIXES) and p.name not in generated)
    assert not leftover, (
        f"generated files no proto produces any more: {leftover}; run `make proto`"
        " and delete them"
    )
