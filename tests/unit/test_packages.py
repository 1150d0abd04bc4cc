"""Libraries are imported, services are run, tools stand apart: chronocore holds the
domain only, and neither it nor a service imports the tools' package (chronosync_dev),
which the image would not need to run a node."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = "chronosync_dev"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_neither_the_domain_library_nor_a_service_imports_the_tools() -> None:
    sources = [*ROOT.glob("libs/chronocore/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]
    assert len(sources) > 20, "the scan sees the sources"
    offenders = {str(path.relative_to(ROOT)): sorted(
                     name for name in imported_modules(path)
                     if name == TOOLS or name.startswith(TOOLS + "."))
                 for path in sources}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_command_line_the_dev_cluster_and_ephemeral_postgres_live_with_the_tools() -> None:
    domain = ROOT / "libs/chronocore/src/chronocore"
    tools = ROOT / "libs/chronosync-dev/src" / TOOLS
    for module in ("cli.py", "devcluster.py", "pgcluster.py"):
        assert not (domain / module).exists(), f"chronocore/{module} is tooling"
        assert (tools / module).is_file()
