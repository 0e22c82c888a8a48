"""The house rules of the source tree, checked by parsing it (issue: the house).

- no import cycles among the product modules: every import counts, function-local and
  ``TYPE_CHECKING`` ones too (a cycle hidden in a function is still a cycle);
- no module imports another module's private (``_name``) names, by ``from m import _x`` or ``m._x``.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from citygw.config.profiles import ProfileError, load_profile

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "drivers")


def _import_names() -> dict[str, str]:
    """Source folder -> the import name it installs as (pyproject's package-dir, if any)."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        dirs = tomllib.load(file).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {folder: dirs_name for dirs_name, folder in dirs.items()} or {p: p for p in PACKAGES}


def _modules() -> dict[str, Path]:
    names = _import_names()
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([names[package], *parts[1:]])] = path
    return found


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(module: str) -> tuple[set[str], list[str]]:
    """The product modules ``module`` imports, and its uses of another module's private names."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    targets: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # a name bound to a product module -> the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    targets.add(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _target(module, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in MODULES:
                    targets.add(full)
                    aliases[alias.asname or alias.name] = full
                elif source in MODULES:
                    targets.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{module} imports {source}.{alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            private.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    targets.discard(module)
    return targets, private


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_product_modules() -> None:
    cycles = _cycles({module: targets for module, (targets, _) in GRAPH.items()})
    assert cycles == [], "import cycles (function-local and TYPE_CHECKING imports count):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_cycle_check_finds_a_hidden_cycle() -> None:
    """The check itself: a cycle through a function-local import is found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_uses_another_modules_private_names() -> None:
    private = [use for _, (_, uses) in sorted(GRAPH.items()) for use in uses]
    assert private == []


def test_a_profile_whose_top_level_is_a_list_gets_a_profiles_error(tmp_path: Path) -> None:
    path = tmp_path / "meter.yaml"
    path.write_text("- name: voltage\n  address: 0\n", encoding="utf-8")
    try:
        load_profile(path)
    except ProfileError as exc:
        message = str(exc)
    else:
        raise AssertionError("a list is not a profile")
    assert "profile 'meter' is not valid" in message
    assert "meter.yaml:1:" in message
    assert "a mapping (description, source, registers, ...)" in message
    assert "sections" not in message and "gateway" not in message


MAX_LINES = 600


def test_no_module_over_600_lines() -> None:
    """Modules of a few hundred lines, each owning one thing (docs/architecture.md)."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_uplinks_reach_the_buffer_only_through_the_outbox() -> None:
    """One narrow seam (gateway.pipeline.UplinkOutbox): no uplink touches the store or the buffer."""
    reached = []
    for module, path in MODULES.items():
        if path.parent != ROOT / "gateway" / "uplinks":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("store", "buffer"):
                reached.append(f"{module}:{node.lineno}: .{node.attr}")
    assert reached == []


def test_one_registry_of_bus_and_uplink_types() -> None:
    """Each type string is in one place (gateway.config.model) with its model and its runner."""
    import importlib

    from citygw.config import model
    from citygw.daemon import gateway as daemon

    assert (
        set(model.BUS_MODELS) == set(model.DEVICE_MODELS) == set(model.BUS_RUNNERS) == set(daemon.BUS_RUNNERS)
    )
    assert set(model.UPLINK_MODELS) == set(model.UPLINK_RUNNERS) == set(daemon.UPLINK_RUNNERS)
    for target in [*model.BUS_RUNNERS.values(), *model.UPLINK_RUNNERS.values()]:
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target


def _two_column_rows(heading: str) -> list[tuple[str, str]]:
    """The rows of the two-column table under ``## heading`` in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            rows.append((cells[0], cells[1]))
    return rows


def _library_table() -> dict[str, set[str]]:
    return {
        library: {name.strip().strip("`") for name in importers.split(",")}
        for library, importers in _two_column_rows("Who imports which library")
        if importers.startswith("`")
    }


def _importers(library: str) -> set[str]:
    found = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(name == library or name.startswith(f"{library}.") for name in names):
                found.add(str(path.relative_to(ROOT)))
    return found


def test_the_architecture_docs_list_every_importer_of_each_library() -> None:
    """docs/architecture.md "Who imports which library" is the whole truth, by parsing imports."""
    table = _library_table()
    assert {"aiomqtt", "bleak", "prometheus_client", "sqlite3", "stamina"} <= set(table)
    for library, listed in table.items():
        assert _importers(library) == listed, library


def _tree_table() -> dict[str, set[str]]:
    """docs/architecture.md "The tree": folder -> the ``*.py`` file names its row names."""
    return {
        folder.strip("`"): set(re.findall(r"`([a-z_]+\.py)`", holds))
        for folder, holds in _two_column_rows("The tree")
        if folder.startswith("`") and folder.endswith("/`")
    }


def test_the_architecture_docs_tree_is_the_tree() -> None:
    """Every package folder has its row in "The tree"; every module a row names is there; the
    modules at the top of gateway/ are all named (the rest of a folder may be described in words)."""
    rows = _tree_table()
    folders = {f"{path.parent.relative_to(ROOT)}/" for path in MODULES.values() if path.name == "__init__.py"}
    assert set(rows) == folders
    for folder, names in rows.items():
        missing = {name for name in names if not (ROOT / folder / name).is_file()}
        assert not missing, f"docs/architecture.md names {sorted(missing)} in {folder}; it has none"
    top = {path.name for path in (ROOT / "gateway").glob("*.py")} - {"__init__.py"}
    unnamed = sorted(top - rows["gateway/"])
    assert not unnamed, f"modules at the top of gateway/ that the tree does not name: {unnamed}"
