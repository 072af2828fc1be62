"""What a run is: its identity, the id its seeds share, and the keys a method reads. Hydra-free (a resolved config as
a plain dict in, plain values out), so the analyses read old run folders with the same rules the sweep used.

A run's identity is its resolved config minus
- ``execution`` (how it ran: threads, device, paths, logging),
- the top-level method keys (``rank``, ``alpha``, ...), whose values the run's own method carries in ``method``,
- the learning-rate keys of ``train`` (``lr``, ``full_lr``, ...): the rate a run trained at is ``method.lr``,
- the method's ``search`` space (where a search looks does not change what a run trained),
- keys added after runs were written, while they hold the value that reproduces those runs (``ADDED``).

Runs with the same identity but for ``seed`` are seeds of one configuration and share a ``config_id``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXECUTION = "execution"
SEED = "seed"

# Keys added to the config after runs were written, each with the value that behaves as those runs did (dotted path →
# value). While a run holds that value the key is left out of its identity, so old and new runs of one configuration
# stay one configuration. A new key that changes what a run computes goes here with its old behaviour as the value.
ADDED: dict[str, object] = {
    "data.selection_examples": 0,  # issue 22: no selection slice, the whole training subset trained on
    "train.select_on": "dev",      # issue 22: the reported epoch chosen on the dev set it is reported on
    "save_delta": {"dtype": "fp32", "modules": "all"},  # issue 26: ΔW of every module the method adapts, in fp32
    "method.rank_pattern": None,   # issue 23: every module at `rank`
    "method.alpha_pattern": None,  # issue 23: every module at `alpha`
}


def known_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@functools.cache
def method_keys(method: str | None = None, node: str = "") -> frozenset[str]:
    """Keys a method reads: those of the top level (``node=""``: ``rank: ${rank}``) or of another node (``node="train"``:
    its learning rate, ``lr: ${train.full_lr}``) that its ``conf/method/<name>.yaml`` interpolates, following its
    defaults list (DoRA extends LoRA). Without ``method``: every method's, the keys no run's identity holds."""
    if method is None:
        return frozenset().union(*(method_keys(m, node) for m in known_options("method")))
    path = CONF_DIR / "method" / f"{method}.yaml"
    if not path.is_file():
        return frozenset()
    prefix = re.escape(node + ".") if node else ""
    keys = set(re.findall(r"\$\{" + prefix + r"([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text()))
    for parent in OmegaConf.load(path).get("defaults", []):
        if isinstance(parent, str) and parent != "_self_":
            keys |= method_keys(parent, node)
    return frozenset(keys)


def identity(config: dict) -> dict:
    """A resolved config (a plain dict) → what the run's results depend on (module docstring)."""
    ignored = method_keys() | {EXECUTION}
    kept = {k: v for k, v in config.items() if k not in ignored}
    if isinstance(kept.get("train"), dict):
        kept["train"] = {k: v for k, v in kept["train"].items() if k not in method_keys(node="train")}
    if isinstance(kept.get("method"), dict):
        kept["method"] = {k: v for k, v in kept["method"].items() if k != "search"}
    for dotted, old in ADDED.items():
        *parents, leaf = dotted.split(".")
        node = kept
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == old:
            _drop(kept, [*parents, leaf])
    return kept


def _drop(tree: dict, path: list[str]) -> None:
    """Remove ``path`` from a nested dict, copying the nodes on the way so the caller's dict is never changed."""
    node = tree
    for key in path[:-1]:
        node[key] = dict(node[key])
        node = node[key]
    del node[path[-1]]


def same_identity(stored: dict, resolved: dict, method_defaults: dict | None = None) -> bool:
    """Whether a stored run's config has the identity of ``resolved``. A method key the stored config lacks (the run
    was written before the key existed) counts as the default it had then, ``conf/sweep.yaml``'s top-level value: a
    new key never makes every earlier run look changed."""
    return canonical(stored, method_defaults) == canonical(resolved, method_defaults)


def canonical(config: dict, method_defaults: dict | None = None) -> dict:
    """``identity`` with the method keys an older run lacks filled in with their defaults, JSON-normal (tuples as
    lists, keys as strings): the form two runs are compared in and ``config_id`` hashes."""
    kept = identity(config)
    defaults = method_defaults if method_defaults is not None else _sweep_defaults()
    if isinstance(kept.get("method"), dict):
        method = dict(kept["method"])
        for key in method_keys(method.get("name")) if isinstance(method.get("name"), str) else ():
            if key not in method and key in defaults:
                method[key] = defaults[key]
        kept["method"] = method
    return json.loads(json.dumps(kept, default=str, sort_keys=True))


@functools.cache
def _sweep_defaults_cached() -> str:
    return json.dumps(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sweep.yaml"), resolve=False), default=str)


def _sweep_defaults() -> dict:
    return json.loads(_sweep_defaults_cached())


def config_id(config: dict) -> str:
    """A short stable hash of a run's identity without its seed: runs with the same ``config_id`` are seeds of one
    configuration and nothing else is (a different budget, batch size, dropout or rate is a different id)."""
    kept = canonical(config)
    kept.pop(SEED, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"method": {"rank": 8}}`` → ``{"method.rank": 8}``; lists stay values (``targets``, ``model.head``)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
