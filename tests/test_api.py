import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import unlock_lens

PACKAGES = ["unlock_lens", "unlock_lens.align", "unlock_lens.axes", "unlock_lens.diagnostics",
            "unlock_lens.evaluate", "unlock_lens.organisms", "unlock_lens.sweep"]


def _stub_imports(package: str) -> dict[str, tuple[str, str]]:
    """Public name -> (module, attribute) as the package's __init__.pyi imports it."""
    stub = Path(importlib.import_module(package).__file__).with_suffix(".pyi")
    out = {}
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1, f"{stub}: only `from .x import y` (lazy_loader)"
            for alias in node.names:
                if node.module is None:  # `from . import sub`: the subpackage itself
                    out[alias.asname or alias.name] = (f"{package}.{alias.name}", "")
                else:
                    out[alias.asname or alias.name] = (f"{package}.{node.module}", alias.name)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_are_the_objects_the_stub_names(package):
    """Each public name is the very object defined where __init__.pyi says (go-to-definition
    and type checkers read the stub; lazy_loader serves the same object)."""
    pkg = importlib.import_module(package)
    imports = _stub_imports(package)
    assert sorted(pkg.__all__) == sorted(imports)
    for name, (module, attr) in imports.items():
        target = importlib.import_module(module)
        expected = getattr(target, attr) if attr else target
        assert getattr(pkg, name) is expected, f"{package}.{name}"
    with pytest.raises(AttributeError, match="no_such_name"):
        pkg.no_such_name  # noqa: B018


def test_core_math_imports_no_model_library():
    code = (
        "import sys, unlock_lens.align, unlock_lens.masterkey, unlock_lens.diagnostics.similarity;"
        "bad = [m for m in ('transformer_lens', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


#: the method's order, bottom to top: a module may import its own layer and those below it
LAYERS = [
    ["errors", "legends", "compat", "model_info", "artifacts", "interventions", "distributions", "plots"],
    ["prompts", "axes", "models", "random_models"],
    ["activations", "streaming"],
    ["masterkey", "align", "alignment_data", "controls"],
    ["steer"],
    ["pack", "generation", "backends"],
    ["unlock", "protocol", "evaluate", "export", "lm_eval_adapter"],
    ["diagnostics", "reproduce", "recipes"],
    ["organisms", "sweep"],
    ["cli", "cli_checks"],
]


def _layer(module: str) -> int:
    parts = module.removeprefix("unlock_lens").strip(".").split(".")
    for i, names in enumerate(LAYERS):
        if parts[0] in names:
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS: place it")


def test_no_module_imports_one_above_its_layer():
    root = Path(unlock_lens.__file__).parent
    upward = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if module == "unlock_lens":
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("unlock_lens.") and _layer(name) > _layer(module):
                    upward.append(f"{module} -> {name}")
    assert not upward, upward
