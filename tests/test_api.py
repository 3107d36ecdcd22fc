"""The public API: a short literal ``__all__`` that resolves, and every dotted path resolves.

Dotted paths (``gj.x.y`` / ``gradjax.x.y``) are collected with a regular expression from the
whole repository's Python and Markdown files (docstrings, error messages, code, README), and
each is resolved by attribute access from the installed package, importing submodules that
``gradjax/__init__.py`` does not import itself (``gradjax.commands.cli``, ``gradjax.benchmarks``).
"""

import ast
import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import gradjax as gj

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"(?<![\w./-])(gj|gradjax)((?:\.[A-Za-z_]\w*)+)")
SKIP_DIRS = {".venv", "build", "dist", ".git", "figures", "bench-results", "results"}


def _literal_all() -> list[str]:
    tree = ast.parse((ROOT / "gradjax" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return ast.literal_eval(node.value)  # a literal, or this raises
    raise AssertionError("gradjax/__init__.py assigns no __all__")


def test_all_is_a_short_literal_list_that_resolves():
    names = _literal_all()
    assert names == gj.__all__
    assert len(names) <= 60, len(names)
    assert len(set(names)) == len(names)
    for name in names:
        obj = getattr(gj, name)
        if name != "__version__":
            assert inspect.getdoc(obj), f"gj.{name} has no docstring"


def test_the_top_level_holds_only_all_and_namespaces():
    for name in dir(gj):
        if name.startswith("_"):
            continue
        obj = getattr(gj, name)
        assert name in gj.__all__ or isinstance(obj, ModuleType), name
    for internal in ("version", "PackageNotFoundError", "accepts_lazy_scales", "scheme_factor"):
        assert not hasattr(gj, internal), internal


def test_namespaces_are_modules_and_entry_points_are_functions():
    # gj.<name> is a module of that name (gj.theory, gj.probes, ...), except the entry points,
    # which are functions defined in their subpackage's module.
    for name, dotted in gj._NAMESPACES.items():
        obj = getattr(gj, name)
        assert isinstance(obj, ModuleType) and obj.__name__ == dotted, name
        assert dotted.rsplit(".", 1)[1] == name
    homes = {
        "sweep": "gradjax.sweeps.engine",
        "train": "gradjax.training.loop",
        "diagnose": "gradjax.diagnosis.pipeline",
        "monitor": "gradjax.training.monitor",
    }
    for name, home in homes.items():
        obj = getattr(gj, name)
        assert callable(obj) and obj.__module__ == home, name
    stdlib = {"io", "signal", "types", "typing", "json", "random", "string", "select"}
    names = {path.stem for path in (ROOT / "gradjax").rglob("*.py")}
    assert not names & stdlib, names & stdlib


def test_the_layout_is_layered_without_module_level_cycles():
    # Subpackages in data-flow order; a module imports (at module level) only from its own
    # subpackage or one listed before it, so no module-level import cycle can exist.
    order = ["utils", "meanfield", "nets", "boundary", "measure", "diagnosis", "sweeps"]
    order += ["training", "commands"]
    rank = {name: i for i, name in enumerate(order)}
    problems = []
    for path in sorted((ROOT / "gradjax").glob("*/*.py")):
        here = path.parent.name
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradjax."):
                there = node.module.split(".")[1]
                if rank.get(there, -1) > rank[here]:
                    problems.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert not problems, problems
    assert len(order) - 1 >= 5  # at least four subpackages besides the commands


def test_modules_and_functions_stay_small():
    too_long, modules = [], []
    for path in sorted((ROOT / "gradjax").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 800:
            modules.append(str(path.relative_to(ROOT)))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _code_lines(node, text)
                if lines > 100:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines})")
    assert not modules, modules
    assert not too_long, too_long


def _code_lines(node: ast.AST, text: str) -> int:
    """Lines of code of a function: no docstring, comment or blank line counted."""
    body = node.body
    skip = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        skip |= set(range(body[0].lineno, body[0].end_lineno + 1))
    lines = text.splitlines()
    count = 0
    for number in range(node.lineno, node.end_lineno + 1):
        stripped = lines[number - 1].strip()
        if number not in skip and stripped and not stripped.startswith("#"):
            count += 1
    return count


def test_model_kinds_are_told_apart_in_one_folder():
    # isinstance checks against Linen or NNX module classes live in gradjax/boundary only.
    pattern = re.compile(r"isinstance\([^)]*\b(nn|nnx|linen)\.Module\b")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "gradjax").rglob("*.py"))
        if path.parent.name != "boundary"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found


def test_help_imports_no_jax():
    code = (
        "import sys, contextlib, io\n"
        "from gradjax.commands.cli import main\n"
        "verbs = ([], ['sweep'], ['theory'], ['train'], ['diagnose'], ['bench'], ['figures'])\n"
        "for verb in verbs:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main([*verb, '--help']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _resolve(dotted: str) -> None:
    obj: object = gj
    done = "gradjax"
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if not isinstance(obj, ModuleType):
                raise
            obj = importlib.import_module(f"{done}.{part}")  # a submodule not imported yet
        done = f"{done}.{part}"


def _files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        if path.suffix in (".py", ".md") and not SKIP_DIRS & set(path.relative_to(ROOT).parts):
            files.append(path)
    files.remove(Path(__file__).resolve())  # its own examples of broken paths
    files.remove(ROOT / "CHANGELOG.md")  # history names paths that no longer exist
    return sorted(files)


def _mentions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in PATH.finditer(line):
                dotted = match.group(2).strip(".")
                if re.search(r"\.(py|md|json|png|pdf|npz|toml)$", match.group(0)):
                    continue  # a file name, not an attribute path
                found.setdefault(dotted, []).append(f"{path.relative_to(ROOT)}:{number}")
    return found


def test_every_dotted_path_in_the_repository_resolves():
    mentions = _mentions()
    assert len(mentions) > 50  # the scan sees the package's docs and the tests' calls
    broken = {}
    for dotted, where in sorted(mentions.items()):
        try:
            _resolve(dotted)
        except (AttributeError, ImportError) as err:
            broken[f"gradjax.{dotted}"] = (where[:3], type(err).__name__)
    assert not broken, broken


@pytest.mark.parametrize("dotted", ["sweep.SweepResult", "nope", "theory.nope"])
def test_the_resolver_fails_on_paths_that_do_not_exist(dotted):
    # gj.sweep is the function, so gj.sweep.SweepResult is not a path; the check must say so.
    with pytest.raises((AttributeError, ImportError)):
        _resolve(dotted)


def test_pyproject_packages_name_every_package_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    folders = {"gradjax": "gradjax", "benchmarks": "gradjax.benchmarks"}
    folders["paper_figs"] = "gradjax.paper_figs"
    found = set()
    for top, package in folders.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((package, *rel)))
    assert declared == found
    assert config["package-dir"] == {v: k for k, v in folders.items()}


def test_no_code_reaches_an_entry_point_module_through_the_package_attribute():
    # `from gradjax import train as t` gives the function, not a module: `t.train_step` would
    # fail. Modules are imported by their own path (`from gradjax.training.loop import ...`).
    shadowed = r"(sweep|train|diagnose|monitor)"
    pattern = re.compile(
        rf"from gradjax import .*\b{shadowed} as (?!\1\b)\w+|import gradjax\.{shadowed} as"
    )
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _files()
        if path.suffix == ".py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
    assert pattern.search("    from gradjax import train as gtrain")  # the check can fail
