"""Property-based fuzzing of the config loader: any input gives an Experiment or a ConfigError naming the field."""

from __future__ import annotations

import contextlib
import copy
import tomllib
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bouquet.app.config import ConfigError, apply_overrides, load_experiment, parse_experiment, resolved_dict

ROOT = Path(__file__).resolve().parents[2]
BASE = tomllib.loads((ROOT / "configs" / "synthetic_linear.toml").read_text())
BASE["algorithms"] = ["fedavg", "local", "floral"]
BASE["robust"] = {"aggregation": "mean"}

# Keys that exist somewhere, so mutations often hit real options (plus arbitrary text for unknown ones).
KNOWN = ["name", "num_clients", "num_clusters", "shift", "partition", "alpha", "fraction", "rounds",
         "clients_per_round", "batch_size", "local_epochs", "local_steps", "eval_every", "seeds", "engine",
         "vectorized", "device", "threads", "checkpoint_every", "lr", "weight_decay", "optimizer", "momentum",
         "aggregation", "clip_norm", "trim_fraction", "max_update_norm", "attack", "attack_fraction", "rank",
         "target_modules", "hidden", "path", "seed", "test_fraction", "algorithms"]
SECTIONS = ["", "data", "model", "run", "train", "server", "robust", "algo.floral", "algo.local", "algo"]

scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["cpu", "cuda", "sgd", "adam", "iid", "clip", "digits"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
# Printable keys: a key with a newline is reported, but the message then spans two lines.
keys = st.one_of(st.sampled_from(KNOWN), st.text(st.characters(whitelist_categories=("L", "N", "P")), min_size=1,
                                                 max_size=10))


def _set(raw: dict, section: str, key: str, value) -> None:
    node = raw
    for part in [p for p in section.split(".") if p]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[key] = value


def _parse(raw: dict):
    """Parse; anything but a ConfigError escaping is a bug the fuzzer found."""
    try:
        return parse_experiment(raw), None
    except ConfigError as err:
        return None, err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(st.sampled_from(SECTIONS), keys, values), min_size=1, max_size=3))
def test_mutated_configs_parse_or_fail_naming_the_field(mutations) -> None:
    raw = copy.deepcopy(BASE)
    for section, key, value in mutations:
        _set(raw, section, key, value)
    exp, err = _parse(raw)
    if err is not None:
        message = str(err)
        assert message and "\n" not in message
        # The message starts with the offending key (or a config-level name such as 'algorithms').
        head = message.split(":")[0]
        assert head and " " not in head.strip("[]'\" ") or head.startswith("--"), message
    else:
        again, err2 = _parse(resolved_dict(exp))
        assert err2 is None and again == exp  # a valid experiment survives its own written config


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(["run", "train", "server", "robust", "data"]), key=st.sampled_from(KNOWN),
       value=scalars)
def test_single_bad_values_name_their_key(section: str, key: str, value) -> None:
    raw = copy.deepcopy(BASE)
    _set(raw, section, key, value)
    exp, err = _parse(raw)
    if err is not None:
        assert f"{section}.{key}" in str(err) or "clients_per_round" in str(err) or "data." in str(err), str(err)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_any_override_string_parses_or_fails_cleanly(text: str) -> None:
    try:
        raw = apply_overrides(BASE, [text])
    except ConfigError:
        return
    _parse(raw)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                      st.dictionaries(st.sampled_from(SECTIONS[1:] + KNOWN), values, max_size=4).map(
                          lambda d: tomli_w.dumps({k: v for k, v in d.items() if "." not in k}).encode())))
def test_any_file_content_loads_or_fails_cleanly(tmp_path_factory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "exp.toml"
    path.write_bytes(blob)
    with contextlib.suppress(ConfigError):
        load_experiment(path)
