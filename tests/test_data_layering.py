"""Issue 12 problem 8: the data package reads bottom-up (no import circle).

The prepared format (``prepared.py``) and the safe writing (``staging.py``) import no
dataset module; the dataset modules import them; ``prepare.py`` (the CLI) sits on top.
Checked on the source text (every ``import``, including those inside functions).
"""

from __future__ import annotations

import ast
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "hdmnet_core" / "data"
DATASET_MODULES = {"pascal", "coco", "fss1000"}


def data_imports(module: str) -> set[str]:
    """The ``hdmnet_core.data`` modules that ``module`` imports anywhere in its text."""
    tree = ast.parse((DATA / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hdmnet_core.data":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("hdmnet_core.data."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.split(".")[2] for a in node.names if a.name.startswith("hdmnet_core.data.")
            }
    return found - {module}


def test_shared_helpers_import_no_dataset_module() -> None:
    for module in ("prepared", "staging", "source", "download", "splits"):
        assert not data_imports(module) & (DATASET_MODULES | {"prepare"}), module


def test_the_data_modules_form_no_import_circle() -> None:
    modules = {path.stem for path in DATA.glob("*.py") if path.stem != "__init__"}
    graph = {module: data_imports(module) & modules for module in modules}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in visiting, " -> ".join((*path, module))
        if module in order:
            return
        visiting.add(module)
        for imported in sorted(graph[module]):
            visit(imported, (*path, module))
        visiting.discard(module)
        order.append(module)

    for module in sorted(modules):
        visit(module, ())
    assert order.index("prepared") < order.index("staging") < order.index("pascal")
    assert order.index("pascal") < order.index("prepare")
