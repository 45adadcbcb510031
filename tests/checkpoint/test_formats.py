"""Every checkpoint format, written by real torch in the test, read back without torch."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.checkpoint.factories import rewrite_zip, save, zip_folder
from torch import nn

from torchls.checkpoint import CheckpointError, read_checkpoint
from torchls.checkpoint.dtypes import ITEMSIZE, STORAGE_DTYPE
from torchls.checkpoint.safety import WEIGHTS_ONLY_ALLOWED


def tensors_by_key(summary, container: str = "") -> dict:  # type: ignore[no-untyped-def]
    return {t.key: t for t in summary.tensors if t.container == container}


# -- the tables the reader relies on agree with the installed torch ---------------------------


def test_dtype_table_matches_torch() -> None:
    torch_dtypes = {
        str(value).removeprefix("torch."): value.itemsize
        for value in vars(torch).values()
        if isinstance(value, torch.dtype)
    }
    assert torch_dtypes == ITEMSIZE


def test_storage_table_matches_torch() -> None:
    expected = {
        name: str(dtype).removeprefix("torch.")
        for dtype, name in torch.storage._dtype_to_storage_type_map().items()
    }
    assert {k: v for k, v in STORAGE_DTYPE.items() if k != "UntypedStorage"} == expected


def test_weights_only_allow_list_matches_torch() -> None:
    from torch._weights_only_unpickler import _get_allowed_globals

    assert set(_get_allowed_globals()) == WEIGHTS_ONLY_ALLOWED


# -- torch zip format ------------------------------------------------------------------------

SAVABLE_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex128,
    torch.complex64, torch.complex32, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint64, torch.uint32, torch.uint16, torch.uint8, torch.bool, torch.float8_e4m3fn,
    torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
]  # fmt: skip


def test_every_dtype_in_a_zip_checkpoint(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental"
        state = {str(d): torch.zeros(3, 2, dtype=d) for d in SAVABLE_DTYPES}
    summary = read_checkpoint(save(state, tmp_path / "dtypes.pt"))
    found = tensors_by_key(summary)
    for dtype in SAVABLE_DTYPES:
        tensor = found[str(dtype)]
        assert tensor.dtype == str(dtype).removeprefix("torch.")
        assert tensor.shape == (3, 2)
        assert tensor.numel == 6
        assert tensor.nbytes == 6 * dtype.itemsize
    assert summary.format == "torch-zip"
    assert summary.weights_only is not None and summary.weights_only.accepted
    # the reader agrees with torch about what it would load
    loaded = torch.load(tmp_path / "dtypes.pt", weights_only=True)
    assert set(found) == set(loaded)


def test_state_dict_of_a_real_model(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    summary = read_checkpoint(save(model.state_dict(), tmp_path / "model.pt"))
    expected = model.state_dict()
    found = tensors_by_key(summary)
    assert list(found) == list(expected)
    for key, tensor in expected.items():
        assert found[key].shape == tuple(tensor.shape)
        assert found[key].dtype == str(tensor.dtype).removeprefix("torch.")
    assert summary.candidates[0].path == ""
    assert summary.candidates[0].tensors == len(expected)
    assert summary.details["byteorder"] == "little"


def test_any_archive_folder_name(tmp_path: Path) -> None:
    path = save({"w": torch.ones(2)}, tmp_path / "original_name.pt")
    renamed = path.rename(tmp_path / "renamed.bin")
    summary = read_checkpoint(renamed)
    assert summary.details["archive_folder"] == "original_name"
    assert tensors_by_key(summary)["w"].shape == (2,)


def test_parameters_views_and_shared_storages(tmp_path: Path) -> None:
    base = torch.arange(20.0)
    state = {
        "param": nn.Parameter(torch.ones(3, 4)),
        "view": base[2:14:3],  # offset 2, stride 3
        "also_base": base.view(4, 5),
        "transposed": torch.ones(3, 5).t(),
    }
    summary = read_checkpoint(save(state, tmp_path / "views.pt"))
    found = tensors_by_key(summary)
    assert found["param"].kind == "parameter"
    assert found["view"].shape == (4,)
    assert found["also_base"].shape == (4, 5)
    assert found["transposed"].shape == (5, 3)
    # 20 shared floats + 12 + 15: the shared storage is counted once
    assert summary.storage_bytes == (20 + 12 + 15) * 4
    assert sum(t.nbytes for t in summary.tensors) == (12 + 4 + 20 + 15) * 4


class TaggedTensor(torch.Tensor):
    pass


def test_tensor_subclass_is_named_and_refused_by_weights_only(tmp_path: Path) -> None:
    tagged = torch.ones(2).as_subclass(TaggedTensor)
    summary = read_checkpoint(save({"t": tagged}, tmp_path / "sub.pt"))
    tensor = tensors_by_key(summary)["t"]
    assert tensor.subclass == f"{__name__}.TaggedTensor"
    assert summary.weights_only is not None and not summary.weights_only.accepted
    assert f"{__name__}.TaggedTensor" in summary.weights_only.refused_globals
    with pytest.raises(Exception, match="TaggedTensor"):
        torch.load(tmp_path / "sub.pt", weights_only=True)


def test_big_endian_byteorder_record(tmp_path: Path) -> None:
    path = save({"w": torch.ones(2)}, tmp_path / "le.pt")
    folder = zip_folder(path)
    big = rewrite_zip(path, tmp_path / "be.pt", {f"{folder}/byteorder": b"big"})
    summary = read_checkpoint(big)
    assert summary.details["byteorder"] == "big"
    assert any("big-endian" in w for w in summary.warnings)


def test_pickle_protocol_4(tmp_path: Path) -> None:
    summary = read_checkpoint(save({"w": torch.ones(2)}, tmp_path / "p4.pt", pickle_protocol=4))
    assert summary.details["pickle_protocol"] == 4
    assert tensors_by_key(summary)["w"].shape == (2,)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantized_and_sparse_tensors(tmp_path: Path) -> None:
    state = {
        "q": torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8),
        "s": torch.eye(3).to_sparse(),
    }
    summary = read_checkpoint(save(state, tmp_path / "qs.pt"))
    found = tensors_by_key(summary)
    assert found["q"].kind == "quantized" and found["q"].dtype == "qint8"
    assert found["s"].kind == "sparse" and found["s"].shape == (3, 3)


# -- nesting ---------------------------------------------------------------------------------


def test_training_checkpoint_candidates_largest_first(tmp_path: Path) -> None:
    model = nn.Linear(16, 4)
    ema = nn.Linear(16, 4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 16)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 7,
        "model_state_dict": model.state_dict(),
        "state_dict_ema": {k: v.half() for k, v in ema.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict(),
    }
    summary = read_checkpoint(save(checkpoint, tmp_path / "train.ckpt"))
    paths = [c.path for c in summary.candidates]
    # the model's float32 weights first, then the fp16 EMA; optimizer state is not a candidate
    assert paths == ["['model_state_dict']", "['state_dict_ema']"]
    assert summary.candidates[0].keys == ("weight", "bias")
    assert summary.tree is not None
    assert {child.path for child in summary.tree.children} >= {
        "['model_state_dict']",
        "['optimizer_state_dict']",
    }


def test_lightning_layout(tmp_path: Path) -> None:
    model = nn.Linear(3, 3)
    checkpoint = {
        "epoch": 1,
        "global_step": 100,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.1, "hidden": 3},
    }
    summary = read_checkpoint(save(checkpoint, tmp_path / "lightning.ckpt"))
    assert summary.candidates[0].path == "['state_dict']"
    assert summary.candidates[0].keys == ("model.weight", "model.bias")


def test_whole_pickled_module(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    summary = read_checkpoint(save(model, tmp_path / "whole.pt"))
    first = summary.candidates[0]
    assert first.path == "(pickled module).state_dict()"
    assert set(first.keys) == set(model.state_dict())
    assert summary.weights_only is not None and not summary.weights_only.accepted
    assert any("torch.save(model)" in w for w in summary.warnings)


# -- legacy, tar, TorchScript ----------------------------------------------------------------


def test_legacy_format(tmp_path: Path) -> None:
    model = nn.Linear(5, 2)
    path = save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    summary = read_checkpoint(path)
    assert summary.format == "torch-legacy"
    assert summary.details["legacy_protocol"] == 1001
    found = tensors_by_key(summary)
    assert found["weight"].shape == (2, 5) and found["bias"].shape == (2,)
    assert summary.storage_bytes == (10 + 2) * 4


def test_legacy_views_share_one_storage(tmp_path: Path) -> None:
    base = torch.arange(10.0)
    path = save(
        {"a": base[:4], "b": base[4:]}, tmp_path / "lv.pt", _use_new_zipfile_serialization=False
    )
    found = tensors_by_key(read_checkpoint(path))
    assert found["a"].shape == (4,) and found["b"].shape == (6,)


def test_truncated_legacy_file(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buffer, _use_new_zipfile_serialization=False)
    path = tmp_path / "cut.pt"
    path.write_bytes(buffer.getvalue()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    with pytest.raises(
        CheckpointError, match=r"TorchScript archive: load it with torch\.jit\.load"
    ):
        read_checkpoint(path)


def test_old_tar_format_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as archive:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 0
            archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(CheckpointError, match="old tar format"):
        read_checkpoint(path)


# -- safetensors, shards, Hugging Face folders -----------------------------------------------


def test_safetensors_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(
        {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)},
        str(path),
        metadata={"format": "pt"},
    )
    summary = read_checkpoint(path)
    assert summary.format == "safetensors"
    found = tensors_by_key(summary)
    assert found["a"].shape == (2, 3) and found["b"].dtype == "bfloat16"
    assert summary.details["metadata"] == {"format": "pt"}
    assert summary.weights_only is None  # no pickle at all


def _write_sharded(folder: Path, kind: str) -> Path:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    state = model.state_dict()
    keys = list(state)
    shards = {f"part-1.{kind}": keys[:2], f"part-2.{kind}": keys[2:]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        part = {k: state[k].contiguous() for k in shard_keys}
        if kind == "safetensors":
            save_file(part, str(folder / shard))
        else:
            torch.save(part, folder / shard)
        weight_map.update({k: shard for k in shard_keys})
    name = (
        "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    )
    index = folder / name
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_index(tmp_path: Path, kind: str) -> None:
    summary = read_checkpoint(_write_sharded(tmp_path, kind))
    assert summary.format == "sharded"
    assert set(tensors_by_key(summary)) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert [s["tensors"] for s in summary.details["shards"]] == [2, 2]


def test_shard_outside_the_folder_is_refused(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint's folder"):
        read_checkpoint(index)


def test_huggingface_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8})
    )
    save_file({"embeddings.weight": torch.zeros(10, 8)}, str(tmp_path / "model.safetensors"))
    summary = read_checkpoint(tmp_path)
    assert summary.format == "huggingface"
    assert summary.details["config"] == {"model_type": "bert", "architectures": ["BertModel"]}
    assert summary.details["weights"] == "model.safetensors"


def test_huggingface_folder_with_sharded_bin(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    _write_sharded(tmp_path, "bin")
    summary = read_checkpoint(tmp_path)
    assert summary.details["weights"] == "pytorch_model.bin.index.json"
    assert len(summary.tensors) == 4


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"config\.json but no weights"):
        read_checkpoint(tmp_path)


# -- what the file claims is checked -------------------------------------------------------


def test_record_size_must_match_dtype_times_numel(tmp_path: Path) -> None:
    path = save({"w": torch.ones(8)}, tmp_path / "ok.pt")
    folder = zip_folder(path)
    bad = rewrite_zip(path, tmp_path / "bad.pt", {f"{folder}/data/0": b"\x00" * 16})
    with pytest.raises(
        CheckpointError, match=r"record data/0 holds 16 bytes, but the pickle says 8 x float32 = 32"
    ):
        read_checkpoint(bad)


def test_missing_storage_record(tmp_path: Path) -> None:
    path = save({"w": torch.ones(8)}, tmp_path / "ok.pt")
    folder = zip_folder(path)
    bad = rewrite_zip(path, tmp_path / "bad.pt", {f"{folder}/data/0": None})
    with pytest.raises(CheckpointError, match="storage '0' has no record"):
        read_checkpoint(bad)


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    path = save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    folder = zip_folder(path)
    dup = tmp_path / "dup.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(dup, "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr(f"{folder}/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="two members named"):
        read_checkpoint(dup)


def test_path_traversing_member_is_refused(tmp_path: Path) -> None:
    path = save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    bad = rewrite_zip(path, tmp_path / "trav.pt", {"ok/../../evil": b"x"})
    with pytest.raises(CheckpointError, match="escapes the archive"):
        read_checkpoint(bad)


def _safetensors_with_header(path: Path, header: dict, data: bytes) -> Path:  # type: ignore[type-arg]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def test_safetensors_overlapping_tensors(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(CheckpointError, match="overlap"):
        read_checkpoint(_safetensors_with_header(tmp_path / "o.safetensors", header, b"\x00" * 12))


def test_safetensors_offsets_past_the_end(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    with pytest.raises(CheckpointError, match="past the end of the file"):
        read_checkpoint(_safetensors_with_header(tmp_path / "e.safetensors", header, b"\x00" * 8))


def test_safetensors_size_must_match_shape(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    with pytest.raises(CheckpointError, match="needs 12"):
        read_checkpoint(_safetensors_with_header(tmp_path / "s.safetensors", header, b"\x00" * 8))


def test_opcode_names_match_pickletools() -> None:
    import pickletools

    from torchls.checkpoint.safety import _OPCODE_NAMES

    assert {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes} == _OPCODE_NAMES


def test_fast_json_matches_json_dumps(tmp_path: Path) -> None:
    from torchls.checkpoint.summary import summary_json

    tagged = torch.ones(2).as_subclass(TaggedTensor)
    state = {'a\u00e9"\\': torch.ones(2, 3), "t": tagged, 3: torch.zeros(1, dtype=torch.int8)}
    summary = read_checkpoint(save(state, tmp_path / "j.pt"))
    assert json.loads(summary_json(summary)) == json.loads(json.dumps(summary.as_json()))


def test_viewer_rows_hold_every_tensor_field(tmp_path: Path) -> None:
    # The viewer's compact table (one array per tensor) must give back the report's tensors,
    # optional fields included: a subclass, a tied weight's shared_with.
    from torchls.checkpoint.summary import tensor_rows_json, tensors_from_rows

    tagged = torch.ones(2).as_subclass(TaggedTensor)
    embed = torch.ones(4, 2)
    state = {'a\u00e9"\\': torch.ones(2, 3), "t": tagged, "embed": embed, "tied": embed}
    summary = read_checkpoint(save(state, tmp_path / "r.pt"))
    expected = json.loads(json.dumps(summary.as_json()))["tensors"]
    assert any("subclass" in t for t in expected) and any("shared_with" in t for t in expected)
    text = tensor_rows_json(summary)
    assert text.isascii()
    assert tensors_from_rows(json.loads(text)) == expected


@pytest.mark.parametrize("legacy", [False, True])
def test_cuda_storage_locations_are_reported(tmp_path: Path, legacy: bool) -> None:
    """A checkpoint saved on a GPU names `cuda:0` as its storages' location; no GPU is needed
    to write one: the location string is what torch.save records."""
    path = save(
        {"w": torch.ones(2)}, tmp_path / "cpu.pt", _use_new_zipfile_serialization=not legacy
    )
    data = path.read_bytes()
    # 'cpu' is pickled as BINUNICODE len 3; make it the 6-character 'cuda:0'
    patched = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0", 1)
    assert patched != data
    if legacy:
        cuda = tmp_path / "cuda.pt"
        cuda.write_bytes(patched)
    else:
        folder = zip_folder(path)
        with zipfile.ZipFile(path) as archive:
            pickle_data = archive.read(f"{folder}/data.pkl")
        cuda = rewrite_zip(
            path,
            tmp_path / "cuda.pt",
            {
                f"{folder}/data.pkl": pickle_data.replace(
                    b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0", 1
                )
            },
        )
    summary = read_checkpoint(cuda)
    assert summary.details["devices"] == ["cuda:0"]
    assert summary.tensors[0].device == "cuda:0"
