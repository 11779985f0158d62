"""The architecture, checked: packages follow the data flow, imports never run in a circle, and the
standard plugins use only the public API a third-party plugin has.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: they are read from
the source with :mod:`ast`, nothing is imported. The layering is written down here once (and
described in README's "Development"): a unit may import only units of a lower layer, and within
a package, modules must not import each other in a circle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

#: optkit's units, lowest layer first: each may import only those before it. Top-level modules
#: are the public API a plugin sees; packages follow the data flow of a run.
LAYERS: tuple[str, ...] = (
    "optkit.errors",  # errors a user can act on
    "optkit.files",  # atomic writes, paths relative to a pipeline file
    "optkit.artifacts",  # deployable files a pass can return (ONNX)
    "optkit.inputs",  # a model's example inputs: one tensor or several, by position and keyword
    "optkit.passes",  # the pass API
    "optkit.config",  # YAML files -> validated pipeline and sweep specs
    "optkit.results",  # what a run produces (data only)
    "optkit.models",  # sources, checkpoints, weights, heads, layers
    "optkit.data",  # dataset sources, transforms, loaders, checks, the digits task
    "optkit.measure",  # params, MACs, latency, size, drift
    "optkit.host",  # hook specs, plugin manager, registries, the Host facade
    "optkit.reporting",  # tables, Markdown, HTML, plots, console
    "optkit.run",  # device, run folders, the runner, optkit info
    "optkit.sweep",  # planning, jobs, executors, the sweep driver
    "optkit.optimize",  # optkit optimize: candidate chains, the stage cache, the search, its report
    "optkit.cli",  # the command line
    "optkit.testing",  # the pytest kit for plugin authors
)

#: What a plugin may import from: the public API (``optkit.__all__``) and the test kit.
PLUGIN_SURFACES = ("optkit", "optkit.testing")
PUBLIC_PACKAGES = {unit for unit in LAYERS if (ROOT / unit.replace(".", "/") / "__init__.py").is_file()}

PACKAGE_DIRS = {"optkit": ROOT / "optkit", "optkit_plugins": ROOT / "plugins"}
#: The example third-party plugin: its package and its tests, held to the same rule as plugins/.
EXAMPLE_PLUGIN = ROOT / "examples" / "optkit-example-plugin"


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of optkit and optkit_plugins."""
    found = {}
    for top, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([top, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """Every import in the file: (imported module, names taken from it, line)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            found += [(f"{base}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((base, rest, node.lineno))
    return found


def _internal_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, _ in _imports(name, path):
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "optkit" and len(parts) > 1 else parts[0]


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among ``edges`` (as a path that returns to its start), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_counting_type_checking_and_function_imports():
    cycle = _cycle(_internal_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_every_optkit_unit_has_a_layer():
    units = {_unit(m) for m in MODULES if m.startswith("optkit.")}
    assert sorted(units - set(LAYERS)) == []


def test_optkit_imports_only_from_lower_layers():
    rank = {unit: i for i, unit in enumerate(LAYERS)}
    wrong = []
    for name, path in MODULES.items():
        if not name.startswith("optkit.") and name != "optkit":
            continue
        for target, _, line in _imports(name, path):
            if target.startswith("optkit_plugins"):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} imports the standard plugins ({target})")
            if not target.startswith("optkit.") and target != "optkit" or name == "optkit":
                continue
            if target == "optkit":
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} imports the lazy root `optkit`; import the defining module")
                continue
            source_unit, target_unit = _unit(name), _unit(target)
            if source_unit != target_unit and rank[target_unit] > rank[source_unit]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {source_unit} imports {target_unit}, a higher layer")
    assert wrong == []


def _public_names(module: str) -> set[str] | None:
    """The ``__all__`` of an optkit module (as written), or ``None`` when it has none."""
    path = MODULES[module]
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                return set(ast.literal_eval(node.value))
    return None


def _plugin_files() -> list[tuple[str, Path]]:
    """(module name, file) of the standard plugins and of the example plugin with its tests."""
    found = [(name, path) for name, path in MODULES.items() if name.startswith("optkit_plugins")]
    found += [(f"optkit_example_plugin.{path.stem}", path) for path in sorted(EXAMPLE_PLUGIN.rglob("*.py"))]
    return found


def test_plugins_use_only_the_public_api():
    """The standard plugins, and the example plugin with its tests, import only ``optkit.__all__``
    (from ``optkit``) and the test kit ``optkit.testing``: what any third-party plugin has."""
    surfaces = {surface: _public_names(surface) or set() for surface in PLUGIN_SURFACES}
    wrong = []
    for name, path in _plugin_files():
        for target, names, line in _imports(name, path):
            if target != "optkit" and not target.startswith("optkit."):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if target not in surfaces:
                wrong.append(f"{where}: imports {target}; a plugin imports from `optkit` (or the test kit `optkit.testing`)")
                continue
            private = sorted(set(names) - surfaces[target])
            if private:
                wrong.append(f"{where}: takes {', '.join(private)} from {target}, which does not export it")
    assert wrong == []


def test_the_plugin_check_covers_the_example_plugin():
    names = {name for name, _ in _plugin_files()}
    assert {"optkit_example_plugin.strip_dropout", "optkit_example_plugin.test_strip_dropout"} <= names


def test_at_most_eight_modules_directly_under_optkit():
    modules = sorted(p.name for p in (ROOT / "optkit").glob("*.py"))
    assert len(modules) <= 8, modules


def test_every_package_is_installed():
    """pyproject lists packages one by one: a package missing there would vanish from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert listed == packages


@pytest.mark.parametrize("package", sorted(PUBLIC_PACKAGES))
def test_packages_re_export_only_what_they_list(package):
    """The packages are internal: their ``__init__`` re-exports only what its ``__all__`` lists
    (``optkit.data.digits_cnn``, which pipeline files name; the public API is ``optkit``'s)."""
    tree = ast.parse(MODULES[package].read_text(encoding="utf-8"))
    imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module != "__future__"
                for alias in node.names}
    imported |= {alias.asname or alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= (_public_names(package) or set()), f"{package}/__init__.py imports {sorted(imported)} without exporting them"


#: Licenses optkit must not link: Ultralytics (and its thop) are AGPL-3.0. Models of theirs are
#: recognised by class path strings (plugins/module_rules/); tests and benchmarks may import them.
FORBIDDEN_IMPORTS = ("ultralytics", "ultralytics_thop")


def test_optkit_and_its_plugins_never_import_agpl_packages():
    found = [
        f"{MODULES[name].relative_to(ROOT)}:{line} imports {module}"
        for name in MODULES
        for module, _, line in _imports(name, MODULES[name])
        if module.split(".")[0] in FORBIDDEN_IMPORTS
    ]
    assert found == []


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings: (line, text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("library", ["ultralytics.", "models.yolo.", "timm."])
def test_library_knowledge_lives_in_plugins(library):
    """No class path or module of a model library in optkit's code (docstrings may mention them):
    what a library's modules compute is told by module rules, which plugins register."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for name, path in MODULES.items()
        if name == "optkit" or name.startswith("optkit.")
        for line, text in _code_strings(path)
        if library in text.lower()
    ]
    assert found == []
