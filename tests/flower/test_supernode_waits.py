"""``bouquet supernode``: Flower's fixed SuperNode waits as options, refused on a Flower it was not written for."""

import functools
import threading
import time

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


def test_busy_window_after_a_message(monkeypatch):
    paced = PacedTime(idle=3.0, reply=0.02, busy=0.02, window=10.0)
    assert paced.idle_wait() == 3.0  # no message yet
    paced.handled()
    assert paced.idle_wait() == 0.02
    monkeypatch.setattr(supernode.time, "monotonic", lambda: paced.last + 11)
    assert paced.idle_wait() == 3.0  # the window is over


def test_apply_patches_only_that_module(monkeypatch):
    calls = []

    def flowers_push(state, object_store, send, push_object):  # the shape of Flower's _push_messages
        calls.append(state)

    monkeypatch.setattr(flower_node, "time", flower_node.time)
    monkeypatch.setattr(flower_node, "pull_objects", flower_node.pull_objects)
    monkeypatch.setattr(flower_node, "_push_messages", flowers_push)
    monkeypatch.setattr(flower_node, "_pull_and_store_message", flower_node._pull_and_store_message)
    apply(Waits(idle=0.25, reply=0.05, object_retry=0.01, busy=0.01))
    assert isinstance(flower_node.time, PacedTime) and flower_node.time.idle == 0.25
    pull = flower_node.pull_objects
    assert isinstance(pull, functools.partial) and pull.func is inflatable_utils.pull_objects
    assert pull.keywords == {"initial_backoff": 0.01, "backoff_cap": 1.0}
    apply(Waits(idle=0.25, reply=0.05, object_retry=0.01, busy=0.01))  # twice: Flower's function wrapped once
    assert flower_node._push_messages.__bouquet_wrapped__ is flowers_push
    paced = flower_node.time
    assert paced.idle_wait() == 0.25
    flower_node._push_messages(state="s", object_store=None, send=None, push_object=None)
    assert calls == ["s"] and paced.idle_wait() == 0.01  # a message handled: the busy window starts
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
    assert Waits(3.0, 0.5, 1.0) == FLOWER and SHORT.idle == 3.0 and SHORT.busy == 0.05
    assert Waits(0.2, 0.02, 0.01).args() == ["--idle-wait", "0.2", "--reply-wait", "0.02", "--object-retry", "0.01"]
    assert SHORT.args()[:6] == ["--idle-wait", "3.0", "--busy-wait", "0.05", "--busy-window", "10.0"]
    with pytest.raises(SystemExit):
        main(["--idle-wait", "0"])


def test_a_reply_event_ends_the_reply_wait_and_a_stored_message_sets_the_arrival_event(monkeypatch):
    slept = []
    monkeypatch.setattr(supernode.time, "sleep", slept.append)
    replied = threading.Event()
    paced = PacedTime(idle=3.0, reply=5.0, replied=replied)
    replied.set()
    start = time.monotonic()
    paced.sleep(0.5)  # Flower's reply wait: over at once, the event used up
    assert time.monotonic() - start < 1 and not replied.is_set() and slept == []
    paced.sleep(3)
    assert slept == [3.0]  # the idle wait is unchanged

    runs = iter([None, 42])

    def flowers_pull(state, object_store, node_config, receive, get_run, get_fab, pull_object,
                     confirm_message_received, trusted_entities):  # the shape of Flower's _pull_and_store_message
        return next(runs)

    monkeypatch.setattr(flower_node, "time", flower_node.time)
    monkeypatch.setattr(flower_node, "pull_objects", flower_node.pull_objects)
    monkeypatch.setattr(flower_node, "_push_messages", flower_node._push_messages)
    monkeypatch.setattr(flower_node, "_pull_and_store_message", flowers_pull)
    arrived = threading.Event()
    apply(SHORT, arrived, replied)
    assert flower_node.time.replied is replied
    assert flower_node._pull_and_store_message(*[None] * 9) is None and not arrived.is_set()  # nothing came
    assert flower_node._pull_and_store_message(*[None] * 9) == 42 and arrived.is_set()  # a message: its task is up


def test_worker_in_node_needs_process_isolation(capsys):
    assert main(["--worker", "--", "--insecure", "--superlink", "127.0.0.1:1", "--isolation", "subprocess"]) == 2
    assert "needs --isolation process" in capsys.readouterr().err
