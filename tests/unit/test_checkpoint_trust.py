"""Checkpoints are data, never code, and are checked before use.

A crafted ``.metadata`` pickle is refused by name on every read path (resume, evaluation of
a checkpoint, export, the unsharded reader) and its payload never runs; byte items are
neither written nor read; every file's CRC32C is verified before DCP opens one, naming the
damaged, missing or extra file; a resume on data of another schema is refused naming the
field. One small checkpoint is trained once (one rank in this process), then copied and
damaged per test.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

from dlrm_dist.checkpoint import CheckpointError
from dlrm_dist.checkpoint.integrity import checksum
from dlrm_dist.checkpoint.io import non_tensor_keys
from dlrm_dist.checkpoint.manifest import MANIFEST, Manifest, RunInfo, schema_changes, schema_of
from dlrm_dist.checkpoint.reader import METADATA_FILE, MetadataUnpickler, read_metadata, unpickle_metadata
from dlrm_dist.checkpoint.store import step_dir
from dlrm_dist.checkpoint.unsharded import read_unsharded
from dlrm_dist.cli import export_main
from dlrm_dist.errors import EXIT_BAD_STATE
from dlrm_dist.features.io import load_schema
from tests.checkpoint_helper import JOB, rewrite_file_sum, train_here
from tests.state_helper import load_embedding_optimizer_state

STEPS = 4
MIXED = Path(__file__).resolve().parents[1] / "schemas" / "mixed.toml"


class _Payload:
    """Unpickling this runs ``os.system`` (pickled as posix.system): it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trust")
    train_here([f"--train.checkpoint_dir={root / 'ckpt'}", f"--train.steps={STEPS}", f"--run-dir={root / 'run'}"])
    return step_dir(root / "ckpt", STEPS)


def _copy(saved: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt" / saved.name
    shutil.copytree(saved, dst)
    return dst


def _crafted(saved: Path, tmp_path: Path, forge_checksum: bool = True) -> tuple[Path, Path]:
    """A copy whose .metadata is a pickle calling os.system; the manifest's checksum forged to match."""
    ckpt, marker = _copy(saved, tmp_path), tmp_path / "marker"
    (ckpt / METADATA_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    if forge_checksum:
        rewrite_file_sum(ckpt, METADATA_FILE)
    return ckpt, marker


def _job(tmp_path: Path, *args: str) -> list[str]:
    return [f"--run-dir={tmp_path / 'run2'}", *args]


# -- item 1: the metadata is unpickled from an allow-list ----------------------------------------

def test_the_allow_list_covers_what_dcp_writes(saved) -> None:
    seen: set[str] = set()

    class Spy(MetadataUnpickler):
        def find_class(self, module, name):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    with open(saved / METADATA_FILE, "rb") as f:
        Spy(f).load()
    assert {"torch.distributed.checkpoint.metadata.Metadata", "torch.Size", "torch.float32"} <= seen
    ours = read_metadata(saved)
    theirs = dcp.FileSystemReader(str(saved)).read_metadata()
    assert ours.state_dict_metadata == theirs.state_dict_metadata and ours.storage_data == theirs.storage_data
    # no byte items: every value was saved as a tensor, so nothing needs a full unpickler
    assert not any(isinstance(v, BytesStorageMetadata) for v in ours.state_dict_metadata.values())
    assert {"train.step", "train.torch_rng"} <= set(ours.state_dict_metadata)


def test_a_crafted_metadata_is_refused_by_the_unsharded_reader_and_export(saved, tmp_path, capsys) -> None:
    ckpt, marker = _crafted(saved, tmp_path)
    with pytest.raises(CheckpointError, match=r"\.metadata: refusing to unpickle 'posix\.system'"):
        read_unsharded(ckpt)
    with pytest.raises(CheckpointError, match="refusing to unpickle 'posix.system'"):
        load_embedding_optimizer_state(ckpt)
    code = export_main.main([str(ckpt), "--out", str(tmp_path / "export"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_STATE and "posix.system" in err and str(ckpt / METADATA_FILE) in err, err
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["resume", "inference_only"])
def test_a_crafted_metadata_is_refused_on_resume_and_evaluation(saved, tmp_path, mode) -> None:
    ckpt, marker = _crafted(saved, tmp_path)
    args = [f"--train.checkpoint={ckpt}", f"--train.steps={STEPS + 2}"]
    args += ["--train.inference_only=true"] if mode == "inference_only" else []
    with pytest.raises(CheckpointError, match=r"refusing to unpickle 'posix\.system'") as e:
        train_here(_job(tmp_path, *args))
    assert str(ckpt / METADATA_FILE) in str(e.value)
    assert not marker.exists()


def test_refused_by_name_without_a_checksum_to_get_past() -> None:
    """The reader itself, on bytes no checksum vouches for: other callables, byte items, foreign objects."""
    for payload, name in ((_Payload(Path("/nonexistent/m")), "posix.system"),
                          (shutil.rmtree, "shutil.rmtree"), (torch.load, "torch.serialization.load")):
        with pytest.raises(CheckpointError, match=f"refusing to unpickle '{name}'"):
            unpickle_metadata(pickle.dumps(payload), "x/.metadata")
    for data, words in ((b"\x80\x04garbage", "not a readable DCP metadata file"),
                        (pickle.dumps({"a": 1}), "holds a dict, not a Metadata"),
                        (pickle.dumps(torch.Size([3])), "holds a Size, not a Metadata")):
        with pytest.raises(CheckpointError, match=words):
            unpickle_metadata(data, "x/.metadata")


def test_values_that_are_not_tensors_are_found_before_a_save() -> None:
    """save_checkpoint refuses these (DCP would pickle them as byte items): the keys are named."""
    state = {"a": torch.ones(1), "b": {"c": 1.0, "d": [torch.ones(1), "x"]}, "e": torch.tensor(3)}
    assert non_tensor_keys(state) == ["b.c", "b.d.1"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # a process-less save, on purpose
def test_a_byte_item_is_refused(tmp_path) -> None:
    dcp.save({"w": torch.ones(2), "note": {"a": [1, 2]}}, checkpoint_id=str(tmp_path), no_dist=True)
    with pytest.raises(CheckpointError, match=r"'note.a' is a pickled byte item"):
        read_metadata(tmp_path)


def test_metadata_naming_files_outside_the_checkpoint_is_refused(saved, tmp_path) -> None:
    ckpt = _copy(saved, tmp_path)
    metadata = read_metadata(ckpt)
    info = next(iter(metadata.storage_data.values()))
    info.relative_path = "../../elsewhere.distcp"
    (ckpt / METADATA_FILE).write_bytes(pickle.dumps(metadata))
    rewrite_file_sum(ckpt, METADATA_FILE)
    with pytest.raises(CheckpointError, match="names '../../elsewhere.distcp', not a file of the checkpoint"):
        read_unsharded(ckpt)


# -- item 8: every file is checksummed at save and verified before use ---------------------------

def _shard(ckpt: Path) -> Path:
    return next(ckpt.glob("*.distcp"))


def _flip(path: Path, offset: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_manifest_lists_every_file_with_its_checksum(saved) -> None:
    files = json.loads((saved / MANIFEST).read_text())["files"]
    assert set(files) == {p.name for p in saved.iterdir()} - {MANIFEST}
    for name, recorded in files.items():
        assert recorded == checksum(saved / name).to_dict()
        assert recorded["bytes"] == (saved / name).stat().st_size


def test_flipped_bytes_are_named_by_every_reader(saved, tmp_path) -> None:
    ckpt = _copy(saved, tmp_path)
    shard = _shard(ckpt)
    want = json.loads((ckpt / MANIFEST).read_text())["files"][shard.name]["crc32c"]
    _flip(shard, shard.stat().st_size // 2)
    got = checksum(shard).crc32c
    expected = f"{shard}: damaged (CRC32C {got}, the manifest says {want})"
    with pytest.raises(CheckpointError) as e:
        read_unsharded(ckpt)
    assert expected in str(e.value)
    for extra in ([], ["--train.inference_only=true"]):
        with pytest.raises(CheckpointError) as e:
            train_here(_job(tmp_path, f"--train.checkpoint={ckpt}", f"--train.steps={STEPS + 2}", *extra))
        assert expected in str(e.value) and e.value.exit_code == EXIT_BAD_STATE


def test_missing_extra_and_truncated_files_are_named(saved, tmp_path) -> None:
    ckpt = _copy(saved, tmp_path)
    shard = _shard(ckpt)
    shard.write_bytes(shard.read_bytes()[:100])
    (ckpt / "stray.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError) as e:
        read_unsharded(ckpt)
    text = str(e.value)
    assert f"{shard}: 100 bytes, the manifest says" in text and f"{ckpt / 'stray.bin'}: not listed" in text
    (ckpt / "stray.bin").unlink()
    rewrite_file_sum(ckpt, shard.name)  # the cut vouched for: the metadata still places items past its end
    with pytest.raises(CheckpointError, match=f"{shard}: 100 bytes, but .metadata places .* \\(cut short\\)"):
        read_unsharded(ckpt)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard}: missing"):
        read_unsharded(ckpt)


def test_a_v2_checkpoint_loads_with_one_warning(saved, tmp_path, caplog) -> None:
    ckpt = _copy(saved, tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["version"] = 2
    del manifest["files"], manifest["schema_fingerprint"]
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="dlrm_dist"):
        old = read_unsharded(ckpt)
    assert [r.getMessage() for r in caplog.records if "v2 manifest" in r.getMessage()] == [
        f"{ckpt} has a v2 manifest, written before checksums: its files are not verified"]
    new = read_unsharded(saved)
    for key, value in new.model.state_dict().items():
        assert torch.equal(value, old.model.state_dict()[key]), key
    _crafted_metadata = ckpt / METADATA_FILE  # still read with the allow-list: no checksum to forge
    _crafted_metadata.write_bytes(pickle.dumps(_Payload(tmp_path / "marker")))
    with pytest.raises(CheckpointError, match="posix.system"):
        read_unsharded(ckpt)
    assert not (tmp_path / "marker").exists()


# -- item 9: the checkpoint's schema against the data's ------------------------------------------

def test_the_manifest_carries_the_fitted_schema_and_its_fingerprint(saved) -> None:
    manifest = Manifest.read(saved)
    schema = schema_of(manifest)
    assert schema is not None and schema.num_dense == 13 and len(schema.sparse) == 4
    assert json.loads((saved / MANIFEST).read_text())["schema_fingerprint"] == schema.fingerprint()
    assert schema_of(Manifest(1, 1, {}, RunInfo("sgd", "sgd"))) is None  # a config without features


def test_a_forged_fingerprint_is_refused(saved, tmp_path) -> None:
    ckpt = _copy(saved, tmp_path)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["schema_fingerprint"] = "0" * 16
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="schema_fingerprint '0000000000000000' is not that of its feature schema"):
        Manifest.read(ckpt)


def test_schema_changes_name_the_field() -> None:
    base = load_schema(str(MIXED))
    other = load_schema(str(MIXED)).to_dict()
    other["name"] = "renamed"  # a display name is not a difference
    assert schema_changes(base, type(base).from_dict(other)) == []
    other["sparse"][0]["kind"] = "identity"
    other["dense"][1]["fill"] = 1.5
    changes = schema_changes(base, type(base).from_dict(other))
    assert changes == ["dense feature 'd1' fill: 0.0 -> 1.5", "sparse feature 'a' kind: 'hash' -> 'identity'"]


def test_resume_on_data_of_another_schema_is_refused(tmp_path) -> None:
    """Same table shapes, a feature read differently: refused on resume and on evaluation, naming it."""
    base = [a for a in JOB if not a.startswith(("--data.schema", "--model.bottom_mlp"))]
    base += ["--model.interaction=cat", "--model.bottom_mlp=5-16-8"]
    job = [f"--data.schema={MIXED}", "--train.steps=2", f"--run-dir={tmp_path / 'run'}"]
    changed = tmp_path / "changed.toml"
    changed.write_text(MIXED.read_text().replace('name = "a"\nkind = "hash"', 'name = "a"\nkind = "identity"'))
    train_here(job + [f"--train.checkpoint_dir={tmp_path / 'ck'}"], base)
    for extra in ([], ["--train.inference_only=true"]):
        with pytest.raises(CheckpointError) as e:
            train_here([f"--data.schema={changed}", "--train.steps=3", f"--run-dir={tmp_path / 'run2'}",
                        f"--train.checkpoint={tmp_path / 'ck'}", *extra], base)
        assert "feature schema: sparse feature 'a' kind: 'hash' -> 'identity' (checkpoint -> this run's data)" \
            in str(e.value), str(e.value)
