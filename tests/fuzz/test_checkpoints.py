"""Generated damage to a small saved checkpoint, read back by the unsharded reader (no process group).

Damage: bytes flipped at random offsets of a random file, a file cut short, deleted, or
added, the manifest's JSON rewritten at a random place, ``.metadata`` replaced by random
bytes; each also with the manifest's checksum forged to match, which is what gets past the
checksums to the allow-list reader and DCP. The property: restoring either succeeds with
weights identical to the undamaged checkpoint's (only possible when nothing that matters
changed: never for damaged data under true checksums), or raises CheckpointError naming
the file (or the checkpoint); never another exception, never code run from the file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dlrm_dist.checkpoint import CheckpointError
from dlrm_dist.checkpoint.manifest import MANIFEST
from dlrm_dist.checkpoint.store import step_dir
from dlrm_dist.checkpoint.unsharded import read_unsharded
from tests.checkpoint_helper import rewrite_file_sum, train_here

STEPS = 2


@dataclass(frozen=True)
class Damage:
    kind: str  # flip | truncate | delete | extra | metadata_bytes
    target: int  # index into the checkpoint's sorted file names
    offset: float = 0.0  # where, as a fraction of the file
    data: bytes = b""
    forge: bool = False  # record the damaged file's checksum in the manifest

    def apply(self, ckpt: Path) -> Optional[Path]:
        """Damages ``ckpt``; returns the file it damaged."""
        names = sorted(p.name for p in ckpt.iterdir())
        path = ckpt / (".metadata" if self.kind == "metadata_bytes" else names[self.target % len(names)])
        if self.kind == "extra":
            path = ckpt / f"extra_{self.target}.distcp"
            path.write_bytes(self.data)
            return path
        if self.kind == "delete":
            path.unlink()
            return path
        content = bytearray(path.read_bytes())
        at = int(self.offset * (len(content) - 1))
        if self.kind == "flip":
            for i, x in enumerate(self.data):
                content[(at + i) % len(content)] ^= x
        elif self.kind == "truncate":
            del content[at:]
        else:
            content = bytearray(self.data)
        path.write_bytes(bytes(content))
        if self.forge and path.name != MANIFEST and path.name in json.loads((ckpt / MANIFEST).read_text())["files"]:
            rewrite_file_sum(ckpt, path.name)
        return path


_flips = st.binary(min_size=1, max_size=64).filter(any)  # XOR masks that change at least one byte
damages = st.one_of(
    st.builds(Damage, st.just("flip"), st.integers(0, 9), st.floats(0, 1), _flips, st.booleans()),
    st.builds(Damage, st.just("truncate"), st.integers(0, 9), st.floats(0, 0.999), st.just(b""), st.booleans()),
    st.builds(Damage, st.just("delete"), st.integers(0, 9)),
    st.builds(Damage, st.just("extra"), st.integers(0, 9), st.just(0.0), st.binary(max_size=64)),
    st.builds(Damage, st.just("metadata_bytes"), st.just(0), st.just(0.0), st.binary(max_size=300), st.booleans()),
)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(-1e3, 1e3)
                           | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


class Pristine:
    """The undamaged checkpoint and its weights (a short repr for Hypothesis's reports)."""

    def __init__(self, path: Path, weights: dict[str, torch.Tensor]) -> None:
        self.path, self.weights = path, weights

    def __repr__(self) -> str:
        return f"Pristine({self.path})"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Pristine:
    root = tmp_path_factory.mktemp("fuzz_ckpt")
    train_here([f"--train.checkpoint_dir={root / 'ckpt'}", f"--train.steps={STEPS}", f"--run-dir={root / 'run'}"])
    ckpt = step_dir(root / "ckpt", STEPS)
    return Pristine(ckpt, read_unsharded(ckpt).model.state_dict())


def _fresh(pristine_dir: Path, work: Path) -> Path:
    ckpt = work / pristine_dir.name
    if ckpt.exists():
        shutil.rmtree(ckpt)
    shutil.copytree(pristine_dir, ckpt)
    return ckpt


def _restore(ckpt: Path, weights: dict[str, torch.Tensor], must_fail: bool, named: str) -> None:
    try:
        found = read_unsharded(ckpt)
    except CheckpointError as e:
        assert named in str(e), f"{named} not named in: {e}"
        assert e.exit_code == 4
        return
    assert not must_fail, "damaged data under true checksums was loaded"
    state = found.model.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(state[key], value), f"{key} changed, and the checkpoint loaded"


@given(damage=damages)
def test_damaged_files_are_named_or_harmless(pristine, tmp_path_factory, damage: Damage) -> None:
    pristine_dir, weights = pristine.path, pristine.weights
    ckpt = _fresh(pristine_dir, tmp_path_factory.getbasetemp() / "fuzz_files")
    damaged = damage.apply(ckpt)
    forged = damage.forge and damaged.name != MANIFEST
    # A forged checksum lets damage through to DCP: then any outcome but a stray exception is allowed,
    # since changed weights may be read as they are (the manifest vouches for them).
    if forged and damage.kind in ("flip", "metadata_bytes"):
        try:
            read_unsharded(ckpt)
        except CheckpointError as e:
            assert str(ckpt) in str(e)
        return
    # A forged cut is still found: the metadata places items past the file's end (or the file is empty).
    _restore(ckpt, weights, must_fail=damaged.name != MANIFEST or damage.kind == "delete",
             named=damaged.name if damaged.name != MANIFEST or damage.kind != "flip" else str(ckpt))


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON tree (dict keys and list indices from the root)."""
    out = [prefix]
    if isinstance(tree, dict):
        out += [p for k, v in tree.items() for p in _paths(v, prefix + (k,))]
    elif isinstance(tree, list):
        out += [p for i, v in enumerate(tree) for p in _paths(v, prefix + (i,))]
    return out


@given(where=st.integers(0, 10**6), value=json_values, drop=st.booleans())
def test_rewritten_manifests_are_named_or_harmless(pristine, tmp_path_factory, where: int, value: Any,
                                                   drop: bool) -> None:
    pristine_dir, weights = pristine.path, pristine.weights
    ckpt = _fresh(pristine_dir, tmp_path_factory.getbasetemp() / "fuzz_manifest")
    manifest = json.loads((ckpt / MANIFEST).read_text())
    places = _paths(manifest)[1:]
    place = places[where % len(places)]
    parent = manifest
    for key in place[:-1]:
        parent = parent[key]
    if drop:
        del parent[place[-1]]
    else:
        parent[place[-1]] = value
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    _restore(ckpt, weights, must_fail=False, named=str(ckpt))
