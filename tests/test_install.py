"""The project installs on its users' stacks (issue 15) and reproduces its published numbers (issue 14): Python
3.10-3.12, torch from the floor the code needs to the next major, every import declared, exact pins for the README."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lorakit", "experiments", "analysis", "benchmarks")
SOURCES = sorted(p for folder in (*PACKAGES, "tests", ".ci") for p in (ROOT / folder).rglob("*.py"))
LOCAL = {*PACKAGES, "conftest", *(p.stem for p in (ROOT / "tests").glob("*.py"))}


def load_ci(name: str):
    """A script of .ci/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"ci_{name}", ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


constraints_script, resolve = load_ci("constraints"), load_ci("resolve")
PROJECT = constraints_script.tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> dict[str, Requirement]:
    """pyproject.toml's dependencies and extras by canonical name."""
    return {canonicalize_name(r.name): r for r in constraints_script.project_requirements()}


def imported_modules(paths: list[Path]) -> dict[str, list[str]]:
    """Top-level module → files importing it (absolute imports, those inside functions included)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def third_party(modules: dict[str, list[str]]) -> dict[str, list[str]]:
    return {m: files for m, files in modules.items() if m not in sys.stdlib_module_names and m not in LOCAL}


def test_every_file_parses_as_python_3_10():
    assert len(SOURCES) > 50
    for path in SOURCES:
        ast.parse(path.read_text(), str(path), feature_version=(3, 10))


def test_python_3_10_compiles_every_file():
    """The real 3.10 compiler, where there is one (pyenv here): ``ast``'s feature_version is best effort."""
    python = resolve.find_python("3.10")
    if python is None:
        pytest.skip("no Python 3.10 on this machine (the ast check above still ran)")
    script = "import sys\nfor p in sys.argv[1:]: compile(open(p, encoding='utf-8').read(), p, 'exec')"
    done = subprocess.run([python, "-c", script, *map(str, SOURCES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_import_is_declared():
    declared = set(requirements())
    provides = metadata.packages_distributions()
    undeclared = {}
    for module, files in third_party(imported_modules(SOURCES)).items():
        # Not installed here (tomli on Python 3.11+): the distribution of the same name.
        dists = {canonicalize_name(d) for d in provides.get(module, [module])}
        if not dists & declared:
            undeclared[module] = (sorted(dists), files[:2])
    assert not undeclared, f"imported but not in pyproject.toml (module: distributions, files): {undeclared}"


def test_lorakit_needs_torch_and_safetensors_only():
    """torchao, QLoRA's NF4 tensor, is the one optional extra (the `qlora` extra), imported inside lorakit/nf4.py's
    functions alone, so `import lorakit` never needs it."""
    lorakit_files = sorted((ROOT / "lorakit").rglob("*.py"))
    core = [f for f in lorakit_files if f.name != "nf4.py"]
    assert set(third_party(imported_modules(core))) == {"torch", "safetensors"}
    assert set(third_party(imported_modules([ROOT / "lorakit" / "nf4.py"]))) <= {"torch", "torchao"}
    assert "torchao" in PROJECT["optional-dependencies"]["qlora"][0]
    nf4_top_level = [line for line in (ROOT / "lorakit" / "nf4.py").read_text().splitlines() if line.startswith(("import", "from"))]
    assert not any("torchao" in line for line in nf4_top_level)


def test_requirements_admit_the_users_stack():
    """A cluster image: Python 3.10-3.12, torch 2.11, transformers 5.17, peft; torch capped at the next major only."""
    python = SpecifierSet(PROJECT["requires-python"])
    assert all(v in python for v in ("3.10.0", "3.11.7", "3.12.1")) and "3.9.18" not in python
    req = requirements()
    torch = req["torch"].specifier
    floor = max(Version(s.version) for s in torch if s.operator == ">=")
    assert floor <= Version("2.11") and "2.11.0" in torch and "2.99.0" in torch and "3.0.0" not in torch
    assert "5.17.0" in req["transformers"].specifier
    core = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert {"peft", "psutil", "pyyaml", "safetensors"} <= core  # the benchmarks' imports, not a dev extra's


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"not name==version: {line!r}"
            found[canonicalize_name(name)] = version
    return found


def test_constraints_pin_every_dependency_within_pyproject():
    pinned = pins()
    for name, requirement in requirements().items():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "dev"}):
            continue  # e.g. tomli, for Python 3.10 only
        assert name in pinned, f"{name} has no pin in constraints.txt"
        assert pinned[name] in requirement.specifier, f"{name}=={pinned[name]} is outside pyproject's {requirement}"
    assert "lorakit" not in pinned


def test_readme_installs_the_pinned_torch_first_then_the_project_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "pip install" in line and "venv" in line)
    torch_pin = re.search(r"pip install torch==(\S+)", command)
    assert torch_pin and torch_pin.group(1) == pins()["torch"], command
    assert command.index("torch==") < command.index("pip install -c constraints.txt -e '.[dev]'"), command


def test_the_constraints_script_follows_requirements_to_their_dependencies():
    closure = constraints_script.installed_closure([Requirement("pytest")])
    assert closure["pytest"] == metadata.version("pytest") and "pluggy" in closure and "iniconfig" in closure


def test_stub_torch_is_a_wheel_pip_resolves(tmp_path):
    wheel = resolve.stub_wheel("2.11.0", tmp_path)
    with zipfile.ZipFile(wheel) as z:
        assert "Version: 2.11.0+stub" in z.read("torch-2.11.0+stub.dist-info/METADATA").decode()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--no-deps",
         "--disable-pip-version-check", "--find-links", str(tmp_path), "--report", str(tmp_path / "r.json"),
         "torch>=2.6,<3", "-c", str(_write(tmp_path / "c.txt", "torch==2.11.0+stub\n"))],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch-2.11.0+stub" in done.stdout


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def report(**versions: str) -> dict:
    return {"environment": {"python_full_version": "3.12.1", "sys_platform": "linux"},
            "install": [{"metadata": {"name": n, "version": v}} for n, v in versions.items()]}


def test_the_resolution_check_accepts_the_image_and_names_what_differs():
    good = dict(lorakit="0.1.0", torch="2.11.0+stub", transformers="5.17.0", peft="0.21.2")
    assert "transformers 5.17.0" in resolve.check_report(report(**good), "2.11.0", "5.17.*")[0]
    for change, message in (({"torch": "2.11.0"}, "not the stub"), ({"transformers": "5.24.0"}, "not 5.17.*"),
                            ({"lorakit": None}, "lorakit"), ({"peft": None}, "peft")):
        versions = {k: v for k, v in {**good, **change}.items() if v is not None}
        with pytest.raises(SystemExit, match=message):
            resolve.check_report(report(**versions), "2.11.0", "5.17.*")


def test_ci_scripts_are_valid_bash():
    for script in (ROOT / ".ci" / "run", ROOT / "benchmarks" / "gpu_check.sh"):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"

