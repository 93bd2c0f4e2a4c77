"""Fuzzing delta chains: reordered, repeated, foreign or damaged deltas are refused by name, or apply exactly.

One small export per module (the mixed schema), made without a process group, and four
deltas of models derived from it (rows of some tables and the dense weights changed):

    d1 (link 1) -> d2 (link 2)        the chain base -> d1 -> d2
    alt (link 1)                      another delta made on the base itself (an alternative to d1)
    foreign (link 1)                  a delta of another export (the base's manifest edited: another identity)

Generated: any sequence of these (empty, reordered, repeated, mixed), and at most one damage
to a copy of one of them: bytes flipped or cut, a file removed, a data file replaced by a
link out of the directory, a manifest field replaced by a JSON value of any type, or a data
file edited with its sha256 recomputed in delta.json (an attacker's edit).

The property: the chain either applies, and then it is a valid chain (in order, complete,
on this base) whose program state equals bit for bit the state of the model its last delta
was made from (checked against that model, not against delta code), or it is refused as an
ExportError (exit 4) in one line naming the base or a delta of the chain. Never another
exception, and no file of the directories changes. A recomputed sha256 on the chain's last
link is another model, not damage (nothing can tell): only "refused or applies" is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from dlrm_dist.errors import EXIT_BAD_STATE, DlrmError
from dlrm_dist.serving.delta import apply_deltas
from dlrm_dist.serving.delta_format import DELTA_FILE
from dlrm_dist.serving.delta_write import delta_of_model
from dlrm_dist.serving.load import ExportError, LoadedExport, load_export
from dlrm_dist.serving.model import ServingDLRM
from tests.serving_helper import MIXED_JOB, build_dlrm, make_export

VALID = {(): "base", ("d1",): "d1", ("d1", "d2"): "d2", ("alt",): "alt"}
NAMES = ("d1", "d2", "alt", "foreign")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=5)
DAMAGE = ("flip", "cut", "remove", "link_out", "field", "resigned")


class Made(dict):
    """The module's export and deltas; a short repr, as Hypothesis prints it with every failing case."""

    def __repr__(self) -> str:
        return f"Made({self['root']})"


def _changed(dlrm, seed: int) -> None:
    """Some rows of two tables and every dense weight moved (as a day of training would)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bags = dlrm.sparse_arch.embedding_bags
        for name in sorted(bags)[seed % 2:seed % 2 + 2]:
            w = bags[name].weight
            rows = torch.randperm(w.shape[0], generator=gen)[:3]
            w[rows] += torch.randn(len(rows), w.shape[1], generator=gen)
        for p in dlrm.over_arch.parameters():
            p.add_(0.01 * seed)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Made:
    root = tmp_path_factory.mktemp("fuzz_deltas")
    make_export(root / "base")
    shutil.copytree(root / "base", root / "other")
    manifest = json.loads((root / "other" / "export.json").read_text())
    (root / "other" / "export.json").write_text(json.dumps({**manifest, "checkpoint": "another run"}))
    cfg, dlrm = build_dlrm(MIXED_JOB)
    states = {"base": ServingDLRM(dlrm).state_dict()}
    states = {k: {n: t.clone() for n, t in v.items()} for k, v in states.items()}
    for name, seed, since, chain in (("d1", 1, "base", ()), ("d2", 2, "base", ("d1",)), ("alt", 3, "base", ()),
                                     ("foreign", 4, "other", ())):
        if name == "alt":
            cfg, dlrm = build_dlrm(MIXED_JOB)
        _changed(dlrm, seed)
        delta_of_model(dlrm, cfg, root / since, root / name, [root / c for c in chain], step=seed)
        states[name] = {n: t.clone() for n, t in ServingDLRM(dlrm).state_dict().items()}
    loaded = load_export(root / "base")
    pristine = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    steps = {"base": 0, "d1": 1, "d2": 2, "alt": 3}
    return Made(root=root, loaded=loaded, states=states, pristine=pristine, steps=steps)


def _fresh_base(made: Made) -> LoadedExport:
    """The module's loaded base, its program state put back as loaded (an example writes into it)."""
    state = made["loaded"].module.state_dict()
    with torch.no_grad():
        for k, v in made["pristine"].items():
            state[k].copy_(v)
    return LoadedExport(made["loaded"].module, made["loaded"].manifest)


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
            for p in sorted(d.rglob("*")) if p.is_file() or p.is_symlink()}


def _damage(delta: Path, kind: str, data: st.DataObject) -> None:
    """One damage to the delta at ``delta`` (a copy)."""
    files = sorted(str(p.relative_to(delta)) for p in delta.rglob("*") if p.is_file() and not p.name.startswith("."))
    name = data.draw(st.sampled_from(files), label="file")
    path = delta / name
    raw = bytearray(path.read_bytes())
    if kind == "flip" and raw:
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3, unique=True), label="at"):
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
        path.write_bytes(bytes(raw))
    elif kind == "cut":
        path.write_bytes(bytes(raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)), label="keep")]))
    elif kind == "remove":
        path.unlink()
    elif kind == "link_out" and name != DELTA_FILE:
        outside = delta.parent / "outside.bin"
        outside.write_bytes(bytes(raw))
        path.unlink()
        os.symlink(outside, path)
    elif kind == "field":
        manifest = json.loads((delta / DELTA_FILE).read_text())
        keys = data.draw(st.sampled_from(sorted(_paths(manifest))), label="field")
        _set(manifest, keys, data.draw(JSON_VALUES, label="value"))
        (delta / DELTA_FILE).write_text(json.dumps(manifest))
    elif kind == "resigned" and name != DELTA_FILE and raw:
        raw[data.draw(st.integers(0, len(raw) - 1), label="at")] ^= 1
        path.write_bytes(bytes(raw))
        manifest = json.loads((delta / DELTA_FILE).read_text())
        for entry in _data_entries(manifest):
            if entry["file"] == name:
                entry["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
        (delta / DELTA_FILE).write_text(json.dumps(manifest))


def _paths(tree, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    return out


def _set(tree: dict, keys: tuple, value) -> None:
    for k in keys[:-1]:
        tree = tree[k]
    tree[keys[-1]] = value


def _data_entries(manifest: dict) -> list[dict]:
    return [e[k] for e in manifest["rows"].values() for k in ("ids", "values")] + \
        [e["data"] for e in manifest["state"].values()]


def test_every_valid_chain_applies_to_its_models_state(made) -> None:
    for chain, model in VALID.items():
        got = apply_deltas(made["root"] / "base", _fresh_base(made), [made["root"] / n for n in chain])
        assert got.link == len(chain) and got.manifest.step == made["steps"][model]
        assert all(torch.equal(v, made["states"][model][k]) for k, v in got.module.state_dict().items()), chain


@given(chain=st.lists(st.sampled_from(NAMES), max_size=4), damaged=st.none() | st.sampled_from(DAMAGE),
       data=st.data())
def test_a_chain_applies_exactly_or_is_refused_by_name(made, tmp_path_factory, chain, damaged, data) -> None:
    case = tmp_path_factory.mktemp("chain")
    for name in set(chain):
        shutil.copytree(made["root"] / name, case / name)
    target = data.draw(st.sampled_from(sorted(set(chain))), label="damaged delta") if damaged and chain else None
    if target:
        _damage(case / target, damaged, data)
    before = {name: _files(case / name) for name in set(chain)}
    base = _fresh_base(made)
    try:
        result = apply_deltas(made["root"] / "base", base, [case / name for name in chain])
    except DlrmError as e:
        event("refused")
        text = str(e)
        assert isinstance(e, ExportError) and e.exit_code == EXIT_BAD_STATE, (type(e), text)
        assert "\n" not in text, text
        assert any(str(p) in text for p in [made["root"] / "base", *(case / n for n in chain)]), text
    else:
        event("applied")
        assert tuple(chain) in VALID, (chain, damaged)  # an invalid chain never applies
        if not (damaged == "resigned" and chain and target == chain[-1]):
            want = made["states"][VALID[tuple(chain)]]
            got = result.module.state_dict()
            assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), (chain, damaged)
    assert {name: _files(case / name) for name in set(chain)} == before  # nothing written
