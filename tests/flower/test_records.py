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
