"""The code's structure: serving never imports the components, export not the training
step, no file grows long without saying why, every public function says what it does."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "serving", "pipeline")
LONG = 300  # lines; a longer file says why in its opening comment ("Length: ...")


def sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sources("serving"), ids=lambda p: str(p.relative_to(ROOT)))
def test_serving_imports_nothing_from_the_components(path):
    assert not {m for m in imported_modules(path) if m.split(".")[0] == "components"}


def test_the_contract_module_imports_only_the_standard_library():
    imported = {m.split(".")[0] for m in imported_modules(ROOT / "serving" / "contract.py")}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_export_does_not_import_the_training_step():
    imported = imported_modules(ROOT / "components" / "export.py")
    assert not {m for m in imported if m.startswith("components.train.train")}


def test_the_recipe_loads_without_tensorflow():
    import subprocess

    code = ("import sys, components.train.recipe, pipeline.profiles; "
            "sys.exit(bool({'tensorflow', 'keras'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_signature_and_output_names_are_written_only_in_the_contract():
    names = {"serving_default", "predict_images", "image_bytes", "probabilities", "class_id",
             "class_name"}
    found = []
    for path in sources(*PACKAGES, "benchmarks"):
        if path.name == "contract.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        found += [f"{path.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in names
                  and id(n) not in docstrings]
    assert found == []


@pytest.mark.parametrize("path", sources(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_long_file_says_why(path):
    text = path.read_text()
    if text.count("\n") <= LONG:
        return
    tree = ast.parse(text)
    opening = (ast.get_docstring(tree) or "") + "".join(
        line for line in text.splitlines()[:10] if line.startswith("#"))
    assert "Length:" in opening, f"{path.name} has {text.count(chr(10))} lines"


# Keras layers' and gRPC servicers' overrides: their base classes document them.
OVERRIDES = {"call", "compute_output_shape", "get_config", "Predict", "GetModelMetadata",
             "GetModelStatus"}


@pytest.mark.parametrize("path", sources(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_public_function_and_class_has_a_docstring(path):
    missing = []

    def visit(node: ast.AST, prefix: str = "", in_class: bool = False) -> None:
        for n in ast.iter_child_nodes(node):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if n.name.startswith("_") or (in_class and n.name in OVERRIDES):
                    continue
                if not ast.get_docstring(n):
                    missing.append(f"{prefix}{n.name} (line {n.lineno})")
                if isinstance(n, ast.ClassDef):
                    visit(n, f"{n.name}.", True)

    visit(ast.parse(path.read_text()))
    assert missing == []


def test_the_readmes_test_command_is_what_ci_runs_and_the_environment_matches_the_pins():
    import importlib.util
    import re

    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv[^\n]+)\n```", readme)
    assert len(commands) == 2  # the main job, the tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci
    spec = importlib.util.spec_from_file_location("check_env", ROOT / ".ci" / "check_env.py")
    check_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_env)
    needed = check_env.closure("fer-pipeline", ("test",))
    assert {"tensorflow", "kfp", "pytest", "prometheus-client"} <= set(needed)
    assert "ruff" not in needed  # a tool installed by hand would be named, not tolerated
    assert check_env.check() == []
