"""Dependency direction, read from the source with ``ast``: the service never imports the
sandbox (only the CLI may, to dispatch the sandbox commands), and the sandbox builds the service
through ``consumer.service``, never through the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imports(path: Path, target: str) -> bool:
    return any(m == target or m.startswith(f"{target}.") for m in imported_modules(path))


SERVICE_MODULES = sorted(
    p for p in PACKAGE.rglob("*.py") if "sandbox" not in p.relative_to(PACKAGE).parts
)
SANDBOX_MODULES = sorted((PACKAGE / "sandbox").rglob("*.py"))


def test_the_scan_sees_the_package() -> None:
    names = {module_name(p) for p in SERVICE_MODULES}
    assert {"consumer.cli", "consumer.service", "consumer.pipeline", "consumer.kafka"} <= names
    assert "consumer.sandbox.demo" in {module_name(p) for p in SANDBOX_MODULES}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("import consumer.sandbox.api", True, id="import"),
        pytest.param("from consumer.sandbox import demo", True, id="from-package"),
        pytest.param("from consumer.sandbox.broker import free_port", True, id="from-module"),
        pytest.param("def f():\n    from consumer import sandbox\n", True, id="lazy-name"),
        pytest.param("from consumer import service", False, id="other"),
        pytest.param("import consumer.sandboxes", False, id="prefix-only"),
    ],
)
def test_the_detector(tmp_path: Path, source: str, expected: bool) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports(path, "consumer.sandbox") is expected


def test_only_the_cli_imports_the_sandbox() -> None:
    offenders = [
        module_name(p)
        for p in SERVICE_MODULES
        if module_name(p) != "consumer.cli" and imports(p, "consumer.sandbox")
    ]
    assert offenders == []
    assert imports(PACKAGE / "cli.py", "consumer.sandbox")  # it dispatches the demo


def test_the_sandbox_never_imports_the_cli() -> None:
    offenders = [module_name(p) for p in SANDBOX_MODULES if imports(p, "consumer.cli")]
    assert offenders == []
    assert imports(PACKAGE / "sandbox" / "demo.py", "consumer.service")
