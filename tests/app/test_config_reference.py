"""The config reference lists every schema key with type, default and meaning, and docs/config.md cannot drift."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from bouquet.algorithms import ALGORITHMS
from bouquet.app import config_reference as ref
from bouquet.app.cli import main
from bouquet.app.config import TOP_LEVEL
from bouquet.app.schema import option_keys
from bouquet.engine.robust import RobustConfig

REPO = Path(__file__).resolve().parents[2]


def test_every_key_has_a_meaning():
    assert ref.undocumented() == []


def test_every_schema_key_is_listed_with_type_and_default():
    for name, cls in ref.TABLES:
        listed = ref.keys(cls)
        assert [k.name for k in listed] == option_keys(cls), name
        assert all(k.type and k.default for k in listed), name
    grouped = {n for names, _ in ref.algo_groups() for n in names}
    assert grouped == set(ALGORITHMS)
    for names, cls in ref.algo_groups():
        assert [k.name for k in ref.keys(cls)] == option_keys(cls), names
    tables = {"data", "model", "run", "train", "server", "robust", "pretrain", "init", "algo"}
    assert set(TOP_LEVEL) == tables | set(ref.TOP_LEVEL_DOCS)  # every top-level key is covered


def test_defaults_and_types_come_from_the_dataclasses():
    run = {k.name: k for k in ref.keys(ref.TABLES[1][1])}
    assert (run["rounds"].type, run["rounds"].default) == ("integer", "required")
    assert (run["seeds"].type, run["seeds"].default) == ("list of integer", "[0]")
    assert (run["threads"].type, run["threads"].default) == ("integer or unset", "unset")
    floral = {k.name: k for k in ref.keys(ALGORITHMS["floral"].options)}
    assert floral["router_init_std"].default == "1.0" and floral["router_lr"].doc  # nested router_* keys
    floral_10 = {k.name: k for k in ref.keys(ALGORITHMS["floral_10"].options)}
    assert floral_10["rank"].default == "0.1" and floral_10["rank"].doc == floral["rank"].doc  # inherited doc


def test_a_key_added_without_a_meaning_fails(monkeypatch):
    @dataclass(frozen=True)
    class Grown(RobustConfig):
        #: documented, so not reported
        new_documented: int = 1
        new_undocumented: float = 0.5

    monkeypatch.setattr(ref, "TABLES", [*ref.TABLES, ("grown", Grown)])
    assert ref.undocumented() == ["[grown] new_undocumented"]
    monkeypatch.setitem(ref.MODEL_OPTION_DOCS, "mlp.hidden", "")
    assert "[model] hidden (model mlp)" in ref.undocumented()


def test_docs_config_md_is_the_generated_reference():
    text = (REPO / "docs" / "config.md").read_text()
    assert text == ref.render_markdown(), "docs/config.md is stale: run bouquet config-reference --out docs/config.md"
    for name in ALGORITHMS:
        assert f"[algo.{name}]" in text
    assert "| `router_lr` | number | `0.1` |" in text


def test_cli_prints_or_writes_the_reference(tmp_path, capsys):
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == ref.render_markdown()
    out = tmp_path / "config.md"
    assert main(["config-reference", "--out", str(out)]) == 0
    assert out.read_text() == ref.render_markdown()


@pytest.mark.parametrize("value,text", [(None, "unset"), (True, "true"), ("auto", '"auto"'), ([0, 1], "[0, 1]"),
                                        (0.5, "0.5")])
def test_toml_values(value, text):
    assert ref.toml_value(value) == text
