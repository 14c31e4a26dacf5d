"""What ties a run directory to one experiment: the config fingerprint, and which changes a resume may make.

``fingerprint.json`` (written when a run starts) and every checkpoint record the SHA-256 of the resolved
experiment (``resolved_dict``) and the package version. ``bouquet run --resume`` compares them with the
directory's ``config.toml`` as it is now and refuses a mismatch, naming the keys that changed; only the keys
in ``SAFE_CHANGES`` may change, and only when ``--allow-config-change`` names them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..checks import ConfigError
from ..files import atomic_write_json

#: keys a resumed run may change (with --allow-config-change): they change how long and how often, not what
SAFE_CHANGES = ("run.rounds", "run.eval_every", "run.checkpoint_every", "run.threads")
FINGERPRINT_FILE = "fingerprint.json"


def fingerprint(config: dict, version: str = __version__) -> str:
    """SHA-256 (hex) of a resolved experiment and the package version."""
    text = json.dumps({"config": config, "bouquet_version": version}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(config: dict, accepted: list[str] | None = None) -> dict:
    """The record of ``config`` kept in the run directory and in every checkpoint."""
    return {"fingerprint": fingerprint(config), "bouquet_version": __version__, "config": config,
            "accepted_changes": sorted(accepted or [])}


def write_fingerprint(run_dir: Path, record: dict) -> None:
    """Write ``fingerprint.json`` (atomically)."""
    atomic_write_json(run_dir / FINGERPRINT_FILE, record)


def read_fingerprint(run_dir: Path) -> dict | None:
    """The directory's ``fingerprint.json``, or None when there is none (a run written before fingerprints)."""
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.__class__.__name__}); expected the JSON written by "
                          f"'bouquet run'") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path}: expected a JSON object with 'fingerprint' and 'config'")
    return record


def parse_allowed(text: str | None) -> list[str]:
    """``--allow-config-change a,b`` -> its keys; a key outside SAFE_CHANGES is a ConfigError."""
    if not text:
        return []
    keys = [k.strip() for k in text.split(",") if k.strip()]
    for key in keys:
        if key not in SAFE_CHANGES:
            raise ConfigError(f"--allow-config-change: {key!r} cannot change in a resumed run (it would mix two "
                              f"experiments); expected a comma list of {', '.join(SAFE_CHANGES)}")
    return keys


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables as ``{"run.rounds": 10, ...}`` (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs between two resolved experiments (added and removed keys too)."""
    a, b = flatten(old), flatten(new)
    return [k for k in [*a, *(k for k in b if k not in a)] if a.get(k, _UNSET) != b.get(k, _UNSET)]


_UNSET = object()


def _show(config: dict, key: str) -> str:
    value = flatten(config).get(key, _UNSET)
    text = "unset" if value is _UNSET else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def check_config(where: str, recorded: dict, current: dict, allowed: list[str]) -> list[str]:
    """Refuse (ConfigError) a ``current`` experiment that differs from ``recorded`` outside ``allowed``.

    ``recorded`` is a ``stamp``; returns the keys that changed (all allowed).
    """
    if recorded.get("bouquet_version") not in (None, __version__):
        raise ConfigError(f"{where}: written by bouquet {recorded['bouquet_version']}, this is bouquet "
                          f"{__version__}; resuming would mix two code versions (install "
                          f"{recorded['bouquet_version']} to resume, or start a new run)")
    if recorded.get("fingerprint") == fingerprint(current):
        return []
    changed = changed_keys(recorded["config"], current)
    refused = [k for k in changed if k not in allowed and k not in recorded.get("accepted_changes", [])]
    if refused:
        values = ", ".join(f"{k} {_show(recorded['config'], k)} -> {_show(current, k)}" for k in refused)
        unsafe = [k for k in refused if k not in SAFE_CHANGES]
        hint = (f"; restore {', '.join(unsafe)} (only {', '.join(SAFE_CHANGES)} may change, with "
                f"--allow-config-change)" if unsafe else f"; to accept, add --allow-config-change {','.join(refused)}")
        raise ConfigError(f"{where}: config.toml no longer matches the run; changed: {', '.join(refused)} "
                          f"({values}){hint}")
    return changed
