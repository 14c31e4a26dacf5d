"""The config reference, generated from the schema: every key of every table with its type, default and meaning.

Meanings are the ``#:`` comment above each dataclass field (or, failing that, the comment at the end of
its line), inherited along the class's bases; ``bouquet config-reference`` prints it (docs/config.md is
its output, checked by a test), and a key without a meaning is an error there.
"""

from __future__ import annotations

import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any

from ..algorithms import ALGORITHMS, ServerConfig, TrainConfig
from ..data.spec import DataSpec
from ..engine.robust import RobustConfig
from ..models import MODELS
from .config import RunConfig
from .init_adapter import InitConfig
from .pretrain import PretrainConfig
from .schema import _flattened, _type_hints

TABLES: list[tuple[str, type]] = [("data", DataSpec), ("run", RunConfig), ("train", TrainConfig),
                                  ("server", ServerConfig), ("robust", RobustConfig), ("pretrain", PretrainConfig),
                                  ("init", InitConfig)]

#: keys outside any table
TOP_LEVEL_DOCS = {
    "name": ("string", '"experiment"', "the experiment's name (default run directory: runs/<name>-<time>)"),
    "algorithms": ("list of string", '["fedavg"]', "algorithms to run, each with every seed (`bouquet algorithms`)"),
}

#: ``[model]`` options of each model factory (beyond the input shape and number of outputs)
MODEL_OPTION_DOCS = {
    "mlp.hidden": "width of the hidden layer",
    "vgg8.dropout": "dropout rate before each fully connected layer",
    "minilm.top_layers": "top transformer layers of MiniLM that are trained (the rest are frozen features)",
    "hf.path": "a local Hugging Face checkpoint directory or .gguf file (empty: the bundled MiniLM for "
               "sequence_classification, SmolLM2-135M for causal_lm); loaded offline, frozen",
    "hf.head": "'causal_lm' (next-token logits; the dataset's tokenizer must be the model's) or "
               "'sequence_classification' (a fresh head of data.num_outputs labels)",
    "hf.attention": "transformers' attention: 'eager' (batches a round's clients under vmap) or 'sdpa'",
    "hf.cached_layers": "BERT classifiers: run only the layers above this many, on the dataset's cached hidden "
                        "states (text_tasks without data.tokenizer: 5); an exact shortcut of the full model",
}


@dataclass(frozen=True)
class Key:
    """One documented key: its name in the table, type, default (as TOML would spell it) and meaning."""

    name: str
    type: str
    default: str
    doc: str


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its ``#:`` comment (the lines right above it) or its end-of-line comment, in ``cls`` only."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    above: dict[int, list[str]] = {}
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string
            if text.startswith("#:") and tok.line.strip() == text:
                above.setdefault(tok.start[0], []).append(text[2:].strip())
            elif tok.line.strip() != text:
                trailing[tok.start[0]] = text[1:].strip()
    out: dict[str, str] = {}
    lines = src.splitlines()
    for i, line in enumerate(lines, 1):
        name = line.strip().split(":", 1)[0]
        if not line.startswith("    ") or line.startswith("     ") or not name.isidentifier() or ":" not in line:
            continue
        block, j = [], i - 1
        while j in above:
            block = above[j] + block
            j -= 1
        if block:
            out[name] = " ".join(block)
        elif i in trailing:
            out[name] = trailing[i]
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> meaning for a dataclass, a subclass's comment overriding its bases'."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if is_dataclass(klass):
            out.update(_comments(klass))
    return out


def type_name(tp: Any) -> str:
    """A field type in words: integer, number, bool, string, list of ..., X or unset."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        named = " or ".join(type_name(a) for a in args if a is not type(None))
        return f"{named} or unset" if type(None) in args else named
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", bool: "bool", str: "string", dict: "table"}.get(tp, str(tp))


def toml_value(value: Any) -> str:
    """A default as TOML spells it; None (a key left out) is ``unset``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value)


def _default(f: Any) -> str:
    if f.default is not MISSING:
        return toml_value(f.default)
    if f.default_factory is not MISSING:
        return toml_value(f.default_factory())
    return "required"


def keys(cls: type) -> list[Key]:
    """Every key a table parsed into ``cls`` accepts (nested ``router_*`` fields flattened), documented."""
    docs, hints, nested = field_docs(cls), _type_hints(cls), _flattened(cls)
    out = []
    for f in fields(cls):
        if f.name in nested:
            _, prefix, sub = nested[f.name]
            value, sub_docs, sub_hints = f.default_factory(), field_docs(sub), _type_hints(sub)
            out += [Key(prefix + g.name, type_name(sub_hints[g.name]), toml_value(getattr(value, g.name)),
                        sub_docs.get(g.name, "")) for g in fields(sub)]
        else:
            out.append(Key(f.name, type_name(hints[f.name]), _default(f), docs.get(f.name, "")))
    return out


def model_keys() -> list[Key]:
    """``[model]``: the name, then each factory's own options (``model.name`` decides which apply)."""
    out = [Key("name", "string", "required", f"model factory, one of {', '.join(sorted(MODELS))}")]
    for name in sorted(MODELS):
        for p in list(inspect.signature(MODELS[name]).parameters.values())[2:]:
            default = p.default if p.default is not inspect.Parameter.empty else None
            out.append(Key(f"{p.name} (model {name})", type_name(type(default)) if default is not None else "any",
                           toml_value(default), MODEL_OPTION_DOCS.get(f"{name}.{p.name}", "")))
    return out


def algo_groups() -> list[tuple[list[str], type]]:
    """Algorithms grouped by their options class (each ``[algo.<name>]`` table of a group accepts the same keys)."""
    groups: dict[type, list[str]] = {}
    for name in sorted(ALGORITHMS):
        groups.setdefault(ALGORITHMS[name].options, []).append(name)
    return [(names, cls) for cls, names in groups.items()]


def all_tables() -> list[tuple[str, list[Key]]]:
    """(heading, keys) of every table of an experiment file, in reference order."""
    top = [Key(k, t, d, doc) for k, (t, d, doc) in TOP_LEVEL_DOCS.items()]
    out = [("top level", top), ("[model]", model_keys())]
    out += [(f"[{name}]", keys(cls)) for name, cls in TABLES]
    out += [(", ".join(f"[algo.{n}]" for n in names), keys(cls)) for names, cls in algo_groups()]
    return out


def undocumented() -> list[str]:
    """``table.key`` of every key without a meaning (a test keeps this empty)."""
    return [f"{heading} {k.name}" for heading, ks in all_tables() for k in ks if not k.doc.strip()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The reference as Markdown (docs/config.md)."""
    lines = ["# Config reference", "",
             "Generated from the config schema by `bouquet config-reference > docs/config.md`; do not edit by hand",
             "(tests/app/test_config_reference.py fails when this file or a key's description is out of date).",
             "Every table is parsed strictly: an unknown key, a wrong type or an out-of-range value is an error",
             "naming the key. `unset` means the key is left out (TOML has no null).", ""]
    for heading, ks in all_tables():
        lines += [f"## {heading}", ""]
        if not ks:
            lines += ["No options.", ""]
            continue
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k.name}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.doc)} |" for k in ks]
        lines.append("")
    return "\n".join(lines)
