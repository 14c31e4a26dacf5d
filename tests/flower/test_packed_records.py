"""Packed records (one record per tensor dict: inline bytes, or one Array when large): exact round trips, few
Flower objects, clear errors."""

import json
import struct

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from bouquet.flower.records import (
    INLINE_LIMIT,
    PACKED,
    content_values,
    from_record,
    is_packed,
    pack,
    pack_many,
    packed_meta,
    tensor_spec,
    to_record,
)


def _tensors() -> dict[str, torch.Tensor]:
    return {"w": torch.randn(3, 4), "step": torch.tensor(7.25, dtype=torch.float64), "idx": torch.arange(5),
            "mask": torch.tensor([True, False, True]), "flag": torch.tensor(False), "empty": torch.zeros(0, 2),
            "c3/a.b": torch.randn(2, 1, dtype=torch.float64), "n": torch.tensor(-3, dtype=torch.int64),
            "half": torch.randn(4, dtype=torch.bfloat16)}


def test_packed_roundtrip_is_exact_for_dtypes_and_0d_tensors():
    tensors = _tensors()
    record = pack(tensors)
    assert is_packed(record) and list(record) == [PACKED]
    back = from_record(record)
    assert list(back) == list(tensors) and tensor_spec(back) == tensor_spec(tensors)
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    back["w"] += 1  # writable, its own memory
    assert not torch.equal(back["w"], tensors["w"]) and torch.equal(back["idx"], torch.arange(5))
    assert from_record(pack({})) == {}


def test_packed_record_survives_flower_deflate_and_inflate():
    tensors = _tensors()
    content = RecordDict({"arrays": pack(tensors)})
    contents = {k: v.deflate() for k, v in get_all_nested_objects(content).items()}  # what travels
    copy = inflate_object_from_contents(content.object_id, contents)
    back = from_record(copy["arrays"])
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_packing_sends_one_object_per_tensor_dict_and_a_chunked_array_when_large():
    tensors = {f"c{c}/{k}": torch.randn(4, 3) for c in range(4) for k in ("weight", "bias")}
    plain = get_all_nested_objects(RecordDict({"arrays": to_record(tensors)}))
    packed = get_all_nested_objects(RecordDict({"arrays": pack(tensors), "config": ConfigRecord({"a": 1})}))
    assert len(plain) == 2 + 2 * len(tensors)  # RecordDict, ArrayRecord, an Array and a chunk per tensor
    assert len(packed) == 3  # RecordDict, the packed bytes' ConfigRecord, the config's
    assert isinstance(pack(tensors), ConfigRecord)
    large = {"w": torch.randn(INLINE_LIMIT // 4 + 1)}  # just over the inline limit
    record = pack(large)
    assert isinstance(record, ArrayRecord) and is_packed(record)
    objects = get_all_nested_objects(RecordDict({"arrays": record}))
    assert len(objects) == 3 + 1  # RecordDict, ArrayRecord, the Array and its one 5 MB chunk
    assert torch.equal(from_record(record)["w"], large["w"])


def test_a_record_without_tensors_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="'arrays': expected an ArrayRecord or a packed record"):
        from_record(ConfigRecord({"lr": 0.1}), "arrays")


def test_config_and_metrics_ride_in_the_packed_index():
    tensors = {"c1/w": torch.randn(3, 2)}
    config = {"server-round": 4, "clients": [1, 7], "eval:server/opt/lr": 0.5, "name": "x", "ok": True}
    many = pack_many(tensors, [config, {"clients": [2]}, None])
    assert packed_meta(many[0]) == config and packed_meta(many[1]) == {"clients": [2]} and packed_meta(many[2]) == {}
    assert all(torch.equal(from_record(r)["c1/w"], tensors["c1/w"]) for r in many)
    content = RecordDict({"arrays": many[0]})
    assert len(get_all_nested_objects(content)) == 2  # the RecordDict and the packed record: nothing else
    assert content_values(content, "config") == config
    # a message with its own record reads that; one with neither gives {}
    assert content_values(RecordDict({"arrays": many[0], "config": ConfigRecord({"a": 1})}), "config") == {"a": 1}
    assert content_values(RecordDict({"arrays": to_record(tensors)}), "metrics") == {}


def test_plain_records_still_read():
    tensors = {"w": torch.randn(2, 2), "s": torch.zeros((), dtype=torch.float64)}
    assert not is_packed(to_record(tensors))
    back = from_record(to_record(tensors))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def _bad(data: bytes) -> ArrayRecord:
    return ArrayRecord(array_dict={PACKED: Array(dtype="uint8", shape=(len(data),), stype=PACKED, data=data)})


def _with_header(header, body: bytes = b"") -> ArrayRecord:
    raw = json.dumps(header).encode()
    return _bad(struct.pack("<Q", len(raw)) + raw + body)


@pytest.mark.parametrize("record, why", [
    (_bad(b"abc"), "shorter than the 8-byte header"),
    (_bad(struct.pack("<Q", 99) + b"{}"), "header of 99 bytes"),
    (_bad(struct.pack("<Q", 3) + b"{x}"), "not JSON"),
    (_with_header({"format": "other", "tensors": []}), "not a bouquet.packed/1 index"),
    (_with_header({"format": "bouquet.packed/1", "tensors": [["w", "float32", [2], 0, 8]]}, b"1234"),
     "do not fit"),
    (_with_header({"format": "bouquet.packed/1", "tensors": [["w", "object", [1], 0, 8]]}, b"12345678"),
     "bad index entry"),
    (_with_header({"format": "bouquet.packed/1", "tensors": [["w", "uint8", [1], 0, 1]] * 2}, b"1"), "twice"),
    (_with_header({"format": "bouquet.packed/1", "tensors": [["m", "bool", [1], 0, 1]]}, b"\x07"), "bool bytes"),
])
@pytest.mark.parametrize("inline", [False, True])
def test_malformed_packed_record_names_the_key(record, why, inline):
    if inline:  # the same bytes inline, as pack() sends them up to INLINE_LIMIT
        record = ConfigRecord({PACKED: record[PACKED].data})
    with pytest.raises(ValueError, match=why) as err:
        from_record(record, "arrays")
    assert "'arrays'" in str(err.value) and PACKED in str(err.value)
