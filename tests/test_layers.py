"""The package's layers: every module imports only from its own layer or the layers below it, no import goes
round in a circle, and none goes through a module that only re-exports the name.

Bottom to top: ``errors``/``files`` and ``core`` (the math) -> ``parametrizations`` -> ``objectives``,
``guidance``, ``sampling``, ``diffusers_scheduler`` (with ``diffusers_inputs``), ``schedule_report`` ->
``pipeline`` -> ``training`` -> ``reflow`` (drives training) -> ``world`` (built-in data, evaluator; plugs into
training) -> ``world.build`` (the factory of the shipped assets: nothing else imports it) -> ``cli``.
Imports are read from the source (function-level ones too), so a lazy import cannot hide an arrow back up
or close a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "d2f"
LAYERS = [
    {"d2f", "d2f.errors", "d2f.files", "d2f.versions", "d2f.settings", "d2f.distances", "d2f.core"},
    {"d2f.parametrizations"},
    {
        "d2f.objectives",
        "d2f.guidance",
        "d2f.sampling",
        "d2f.diffusers_scheduler",
        "d2f.diffusers_inputs",
        "d2f.schedule_report",
        "d2f.dropin",
    },
    {"d2f.pipeline"},
    {"d2f.training"},
    {"d2f.reflow"},
    {"d2f.world"},
    {"d2f.world.build"},  # the asset factory: it may import the runtime world, nothing imports it
    {"d2f.cli", "d2f.__main__"},
]
THIRD_PARTY_FREE = {  # the math core and the samplers run without these
    "diffusers": [
        "d2f.core",
        "d2f.parametrizations",
        "d2f.objectives",
        "d2f.guidance",
        "d2f.sampling",
        "d2f.schedule_report",
        "d2f.dropin",
    ],
    "typer": [
        "d2f.core",
        "d2f.schedule_report",
        "d2f.parametrizations",
        "d2f.objectives",
        "d2f.sampling",
        "d2f.pipeline",
        "d2f.training",
        "d2f.reflow",
    ],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of the longest name in ``LAYERS`` that is ``module`` or a package above it."""
    if module == "d2f":
        return 0
    matches = [
        (len(n), level)
        for level, names in enumerate(LAYERS)
        for n in names
        if n != "d2f" and (module == n or module.startswith(n + "."))
    ]
    assert matches, f"{module} is in no layer; add it to LAYERS"
    return max(matches)[1]


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names if node.module == "d2f"}
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))
NAMES = {module_name(p) for p in MODULES}
FACTORY = "d2f.world.build"
# ``from d2f import Diff2FlowEulerScheduler`` is public API: the package's __init__ forwards it lazily
FACADE = {
    ("d2f", "d2f.diffusers_scheduler"),
    ("d2f", "d2f.Diff2FlowEulerScheduler"),
    ("d2f", "d2f.Diff2FlowHeunScheduler"),
    ("d2f", "d2f.dropin"),
}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_reaches_a_higher_layer(path):
    me = module_name(path)
    mine = layer_of(me)
    for name in imports(path):
        if name.split(".")[0] != "d2f" or name == "d2f":
            continue
        if (me, name) in FACADE:
            continue
        assert layer_of(name) <= mine, f"{me} (layer {mine}) imports {name} (layer {layer_of(name)})"


@pytest.mark.parametrize("package, modules", THIRD_PARTY_FREE.items())
def test_lower_layers_do_not_import(package, modules):
    for path in MODULES:
        me = module_name(path)
        if any(me == m or me.startswith(m + ".") for m in modules):
            assert not any(n.split(".")[0] == package for n in imports(path)), f"{me} imports {package}"


def test_import_d2f_stays_light():
    """``import d2f`` and the whole math core load neither diffusers, transformers, typer nor the CLI."""
    code = (
        "import sys, d2f, d2f.core.schedule, d2f.core.timemap, d2f.core.velocity, d2f.parametrizations, "
        "d2f.objectives, d2f.sampling, d2f.guidance; "
        "bad = [m for m in ('diffusers', 'd2f.cli', 'typer', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_module_is_over_300_lines():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 300}
    assert not long, long


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_nothing_outside_the_factory_imports_it():
    """The asset factory (``d2f.world.build``) imports the runtime world; the runtime, the CLI included, never
    imports the factory."""
    bad = [
        f"{module_name(p)} imports {name}"
        for p in MODULES
        if not in_package(module_name(p), FACTORY)
        for name in imports(p)
        if in_package(name, FACTORY)
    ]
    assert not bad, bad


def module_edges(path: Path) -> set[str]:
    """The d2f modules that ``path`` imports, function-level imports included: ``from d2f.world import novel``
    is an edge to the module ``d2f.world.novel``, ``from d2f.world.shapes import draw`` one to ``d2f.world.shapes``.
    The implicit import of a module's parent packages is not an edge (their ``__init__`` is checked in its own
    right)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in NAMES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in NAMES:
                    out.add(f"{node.module}.{alias.name}")
                elif node.module in NAMES:
                    out.add(node.module)
    return out - {module_name(path)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (node -> the nodes it points to) as [a, b, ..., a], or None if it has none:
    a depth-first search, a cycle closing where it meets a node still on the path."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once all that it reaches is explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_names_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_circle_in_d2f():
    """No module reaches itself through imports, within a package or across packages (a circle inside one layer
    passes the layer test): ``evaluator`` importing its own training, which imports ``evaluator``, is one."""
    cycle = find_cycle({module_name(p): module_edges(p) for p in MODULES})
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def own_and_imported_names(path: Path) -> tuple[set[str], set[str]]:
    """The names a module defines at its top level (def, class, assignment) and those it only imports there."""
    defined, imported = set(), set()
    for node in ast.parse(path.read_text()).body:
        for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(n.name)
            elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                defined |= {x.id for t in targets for x in ast.walk(t) if isinstance(x, ast.Name)}
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                imported |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return defined, imported - defined


def test_nothing_imports_through_a_re_export():
    """``from d2f.a.b import name`` names the module that defines ``name``, not one that imported it (package
    ``__init__`` files, the public facades, excepted): in the package, the tests, the benchmarks and the
    tutorials' sources."""
    root = PACKAGE.parent
    sources = [*MODULES, *sorted((root / "tests").glob("*.py")), *sorted((root / "benchmarks").glob("*.py"))]
    sources += sorted((root / "tutorials").glob("*.py"))
    plain = {module_name(p): p for p in MODULES if p.name != "__init__.py"}
    only_imported = {name: own_and_imported_names(p)[1] for name, p in plain.items()}
    bad = [
        f"{path.relative_to(root)}:{node.lineno} imports {alias.name} from {node.module}, which only imports it"
        for path in sources
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in plain
        for alias in node.names
        if alias.name in only_imported[node.module] and f"{node.module}.{alias.name}" not in NAMES
    ]
    assert not bad, bad
