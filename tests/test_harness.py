"""The development harness (devkit/) is the one place that may touch ``sys.path`` and that spells process argv.

bench/, scripts/ and tests/ import the harness through pytest's ``pythonpath`` option or ``python -m`` from the
repository root; none of them edits ``sys.path``, and the library never ships the harness.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from devkit.launcher import serve_argv, worker_argv

ROOT = Path(__file__).resolve().parent.parent
HARNESS = "devkit"
#: Every folder of Python the project runs, besides the installed packages.
WALKED = ("bench", "scripts", "tests", HARNESS)
_MUTATORS = {"insert", "append", "extend", "remove", "pop", "clear", "__setitem__", "__delitem__", "__iadd__"}


def _is_sys_path(node: ast.AST) -> bool:
    """``sys.path`` as an attribute of the name ``sys``."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def sys_path_edits(source: str, filename: str = "<string>") -> list[int]:
    """Line numbers where ``source`` changes ``sys.path``: a mutating call, an assignment or an item assignment."""
    lines = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _MUTATORS and _is_sys_path(node.func.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                inner = target.value if isinstance(target, ast.Subscript) else target
                if _is_sys_path(inner):
                    lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize(
    ("source", "edits"),
    [
        ("import sys\nsys.path.insert(0, 'x')\n", [2]),
        ("import sys\nsys.path.append('x')\n", [2]),
        ("import sys\nsys.path.extend(['x'])\n", [2]),
        ("import sys\nsys.path = ['x']\n", [2]),
        ("import sys\nsys.path += ['x']\n", [2]),
        ("import sys\nsys.path[:0] = ['x']\n", [2]),
        ("import sys\nprint(sys.path, 'x' in sys.path)\n", []),
        ("import os\nos.path.join('a', 'b')\n", []),
    ],
)
def test_the_check_sees_every_kind_of_sys_path_edit(source: str, edits: list[int]) -> None:
    """The AST check finds calls, assignments and augmented or sliced assignments, and ignores reads."""
    assert sys_path_edits(source) == edits


def test_no_sys_path_edits_outside_the_harness() -> None:
    """No module of bench/, scripts/ or tests/ edits sys.path (the harness itself does not either)."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for folder in WALKED
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line in sys_path_edits(path.read_text(encoding="utf-8"), str(path))
        if path.relative_to(ROOT).parts[0] != HARNESS
    ]
    assert found == []


def test_the_harness_is_not_installed_with_the_library() -> None:
    """pyproject.toml's package list leaves devkit (and bench, tests) out, and pytest finds it on its pythonpath."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(HARNESS.startswith(pattern.rstrip("*")) for pattern in include)
    assert "." in config["tool"]["pytest"]["ini_options"]["pythonpath"]


#: The words that make an argv a cluster node's or a worker's command line (CLI refusal tests spell less).
NODE_WORDS = frozenset({"serve", "--peers"})
WORKER_WORDS = frozenset({"run", "--coordinator"})


def test_only_the_launcher_spells_serve_and_run() -> None:
    """No list literal outside devkit/launcher.py spells a ``serve ... --peers`` or ``run --coordinator`` argv."""
    found = []
    for folder in WALKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / HARNESS / "launcher.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.List):
                    words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                    if words >= NODE_WORDS or words >= WORKER_WORDS:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_the_launcher_builds_both_command_lines(tmp_path: Path) -> None:
    """serve_argv and worker_argv name the subcommand, join the peers and pass optional flags only when given."""
    serve = serve_argv(
        node_id="n0", raft="h:1", peers=["h:2", "h:3"], http="h:4", data_dir=tmp_path, prefix=["ip", "netns"]
    )
    assert serve[:2] == ["ip", "netns"] and serve[serve.index("serve") + 1 :] == [
        "--node-id",
        "n0",
        "--raft",
        "h:1",
        "--peers",
        "h:2,h:3",
        "--http",
        "h:4",
        "--data-dir",
        str(tmp_path),
    ]
    run = worker_argv(coordinators=["http://a", "http://b"], source="synthetic", storage="memory://", concurrency=2)
    assert run[run.index("run") + 1 :] == [
        "--coordinator",
        "http://a,http://b",
        "--source",
        "synthetic",
        "--storage",
        "memory://",
        "--concurrency",
        "2",
    ]


def test_the_library_never_imports_the_harness() -> None:
    """No module of coordinator/, worker/, provider/ or ops/ imports devkit (it is not installed with them)."""
    found = []
    for package in ("coordinator", "worker", "provider", "ops"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == HARNESS]
    assert found == []
