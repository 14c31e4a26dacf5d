"""``bouquet supernode``: Flower's fixed SuperNode waits as options, refused on a Flower it was not written for."""

import functools

import flwr
import flwr.supernode.start_client_internal as flower_node
import pytest
from flwr.supercore.inflatable import inflatable_utils

from bouquet.flower import supernode
from bouquet.flower.supernode import FLOWER, SHORT, PacedTime, Waits, apply, check_flower, main


def test_paced_time_turns_flowers_sleeps_into_the_chosen_waits(monkeypatch):
    slept = []
    monkeypatch.setattr(supernode.time, "sleep", slept.append)
    paced = PacedTime(idle=0.2, reply=0.02)
    for s in (3, 0.5, 0.1, 7):
        paced.sleep(s)
    assert slept == [0.2, 0.02, 0.1, 7]
    assert paced.monotonic is supernode.time.monotonic  # the rest is the time module


def test_apply_patches_only_that_module(monkeypatch):
    monkeypatch.setattr(flower_node, "time", flower_node.time)
    monkeypatch.setattr(flower_node, "pull_objects", flower_node.pull_objects)
    apply(Waits(idle=0.25, reply=0.05, object_retry=0.01))
    assert isinstance(flower_node.time, PacedTime) and flower_node.time.idle == 0.25
    pull = flower_node.pull_objects
    assert isinstance(pull, functools.partial) and pull.func is inflatable_utils.pull_objects
    assert pull.keywords == {"initial_backoff": 0.01, "backoff_cap": 1.0}
    check_flower()  # applied twice is fine
    assert inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"] == 1  # Flower's own is untouched


def test_refuses_another_flower_version(monkeypatch, capsys):
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    with pytest.raises(RuntimeError, match="Flower 1.43.0 is installed"):
        check_flower()
    assert main(["--idle-wait", "0.2", "--", "--insecure"]) == 2
    assert "use flower-supernode" in capsys.readouterr().err


def test_refuses_a_changed_module(monkeypatch):
    monkeypatch.setattr(flower_node, "pull_objects", lambda *a, **k: {})
    with pytest.raises(RuntimeError, match="pull_objects"):
        check_flower()


def test_options_and_defaults():
    assert Waits(3.0, 0.5, 1.0) == FLOWER and SHORT.idle == 0.2
    assert Waits(0.2, 0.02, 0.01).args() == ["--idle-wait", "0.2", "--reply-wait", "0.02", "--object-retry", "0.01"]
    with pytest.raises(SystemExit):
        main(["--idle-wait", "0"])
