"""Would `pip install '.[dev]'` work on a cluster's GPU image (Python 3.12, torch 2.11, transformers 5.17)? Resolve the
project there without installing it, and fail when pip cannot.

    python .ci/resolve.py                       # Python 3.12, torch 2.11.0, transformers 5.17.*
    python .ci/resolve.py --python 3.10 --torch 2.6.0 --transformers '5.20.*'

``pip install --dry-run --report`` resolves with the interpreter of the target version. Torch itself stays out of the
resolution: on Python 3.12 the registry offers only its CUDA build, and with this machine's index (no PEP 658
metadata files) pip downloads every wheel it resolves, dry run or not (tried: pip 23.2 and 26.3) — 530 MB for torch
2.11 and ~1.3 GB more for its nvidia-* libraries. A stub wheel stands in for it instead: metadata only, version ``<torch>+stub`` (a local version, so it
satisfies every ``torch>=…`` requirement as <torch> would, and no real release matches the pin). Every other
requirement, torch's dependents' included (transformers, peft, accelerate, sentence-transformers), is resolved against
that version; torch's own dependencies are the image's business. Cost: ~280 MB of other wheels, about a minute.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
STUB = "stub"


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.12"): ``python3.12`` on the PATH if it runs (a pyenv shim may not), else
    pyenv's own copy."""
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def stub_wheel(torch_version: str, folder: Path) -> Path:
    """A metadata-only wheel ``torch-<torch_version>+stub``: what the resolver needs to know of torch, and nothing else."""
    version = f"{torch_version}+{STUB}"
    info = f"torch-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: lorakit .ci/resolve.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    path = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(text.encode())}")
        wheel.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return path


def check_report(report: dict, torch_version: str, transformers: str) -> list[str]:
    """What pip would install, checked against the image: the project, the stub torch, transformers in range, peft.
    Returns one line per fact; raises SystemExit naming what is wrong."""
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in report.get("install", [])}
    problems = []
    if "lorakit" not in resolved:
        problems.append("the project (lorakit) is not in the resolution")
    if resolved.get("torch") != f"{torch_version}+{STUB}":
        problems.append(f"torch resolved to {resolved.get('torch')}, not the stub {torch_version}+{STUB}")
    if resolved.get("transformers") not in SpecifierSet(f"=={transformers}"):
        problems.append(f"transformers resolved to {resolved.get('transformers')}, not {transformers}")
    if "peft" not in resolved:
        problems.append("peft is not in the resolution")
    if problems:
        raise SystemExit("resolution check: " + "; ".join(problems))
    environment = report.get("environment", {})
    return [f"Python {environment.get('python_full_version', '?')} on {environment.get('sys_platform', '?')}: "
            f"{len(resolved)} distributions resolve with torch {torch_version} (stub), "
            f"transformers {resolved['transformers']}, peft {resolved['peft']}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default="3.12", help="the target Python's major.minor")
    p.add_argument("--torch", default="2.11.0", help="the image's torch")
    p.add_argument("--transformers", default="5.17.*", help="the image's transformers (a version, * allowed)")
    p.add_argument("--extras", default="dev")
    args = p.parse_args(argv)
    python = find_python(args.python)
    if python is None:
        raise SystemExit(f"resolution check: no Python {args.python} here (neither python{args.python} on the PATH "
                         f"nor in pyenv's versions); it is needed to resolve for that version")
    with tempfile.TemporaryDirectory(prefix="lorakit-resolve-") as tmp:
        folder = Path(tmp)
        stub_wheel(args.torch, folder)
        constraints = folder / "image.txt"
        constraints.write_text(f"torch=={args.torch}+{STUB}\ntransformers=={args.transformers}\n")
        report = folder / "report.json"
        command = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--prefer-binary",
                   "--disable-pip-version-check", "--progress-bar", "off", "--find-links", str(folder),
                   "-c", str(constraints), "--report", str(report), f"{ROOT}[{args.extras}]"]
        start = time.monotonic()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            tail = "\n".join(done.stdout.strip().splitlines()[-25:])
            raise SystemExit(f"{tail}\nresolution check: pip cannot resolve the project on Python {args.python} "
                             f"with torch {args.torch}, transformers {args.transformers} (exit {done.returncode})")
        lines = check_report(json.loads(report.read_text()), args.torch, args.transformers)
    print("\n".join(lines), f"({seconds:.0f} s)")


if __name__ == "__main__":
    main()
