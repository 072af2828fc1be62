"""``python -m analysis.figures <sweeps> --out DIR``: the name the analysis command had before ``python -m analysis``
(REPRODUCTION.md and users' scripts type it); the same command (analysis/command.py)."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
