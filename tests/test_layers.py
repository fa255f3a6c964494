"""The package's layers: every module imports only from its own layer or the layers below it.

Bottom to top: ``errors``/``files`` and ``core`` (the math) -> ``parametrizations`` -> ``objectives``,
``guidance``, ``sampling``, ``diffusers_scheduler`` (with ``diffusers_inputs``) -> ``pipeline`` -> ``training``
-> ``reflow`` (drives training) -> ``world`` (built-in data, priors, evaluator; plugs into training) -> ``cli``.
Imports are read from the source (function-level ones too), so a lazy import cannot hide an arrow back up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "d2f"
LAYERS = [
    {"d2f", "d2f.errors", "d2f.files", "d2f.versions", "d2f.core"},
    {"d2f.parametrizations"},
    {"d2f.objectives", "d2f.guidance", "d2f.sampling", "d2f.diffusers_scheduler", "d2f.diffusers_inputs", "d2f.dropin"},
    {"d2f.pipeline"},
    {"d2f.training"},
    {"d2f.reflow"},
    {"d2f.world"},
    {"d2f.cli", "d2f.__main__"},
]
THIRD_PARTY_FREE = {  # the math core and the samplers run without these
    "diffusers": ["d2f.core", "d2f.parametrizations", "d2f.objectives", "d2f.guidance", "d2f.sampling", "d2f.dropin"],
    "typer": [
        "d2f.core",
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
    for level, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names if n != "d2f") or module == "d2f":
            return level
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


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
