"""Print constraints.txt: the exact version of every distribution the project pulls in, as installed in this environment.

    python .ci/constraints.py > constraints.txt     # inside the environment that produced the README's numbers

The set is the closure of pyproject.toml's dependencies and extras over the installed distributions' own
requirements (markers evaluated here), so packages installed for other reasons stay out, and so does the project.
A local version label is dropped (torch 2.13.0+cpu pins as torch==2.13.0, which the CPU wheel and the CUDA build both
satisfy: the README installs the CPU wheel first).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for group in extras for r in group)]]


def installed_closure(requirements: list[Requirement]) -> dict[str, str]:
    """Canonical name → installed version of every distribution the requirements reach (extras followed)."""
    versions: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    queue = [(r, frozenset(r.extras)) for r in requirements if r.marker is None or r.marker.evaluate()]
    while queue:
        requirement, extras = queue.pop()
        name = canonicalize_name(requirement.name)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is required ({requirement}) but not installed here") from None
        versions[name] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras | {""}):
                queue.append((child, frozenset(child.extras)))
    return versions


def main() -> None:
    versions = installed_closure(project_requirements())
    versions.pop("lorakit", None)
    python = ".".join(map(str, sys.version_info[:3]))
    print(f"# The exact versions behind the README's numbers (Python {python}), for `pip install -c constraints.txt`.")
    print("# Written by `python .ci/constraints.py > constraints.txt`; pyproject.toml keeps its loose ranges.")
    for name in sorted(versions):
        print(f"{name}=={Version(versions[name]).public}")


if __name__ == "__main__":
    main()
