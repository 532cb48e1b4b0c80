"""What `pip install` gives: a lean core, extras that carry what their features import, and the
tested pins (constraints.txt) inside the ranges a library user may have (pyproject.toml)."""

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements):
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _closure(names):
    """``names`` and everything they depend on, as installed here."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [canonicalize_name(Requirement(r).name) for r in requires if "extra ==" not in r]
    return seen


def _third_party_imports(path):
    tree = ast.parse(path.read_text())
    top = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top.add(node.module.split(".")[0])
    providers = importlib.metadata.packages_distributions()
    return {canonicalize_name(d) for m in top for d in providers.get(m, [])} - {"torch-rc"}


def test_the_core_install_is_lean():
    core = _names(PROJECT["dependencies"])
    assert not core & {"fastapi", "uvicorn", "redis", "pytest", "transformers"}


def test_the_serving_extra_carries_what_the_serving_example_imports():
    allowed = _closure(
        _names(PROJECT["dependencies"]) | _names(PROJECT["optional-dependencies"]["serving"])
    )
    needed = _third_party_imports(ROOT / "examples" / "serving" / "app.py")
    assert needed and needed <= allowed, needed - allowed


def test_the_redis_extra_carries_the_redis_client():
    assert "redis" in _names(PROJECT["optional-dependencies"]["redis"])
    assert "redis" in _third_party_imports(ROOT / "torch_rc" / "cache" / "redis_store.py")


def test_tested_pins_lie_inside_the_library_ranges():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.split(r"==", line.strip(), maxsplit=1)
            pins[canonicalize_name(name)] = version
    for requirement in map(Requirement, PROJECT["dependencies"]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} has no tested pin in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert pins["apache-tvm-ffi"].startswith("0.1.14")  # 0.1.15 segfaults with TVM 0.27
