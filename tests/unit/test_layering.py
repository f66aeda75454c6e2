"""The package layers: tables/ is the storage layer and imports nothing from app/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_tables_imports_nothing_from_app() -> None:
    offending = {
        f"{path.name}: {module}"
        for path in sorted((ROOT / "tables").glob("*.py"))
        for module in _imported_modules(path)
        if module == "app" or module.startswith("app.")
    }
    assert not offending


_LIBRARIES = ("faust", "mode", "aiokafka")
#: Classes of the libraries that are meant to be subclassed.
_PUBLIC_BASES = {"web.View", "faust.web.View", "View"}


def _library_names(tree: ast.Module) -> set[str]:
    """Names bound by importing faust, mode or aiokafka (or something from them)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _LIBRARIES:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _LIBRARIES:
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_only_app_upstream_subclasses_the_libraries_classes() -> None:
    # A subclass overrides by name, so it may reach private internals: it belongs in app/upstream/.
    offending: list[str] = []
    paths = [*(ROOT / "app").rglob("*.py"), *(ROOT / "tables").glob("*.py")]
    for path in sorted(paths):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("app/upstream/") or relative == "app/tansu_compat.py":
            continue
        tree = ast.parse(path.read_text(), relative)
        library = _library_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                # Faust's web views are its public extension point (``@app.page``).
                bases = {_root(b) for b in node.bases if ast.unparse(b) not in _PUBLIC_BASES}
                if bases & library:
                    offending.append(f"{relative}: {node.name}")
    assert not offending
