"""Fuzzing exports: damaged or edited export directories are refused by name, or score as before.

One small export per module (the mixed schema: shared table, dims 8 and 16, mean pooling),
then generated damage:

- bytes of model.pt2 flipped or cut, export.json's model_sha256 left alone: refused as damage;
- the same with the sha256 recomputed (an attacker's edit): refused, or a program that loads;
  a flip inside a tensor's bytes is then another model, not a damaged one (nothing can tell),
  so only "ExportError or it loads", "never another exception" and "nothing ran" are checked;
- export.json fields replaced by values of wrong types or ranges, removed, or added: refused
  as an ExportError naming the field, or loaded with scores equal to the original's;
- zip entries added, renamed, removed, or weights re-marked ``use_pickle``: refused naming an
  entry involved;
- a managed model's export (tests/schemas/managed.toml, remappers that admitted ids): elements of its
  frozen remapper arrays (ids, rows, block starts, miss rows) or export.json's ``remappers`` rewritten,
  the sha256 recomputed: refused (exit 4) naming the table or the field, or loaded with a remapper
  that an independent reading of its arrays confirms (distinct ascending ids, each on a distinct row
  of its own block's shard, an unknown id on its block's miss row).

Never another exception, and never code run from a file (a marker a payload would create).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_dist.serving.load import ExportError, load_export
from tests.serving_helper import Payload, archive_entries, make_export, make_managed_export, pickled, write_archive

FIELDS = ("format", "version", "checkpoint", "step", "quantize", "inputs", "dense_features", "sparse_features",
          "tables", "schema_fingerprint", "config", "model_file", "model_sha256", "quantization", "remappers")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
ODD_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 1e300])


def _batch(n: int) -> tuple:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(3, 5, generator=gen), [torch.tensor([0, 1, 1, 2])] * n, [torch.tensor([0, 2, 2, 4])] * n)


class Original(dict):
    """The fixture's export; a short repr, as Hypothesis prints it with every failing case."""

    def __repr__(self) -> str:
        return f"Original({self['dir']})"


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    out = tmp_path_factory.mktemp("fuzz_exports") / "export"
    make_export(out)
    loaded = load_export(out)
    n = len(loaded.feature_names)
    with torch.no_grad():
        scores = loaded.module(*_batch(n))
    return Original(dir=out, scores=scores, n=n, root_entries=archive_entries(out))


def _fresh(original: dict, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("case") / "export"
    shutil.copytree(original["dir"], d)
    return d


def _loads_or_refuses(d: Path, original: dict, names: tuple[str, ...], same_scores: bool = True) -> None:
    """The property: ExportError naming one of ``names``, or a program scoring as the original did."""
    marker = d.parent / "marker"
    try:
        loaded = load_export(d)
    except ExportError as e:
        text = str(e)
        assert "\n" not in text, text
        assert any(name in text for name in names), (names, text)
    else:
        if same_scores:
            with torch.no_grad():
                assert torch.equal(loaded.module(*_batch(original["n"])), original["scores"])
    assert not marker.exists()


@given(data=st.data())
def test_damaged_model_bytes_are_refused(original, tmp_path_factory, data) -> None:
    d = _fresh(original, tmp_path_factory)
    raw = bytearray((d / "model.pt2").read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")]
    else:
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True),
                            label="flips"):
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
    (d / "model.pt2").write_bytes(bytes(raw))
    recompute = data.draw(st.booleans(), label="recompute sha256")
    if recompute:
        import hashlib

        manifest = json.loads((d / "export.json").read_text())
        manifest["model_sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
        (d / "export.json").write_text(json.dumps(manifest))
    # Not recomputed: the checksum names the damage. Recomputed: the archive checks do, or it loads.
    _loads_or_refuses(d, original, ("model.pt2",), same_scores=False)
    if not recompute:
        with pytest.raises(ExportError, match="model_sha256"):
            load_export(d)


@given(field=st.sampled_from(FIELDS + ("surprise",)), value=JSON_VALUES | ODD_FLOATS, remove=st.booleans())
def test_edited_manifest_fields_are_refused_by_name_or_change_nothing(original, tmp_path_factory, field, value,
                                                                       remove) -> None:
    d = _fresh(original, tmp_path_factory)
    manifest = json.loads((d / "export.json").read_text())
    if remove and field in manifest:
        del manifest[field]
    else:
        manifest[field] = value
    (d / "export.json").write_text(json.dumps(manifest))  # NaN/Infinity as Python writes them: not strict JSON
    _loads_or_refuses(d, original, (field,))


ENTRY_NAMES = st.from_regex(r"\A(data/(weights|constants|sample_inputs|aotinductor)/|models/|extra/|)[a-z_.]{1,12}\Z")


@given(data=st.data())
def test_edited_archive_entries_are_refused_by_entry(original, tmp_path_factory, data) -> None:
    d = _fresh(original, tmp_path_factory)
    marker = d.parent / "marker"
    root, entries = original["root_entries"]
    entries = dict(entries)
    edit = data.draw(st.sampled_from(["add", "rename", "remove", "re-mark", "replace"]), label="edit")
    names = sorted(entries)
    if edit == "add":
        name = data.draw(ENTRY_NAMES.filter(lambda n: n not in entries), label="name")
        entries[name] = data.draw(st.sampled_from([b"", b"\x7fELF", pickled(Payload(marker))]), label="content")
        involved = (name,)
    elif edit in ("rename", "remove"):
        old = data.draw(st.sampled_from(names), label="entry")
        content = entries.pop(old)
        involved = (old,)
        if edit == "rename":
            new = data.draw(ENTRY_NAMES.filter(lambda n: n not in entries and n != old), label="new name")
            entries[new] = content
            involved = (old, new)
    elif edit == "re-mark":
        config = json.loads(entries["data/weights/model_weights_config.json"])
        fqn = data.draw(st.sampled_from(sorted(config["config"])), label="weight")
        config["config"][fqn]["use_pickle"] = True
        path = config["config"][fqn]["path_name"]
        entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        entries[f"data/weights/{path}"] = pickled(Payload(marker))
        involved = (f"data/weights/{path}",)
    else:  # a JSON entry replaced by a pickle that would create the marker
        name = data.draw(st.sampled_from([n for n in names if n.endswith((".json", ".pt"))]), label="entry")
        entries[name] = pickled(Payload(marker))
        involved = (name,)
    write_archive(d, root, entries)
    with pytest.raises(ExportError) as e:
        load_export(d)
    assert any(repr(n) in str(e.value) for n in involved), (edit, involved, str(e.value))
    assert not marker.exists()


# -- a managed model's frozen remappers ---------------------------------------------------------------
INT64 = st.sampled_from([-1, 0, 1, 2**62, 2**63 - 2, 2**63 - 1, -2**63]) | st.integers(-2**63, 2**63 - 1)


@pytest.fixture(scope="module")
def managed(tmp_path_factory) -> Original:
    out = tmp_path_factory.mktemp("fuzz_managed") / "export"
    make_managed_export(out)
    loaded = load_export(out)
    assert all(r.admitted > 0 for r in loaded.manifest.remappers.values())
    return Original(dir=out, root_entries=archive_entries(out), buffers=dict(loaded.module.named_buffers()),
                    manifest=json.loads((out / "export.json").read_text()))


def _confirm_remapper(loaded, table: str) -> None:
    """An independent reading of a loaded remapper: a dict of admitted id -> row, and the shards' rows."""
    from dlrm_dist.serving.remap import remap

    i = sorted(loaded.manifest.tables).index(table)
    ids, rows, starts, miss = (dict(loaded.module.named_buffers())[f"remap_{i}_{a}"] for a in
                               ("ids", "rows", "starts", "miss"))
    offsets = loaded.manifest.remappers[table].shard_offsets
    n = loaded.manifest.remappers[table].admitted
    admitted = dict(zip(ids[:n].tolist(), rows[:n].tolist()))
    block = -(-(2**63 - 1) // (len(offsets) - 1))
    assert len(admitted) == n and sorted(admitted) == ids[:n].tolist() and len(set(admitted.values())) == n
    for raw, row in admitted.items():
        assert offsets[raw // block] <= row < offsets[raw // block + 1]
    probe = torch.tensor(sorted(admitted) + [0, 2**62, 2**63 - 2, 12345])
    want = [admitted.get(v, offsets[v // block + 1] - 1) for v in probe.tolist()]
    assert remap(probe, ids, rows, starts, miss).tolist() == want


def _edit(managed: dict, data) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(table, the program's buffers, export.json) after an edit drawn: elements of one remapper array
    set to odd int64 values or to other elements' values, or one field of export.json's remappers entry."""
    buffers, manifest = dict(managed["buffers"]), json.loads(json.dumps(managed["manifest"]))
    tables = sorted(manifest["tables"])
    table = data.draw(st.sampled_from(sorted(manifest["remappers"])), label="table")
    if data.draw(st.booleans(), label="edit an array"):
        name = f"remap_{tables.index(table)}_{data.draw(st.sampled_from(['ids', 'rows', 'starts', 'miss']))}"
        array = buffers[name] = buffers[name].clone()
        for at in data.draw(st.lists(st.integers(0, len(array) - 1), min_size=1, max_size=3, unique=True), label="at"):
            array[at] = data.draw(INT64 | st.sampled_from(array.tolist()), label="value")
    else:
        entry = manifest["remappers"][table]
        key = data.draw(st.sampled_from(sorted(entry)), label="key")
        entry[key] = data.draw(JSON_VALUES | st.integers(-3, 40) | st.lists(st.integers(-1, 40), max_size=4), label="v")
    return table, buffers, manifest


def _refused_or_confirmed(load, table: str) -> None:
    try:
        loaded = load()
    except ExportError as e:
        words = ("remappers", f"the remapper of table {table!r}")
        assert "\n" not in str(e) and any(w in str(e) for w in words), str(e)
        assert e.exit_code == 4
    else:
        for t in loaded.manifest.remappers:
            _confirm_remapper(loaded, t)


class _Held(torch.nn.Module):
    """Buffers by name, as a loaded program holds them."""

    def __init__(self, buffers: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value)


@given(data=st.data())
def test_edited_remappers_are_refused_by_name_or_confirmed(managed, data) -> None:
    """The load-time check on its own (no archive written): every edit is refused naming the table
    or the field, or what loads is a remapper the independent reading confirms."""
    from dlrm_dist.serving.load import LoadedExport, check_remappers
    from dlrm_dist.serving.manifest import parse_manifest

    table, buffers, manifest = _edit(managed, data)

    def load() -> LoadedExport:
        m = parse_manifest(json.dumps(manifest), "export.json")
        held = _Held({k: v for k, v in buffers.items() if k.startswith("remap_")})
        check_remappers(held, m, managed["dir"] / "model.pt2")
        return LoadedExport(held, m)
    _refused_or_confirmed(load, table)


@settings(max_examples=max(4, settings().max_examples // 6))  # (each example loads a program: ~1 s)
@given(data=st.data())
def test_edited_remapper_files_are_refused_by_name_or_confirmed(managed, tmp_path_factory, data) -> None:
    """The same edits written into the export (model.pt2's weight entries, export.json), the sha256
    recomputed as whoever can write the directory could: load_export refuses them by name, exit 4."""
    d = _fresh(managed, tmp_path_factory)
    table, buffers, manifest = _edit(managed, data)
    root, entries = managed["root_entries"]
    entries = dict(entries)
    config = json.loads(entries["data/weights/model_weights_config.json"])["config"]
    for name, value in buffers.items():
        if name.startswith("remap_") and not torch.equal(value, managed["buffers"][name]):
            path = "data/weights/" + config[name]["path_name"]
            entries[path] = value.numpy().tobytes() + entries[path][value.numel() * 8:]
    (d / "export.json").write_text(json.dumps(manifest))
    write_archive(d, root, entries)  # (model_sha256 recomputed: the edit must be caught by what it is)
    _refused_or_confirmed(lambda: load_export(d), table)
