"""Tensor dicts <-> Flower records: values, dtypes and shapes survive, client prefixes split back."""

import torch

from bouquet.flower.records import (
    add_client,
    flatten_state,
    from_record,
    split_clients,
    tensor_spec,
    to_record,
    unflatten_state,
)


def test_record_roundtrip_keeps_values_dtypes_and_shapes():
    tensors = {"w": torch.randn(3, 4), "step": torch.zeros((), dtype=torch.float64), "idx": torch.arange(5),
               "empty": torch.zeros(0, 2)}
    back = from_record(to_record(tensors))
    assert tensor_spec(back) == tensor_spec(tensors)
    for k, v in tensors.items():
        assert torch.equal(back[k], v)
    back["w"] += 1  # writable, not a view of the message buffer
    assert not torch.equal(back["w"], tensors["w"])


def test_nested_server_state_flattens_and_back():
    state = {"params": {"a.b": torch.ones(2)}, "opt": {}, "adam": {"m": {"x": torch.zeros(1)}, "t": 3}}
    tensors, other = flatten_state(state)
    assert set(tensors) == {"params/a.b", "adam/m/x"}
    back = unflatten_state(from_record(to_record(tensors)), other)
    assert back["opt"] == {} and back["adam"]["t"] == 3
    assert torch.equal(back["params"]["a.b"], state["params"]["a.b"])


def test_client_prefixes_split_and_flag_malformed_keys():
    msg = {**add_client({"w": torch.ones(1)}, 3), **add_client({"w": torch.zeros(1)}, 12), "w": torch.ones(1),
           "cx/w": torch.ones(1)}
    parts = split_clients(msg)
    assert sorted(parts) == [-1, 3, 12]
    assert torch.equal(parts[12]["w"], torch.zeros(1))
    assert sorted(parts[-1]) == ["cx/w", "w"]


def test_shared_config_names_per_node_entries_and_each_node_reads_its_own():
    from bouquet.flower.records import BY_NODE, for_node, shared_config

    cfgs = {7: {"server-round": 3, "clients": [0, 3], "eval:clients": [0, 3, 6]},
            9: {"server-round": 3, "clients": [1], "eval:clients": [1, 4]}}
    shared = shared_config(cfgs)
    assert shared == {"server-round": 3, "clients": {"7": [0, 3], "9": [1]},
                      "eval:clients": {"7": [0, 3, 6], "9": [1, 4]}, BY_NODE: ["clients", "eval:clients"]}
    for node, cfg in cfgs.items():
        assert for_node(shared, node) == cfg
    assert for_node(shared, 8)["clients"] == []  # a node the message does not name serves none of them
    assert for_node(cfgs[7], 7) == cfgs[7]  # a per-node config reads as it is


def test_shared_config_refuses_what_would_not_read_back_or_grow_every_message():
    from bouquet.flower.records import shared_config

    assert shared_config({1: {"a": 1, "x": 2}, 2: {"a": 1}}) is None  # an entry only some nodes have
    big = {n: {"clients": list(range(n * 3000, (n + 1) * 3000))} for n in range(2)}
    assert shared_config(big) is None  # 6,000 ids for every node to download: per-node messages instead
    assert shared_config(big, limit=6000) is not None
    assert shared_config({1: {"by-node": [1]}, 2: {"by-node": [2]}}) is None  # its own key taken
