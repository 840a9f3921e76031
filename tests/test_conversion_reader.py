"""The pure-Python TensorFlow checkpoint reader against what TensorFlow itself wrote and read back."""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np
import pytest

import conversion_fixtures as fx
from align_hf.conversion import checksum
from align_hf.conversion.tf_checkpoint import CheckpointError, TFCheckpoint, main, resolve_prefix, variable_kind

CHECKPOINTS = ["align_b0", "efficientnet_tf1", "bert_tf1", "dtypes", "tf1_sharded"]


def _bytes_of(ckpt: TFCheckpoint, key: str) -> bytes:
    """The bytes TensorFlow's own reader hashed in the manifest (strings concatenated, bf16 raw)."""
    value = ckpt.get_tensor(key, bfloat16_as_float32=False)
    if ckpt.entry(key).dtype == "string":
        return b"".join(np.asarray(value, dtype=object).reshape(-1))
    return np.ascontiguousarray(value).tobytes()


# ----------------------------------------------------------------------------- CRC32C
def _crc_bitwise(data: bytes) -> int:
    """CRC-32C straight from its definition, one bit at a time: the oracle."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_published_check_values():
    # RFC 3720 (iSCSI) appendix B.4 and the customary "123456789" check value of CRC-32C
    assert checksum.value(b"123456789") == 0xE3069283
    assert checksum.value(bytes(32)) == 0x8A9136AA
    assert checksum.value(bytes([0xFF] * 32)) == 0x62A8AB43
    assert checksum.value(bytes(range(32))) == 0x46DD794E
    assert checksum.value(b"123456789") != zlib.crc32(b"123456789")  # not the zlib polynomial


@pytest.mark.parametrize("size", [0, 1, 511, 2048, 2048 + 3, 4 * 512 * 7 + 100, 70_001])
def test_crc32c_chunked_numpy_path_equals_bitwise_definition(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert checksum._fallback_extend(0, data) == _crc_bitwise(data)
    # extending in two pieces equals one pass
    cut = size // 3
    assert checksum._fallback_extend(checksum._fallback_extend(0, data[:cut]), data[cut:]) == _crc_bitwise(data)


def test_crc32c_numpy_path_spans_several_blocks(monkeypatch):
    monkeypatch.setattr(checksum, "_BLOCK", 4 * 512)  # force several numpy passes on a small input
    data = np.random.default_rng(1).integers(0, 256, 5 * 2048 + 17, dtype=np.uint8).tobytes()
    assert checksum._fallback_extend(0, data) == _crc_bitwise(data)


def test_crc32c_active_backend_equals_bitwise_definition():
    # google-crc32c when installed, the numpy code otherwise; the reader uses this entry point
    data = np.random.default_rng(7).integers(0, 256, 10_000, dtype=np.uint8)
    assert checksum.value(data) == checksum.value(data.tobytes()) == _crc_bitwise(data.tobytes())
    assert checksum.extend(checksum.value(data[:123]), memoryview(data.tobytes()[123:])) == _crc_bitwise(data.tobytes())


def test_crc32c_mask_roundtrip_and_differs():
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert checksum.unmask(checksum.mask(crc)) == crc
    assert checksum.mask(0xE3069283) != 0xE3069283


# ----------------------------------------------------------------------------- exact tensors
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_reader_returns_exactly_what_tensorflow_reads(name):
    recorded = fx.manifest()["checkpoints"][name]["keys"]
    with TFCheckpoint(fx.prefix(name)) as ckpt:
        assert sorted(ckpt.keys()) == sorted(recorded)
        for key, info in recorded.items():
            entry = ckpt.entry(key)
            assert entry.dtype == info["dtype"], key
            assert list(entry.shape) == info["shape"], key
            assert hashlib.sha256(_bytes_of(ckpt, key)).hexdigest()[:16] == info["sha256"], key


@pytest.mark.parametrize("name", ["align_b0", "dtypes"])
def test_object_graph_full_names_equal_tensorflow_protobuf_parse(name):
    recorded = fx.manifest()["checkpoints"][name]["full_names"]
    with TFCheckpoint(fx.prefix(name)) as ckpt:
        assert ckpt.is_object_based
        assert ckpt.object_graph.full_names == recorded
        assert ckpt.full_name("temperature/.ATTRIBUTES/VARIABLE_VALUE" if name == "align_b0" else "f32/.ATTRIBUTES/VARIABLE_VALUE") in (
            "Variable",
            recorded.get("f32/.ATTRIBUTES/VARIABLE_VALUE"),
        )


def test_every_dtype_string_empty_and_scalar_values():
    exp = fx.expected()
    with TFCheckpoint(fx.prefix("dtypes")) as ckpt:

        def get(name, **kw):
            return ckpt.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE", **kw)

        for name in ("f16", "f32", "f64", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "bool", "c64",
                     "c128", "scalar", "empty"):
            want = exp[f"dtype_{name}"]
            got = get(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want)
        # bfloat16: exact widening to float32, raw bits on request
        np.testing.assert_array_equal(get("bf16"), exp["dtype_bf16"])
        assert get("bf16").dtype == np.float32
        np.testing.assert_array_equal(get("bf16", bfloat16_as_float32=False), exp["dtype_bf16_bits"])
        strings = get("str")
        assert strings.shape == (2, 2)
        assert strings[0, 0] == b"hello" and strings[0, 1] == b"" and strings[1, 0] == "caf\u00e9".encode()
        assert strings[1, 1] == bytes(range(256))
        assert ckpt.entry("bf16/.ATTRIBUTES/VARIABLE_VALUE").dtype == "bfloat16"


def test_tensors_are_read_only_views_of_the_mapped_file():
    with TFCheckpoint(fx.prefix("dtypes")) as ckpt:
        arr = ckpt.get_tensor("f32/.ATTRIBUTES/VARIABLE_VALUE")
        assert not arr.flags.owndata and not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0, 0] = 1.0


def test_tf1_shards_and_partitioned_variable():
    with TFCheckpoint(fx.prefix("tf1_sharded")) as ckpt:
        assert ckpt.num_shards == 3 and not ckpt.is_object_based and ckpt.object_graph is None
        # plain variables sit in shards 1 and 2, the partitioned one (slices) in shard 0
        assert {ckpt.entry(k).shard_id for k in ckpt.keys() if not ckpt.entry(k).slices} == {1, 2}
        entry = ckpt.entry("embedding/table")
        assert len(entry.slices) == 3 and entry.shape == (300, 4)
        np.testing.assert_array_equal(ckpt.get_tensor("embedding/table"), fx.expected()["tf1_partitioned"])
        assert ckpt.get_tensor("step") == 7


def test_slots_and_bookkeeping_are_classified():
    with TFCheckpoint(fx.prefix("align_b0")) as ckpt:
        graph = ckpt.object_graph
        slot_keys = {k for k in ckpt.keys() if "/.OPTIMIZER_SLOT/" in k}
        assert slot_keys and set(graph.slots) == slot_keys
        # each slot points back at the variable it belongs to
        for slot_key, (var_key, slot_name) in graph.slots.items():
            assert slot_key.startswith(var_key.split("/.ATTRIBUTES/")[0]) and slot_name in ("m", "v")
        kinds = {k: variable_kind(ckpt, k) for k in ckpt.keys()}
        assert {k for k, kind in kinds.items() if kind == "slot"} == slot_keys
        assert kinds["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"] == "bookkeeping"
        assert kinds["loss_tracker/count/.ATTRIBUTES/VARIABLE_VALUE"] == "bookkeeping"
        assert kinds["temperature/.ATTRIBUTES/VARIABLE_VALUE"] == "model"


# ----------------------------------------------------------------------------- paths
def test_prefix_resolution_from_index_data_and_directory():
    p = fx.prefix("bert_tf1")
    assert resolve_prefix(p) == str(p)
    assert resolve_prefix(str(p) + ".index") == str(p)
    assert resolve_prefix(str(p) + ".data-00000-of-00001") == str(p)
    assert resolve_prefix(p.parent) == str(p)  # via the `checkpoint` state file
    assert resolve_prefix(fx.prefix("dtypes").parent) == str(fx.prefix("dtypes"))  # the only .index there


# ----------------------------------------------------------------------------- refusals
def test_corrupted_tensor_is_refused_and_named(tmp_path):
    prefix = fx.copy_checkpoint("dtypes", tmp_path / "c")
    with TFCheckpoint(prefix) as ckpt:
        entry = ckpt.entry("f32/.ATTRIBUTES/VARIABLE_VALUE")
        original = np.array(ckpt.get_tensor(entry.key))
    data = bytearray((tmp_path / "c" / "ckpt.data-00000-of-00001").read_bytes())
    data[entry.offset + 1000] ^= 0x10
    (tmp_path / "c" / "ckpt.data-00000-of-00001").write_bytes(bytes(data))
    with TFCheckpoint(prefix) as ckpt:
        with pytest.raises(CheckpointError, match=r"CRC32C mismatch for 'f32/"):
            ckpt.get_tensor(entry.key)
        with pytest.raises(CheckpointError, match="corrupted"):
            ckpt.verify_all()
        np.testing.assert_array_equal(ckpt.get_tensor("i32/.ATTRIBUTES/VARIABLE_VALUE"), fx.expected()["dtype_i32"])
    # the check is what stands between the flipped bit and the caller
    with TFCheckpoint(prefix, verify=False) as ckpt:
        assert not np.array_equal(ckpt.get_tensor(entry.key), original)


def test_corrupted_string_tensor_is_refused(tmp_path):
    prefix = fx.copy_checkpoint("dtypes", tmp_path / "c")
    with TFCheckpoint(prefix) as ckpt:
        entry = ckpt.entry("str/.ATTRIBUTES/VARIABLE_VALUE")
    path = tmp_path / "c" / "ckpt.data-00000-of-00001"
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.size - 3] ^= 0x01  # inside the string bytes
    path.write_bytes(bytes(data))
    with TFCheckpoint(prefix) as ckpt, pytest.raises(CheckpointError, match="CRC32C mismatch for 'str/"):
        ckpt.get_tensor(entry.key)


def test_corrupted_index_block_is_refused(tmp_path):
    prefix = fx.copy_checkpoint("bert_tf1", tmp_path / "c")
    path = tmp_path / "c" / "bert_model.ckpt.index"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: CRC32C mismatch"):
        TFCheckpoint(prefix)


def test_truncated_files_are_refused(tmp_path):
    prefix = fx.copy_checkpoint("bert_tf1", tmp_path / "c")
    data_path = tmp_path / "c" / "bert_model.ckpt.data-00000-of-00001"
    data_path.write_bytes(data_path.read_bytes()[:1000])
    with TFCheckpoint(prefix) as ckpt:
        with pytest.raises(CheckpointError, match="truncated"):
            ckpt.get_tensor("bert/embeddings/word_embeddings")
    index_path = tmp_path / "c" / "bert_model.ckpt.index"
    index_path.write_bytes(index_path.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index|truncated|corrupted"):
        TFCheckpoint(prefix)


def test_missing_shard_is_refused(tmp_path):
    prefix = fx.copy_checkpoint("tf1_sharded", tmp_path / "c")
    (tmp_path / "c" / "model.ckpt.data-00001-of-00003").unlink()
    with TFCheckpoint(prefix) as ckpt:
        np.testing.assert_array_equal(ckpt.get_tensor("embedding/table"), fx.expected()["tf1_partitioned"])
        shard1 = next(k for k in ckpt.keys() if ckpt.entry(k).shard_id == 1 and not ckpt.entry(k).slices)
        with pytest.raises(CheckpointError, match="data file missing"):
            ckpt.get_tensor(shard1)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
        (b"PK\x03\x04" + bytes(100), "zip"),
        (bytes(range(256)), "bad magic"),
        (b"", "too short"),
    ],
)
def test_wrong_kinds_of_file_are_refused(tmp_path, content, message):
    as_index = tmp_path / "model.index"
    as_index.write_bytes(content)
    bare = tmp_path / "weights.bin"
    bare.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        TFCheckpoint(as_index if message in ("bad magic", "too short") else bare)


def test_directories_without_a_checkpoint_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        TFCheckpoint(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="SavedModel"):
        TFCheckpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        TFCheckpoint(tmp_path / "nothing-here")


def test_unknown_key_error_suggests_close_keys():
    with TFCheckpoint(fx.prefix("bert_tf1")) as ckpt, pytest.raises(KeyError, match="similar keys"):
        ckpt.get_tensor("bert/embeddings/word_embeddings_typo/word_embeddings")


# ----------------------------------------------------------------------------- CLI
def test_cli_lists_model_variables_with_keras_names(capsys):
    assert main([str(fx.prefix("align_b0"))]) == 0
    out = capsys.readouterr().out
    assert "stem_bn/gamma" in out and "[1, 1, 1, 1, 32]" in out and "Variable" in out
    assert ".OPTIMIZER_SLOT" not in out
    assert main([str(fx.prefix("align_b0")), "--all", "--json", "--filter", "stem_conv"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["kind"] for r in rows} == {"model", "slot"} and all("stem_conv" in r["name"] for r in rows)


def test_cli_verify_and_error_exit(tmp_path, capsys):
    assert main([str(fx.prefix("tf1_sharded")), "--verify"]) == 0
    assert "all CRC32C checksums match" in capsys.readouterr().out
    prefix = fx.copy_checkpoint("tf1_sharded", tmp_path / "c")
    path = tmp_path / "c" / "model.ckpt.data-00000-of-00003"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    assert main([str(prefix), "--verify"]) == 1
    assert "CRC32C mismatch" in capsys.readouterr().err
