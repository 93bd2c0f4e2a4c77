"""Exports are data, never code: crafted model.pt2 files refused by entry, the manifest declared,
int8 pooled as float is, the int8 cost gated, and scoring data checked against the model's schema.

Each crafted archive is what someone who can write the export directory could write: the
payload would create a marker file when unpickled or run, and export.json's sha256 is
recomputed to match (the checksum is a damage check, not a defence). Every one must be
refused as an ExportError naming the entry, with the marker never created, and dlrm-predict
must exit 4. A control shows that torch.export.load itself runs such payloads.
"""

from __future__ import annotations

import json
import math
import struct
import shutil
from pathlib import Path

import pytest
import torch

from dlrm_dist.cli import predict_main
from dlrm_dist.errors import EXIT_BAD_INPUT, EXIT_BAD_STATE
from dlrm_dist.serving.load import ExportError, load_export
from tests.serving_helper import MIXED_JOB, Payload, archive_entries, build_dlrm, make_export, pickled, write_archive


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "export"
    make_export(out)
    return out


@pytest.fixture
def copy(export, tmp_path) -> Path:
    d = tmp_path / "crafted"
    shutil.copytree(export, d)
    return d


def _weights_config(entries: dict[str, bytes]) -> dict:
    return json.loads(entries["data/weights/model_weights_config.json"])


def _pickled_weight(entries: dict[str, bytes], marker: Path) -> str:
    """The first weight re-marked ``use_pickle: true``, its file a pickle that creates ``marker``."""
    config = _weights_config(entries)
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()
    entries[f"data/weights/{meta['path_name']}"] = pickled(Payload(marker))
    return f"data/weights/{meta['path_name']}"


def _sample_inputs(entries: dict[str, bytes], marker: Path) -> str:
    entries["data/sample_inputs/model.pt"] = pickled(((Payload(marker),), {}))
    return "data/sample_inputs/model.pt"


def _opaque_constant(entries: dict[str, bytes], marker: Path) -> str:
    config = {"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}}}
    entries["data/constants/model_constants_config.json"] = json.dumps(config).encode()
    import pickle

    entries["data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
    return "data/constants/opaque_obj_0"


def _custom_object(entries: dict[str, bytes], marker: Path) -> str:
    config = {"config": {"obj": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False,
                                 "tensor_meta": None}}}
    entries["data/constants/model_constants_config.json"] = json.dumps(config).encode()
    entries["data/constants/custom_obj_0"] = pickled(Payload(marker))
    return "data/constants/custom_obj_0"


def _program_edit(entries: dict[str, bytes], edit) -> None:
    program = json.loads(entries["models/model.json"])
    edit(program)
    entries["models/model.json"] = json.dumps(program).encode()


def _guard_code(entries: dict[str, bytes], marker: Path) -> str:
    # ExportedProgram.module() compiles and exec-utes every guard string.
    _program_edit(entries, lambda p: p["guards_code"].append(f"open({str(marker)!r}, 'w') is None"))
    return "models/model.json"


def _sympy_expression(entries: dict[str, bytes], marker: Path) -> str:
    def edit(program: dict) -> None:  # every expr_str goes through sympy.sympify, an eval
        for node in _find(program, "expr_str"):
            node["expr_str"] = f"open({str(marker)!r}, 'w') and Symbol('s0')"
            return
    _program_edit(entries, edit)
    return "models/model.json"


def _os_target(entries: dict[str, bytes], marker: Path) -> str:
    def edit(program: dict) -> None:  # targets resolve by getattr from torch: torch.os.system is reachable
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
    _program_edit(entries, edit)
    return "models/model.json"


def _legacy_weights(entries: dict[str, bytes], marker: Path) -> str:
    entries["data/weights/model.pt"] = pickled(Payload(marker))
    return "data/weights/model.pt"


def _aoti_library(entries: dict[str, bytes], marker: Path) -> str:
    entries["data/aotinductor/model/model.so"] = b"\x7fELF"
    return "data/aotinductor/model/model.so"


def _old_format(entries: dict[str, bytes], marker: Path) -> str:
    entries["serialized_example_inputs.pt"] = pickled(Payload(marker))
    return "serialized_example_inputs.pt"


def _find(tree, key: str):
    if isinstance(tree, dict):
        if key in tree:
            yield tree
        for v in tree.values():
            yield from _find(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from _find(v, key)


CRAFTS = {"pickled_weight": _pickled_weight, "sample_inputs": _sample_inputs, "opaque_constant": _opaque_constant,
          "custom_object": _custom_object, "guard_code": _guard_code, "sympy_expression": _sympy_expression,
          "os_target": _os_target, "legacy_weights": _legacy_weights, "aoti_library": _aoti_library,
          "old_format": _old_format}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_a_crafted_archive_is_refused_by_entry_and_runs_nothing(copy, tmp_path, capsys, craft) -> None:
    marker = tmp_path / "marker"
    root, entries = archive_entries(copy)
    entry = CRAFTS[craft](entries, marker)
    write_archive(copy, root, entries)
    with pytest.raises(ExportError) as e:
        load_export(copy)
    assert repr(entry) in str(e.value), str(e.value)
    assert not marker.exists()
    assert predict_main.main([str(copy), "--no-progress"]) == EXIT_BAD_STATE
    err = capsys.readouterr().err
    assert err.startswith("dlrm-predict: error: ") and repr(entry) in err and "Traceback" not in err
    assert "weights_only` set to `False`" not in err  # torch's advice would run the payload
    assert not marker.exists()


@pytest.mark.parametrize("craft", ["pickled_weight", "guard_code"])
def test_control_torch_export_load_itself_runs_the_payload(copy, tmp_path, craft) -> None:
    """Without the inspection, the same files run code: the refusals above are what protects."""
    marker = tmp_path / "marker"
    root, entries = archive_entries(copy)
    CRAFTS[craft](entries, marker)
    write_archive(copy, root, entries)
    n = len(json.loads((copy / "export.json").read_text())["sparse_features"])
    try:  # guards are exec-uted by module() and run on each call
        torch.export.load(str(copy / "model.pt2")).module()(
            torch.zeros(3, 5), [torch.tensor([0, 1, 1, 2])] * n, [torch.tensor([0, 2, 2, 4])] * n)
    except Exception:  # noqa: BLE001 - the payload ran before whatever failed afterwards
        pass
    assert marker.exists()


def test_an_untouched_export_loads_and_scores_like_the_model(export) -> None:
    cfg, dlrm = build_dlrm(MIXED_JOB)
    from dlrm_dist.serving.model import ServingDLRM

    loaded = load_export(export)
    n = len(loaded.feature_names)
    args = (torch.randn(3, 5), [torch.tensor([0, 1, 1, 2]) for _ in range(n)], [torch.tensor([0, 2, 2, 4])] * n)
    assert torch.allclose(loaded.module(*args), ServingDLRM(dlrm).eval()(*args), atol=1e-6)
    assert loaded.manifest.schema_fingerprint == json.loads((export / "export.json").read_text())["schema_fingerprint"]


@pytest.mark.parametrize("damage", ["cut", "nan"])
def test_a_rewritten_weight_is_named_never_a_torch_traceback_or_nan_scores(copy, capsys, damage) -> None:
    """Found by the red team: with the sha256 recomputed, a cut weight file reached torch's loader
    (a logged traceback) and NaN weights scored NaN with exit 0 and an AUC printed."""
    root, entries = archive_entries(copy)
    meta = next(iter(_weights_config(entries)["config"].values()))
    entry = f"data/weights/{meta['path_name']}"
    raw = entries[entry]
    entries[entry] = raw[:len(raw) // 2] if damage == "cut" else struct.pack("<f", math.nan) * (len(raw) // 4)
    write_archive(copy, root, entries)
    with pytest.raises(ExportError, match="tensor_meta needs" if damage == "cut" else "NaN or infinite"):
        load_export(copy)
    assert predict_main.main([str(copy), "--no-progress"]) == EXIT_BAD_STATE
    captured = capsys.readouterr()
    assert captured.err.startswith("dlrm-predict: error: ") and "Traceback" not in captured.out + captured.err


# -- export.json: one declared model, every problem listed by field ----------------------------------
def test_the_manifest_lists_every_problem_by_field(copy) -> None:
    manifest = json.loads((copy / "export.json").read_text())
    manifest.update(step="5", dense_features=-1, surprise=True, quantize="int4")
    manifest["tables"][next(iter(manifest["tables"]))] = [0, 8]
    manifest["sparse_features"] = ["a", 3]
    (copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError) as e:
        load_export(copy)
    text = str(e.value)
    for words in ("step: must be an integer >= 0, got '5'", "dense_features: must be an integer >= 0, got -1",
                  "surprise: unknown key; valid keys: checkpoint, config,", "quantize: must be one of none, int8, got 'int4'",
                  "tables.", "[0]: must be an integer >= 1, got 0", "sparse_features[1]: must be a non-empty string, got 3"):
        assert words in text, text


@pytest.mark.parametrize("field, value, words", [
    ("schema_fingerprint", "0" * 16, "is not its config's schema"),
    ("config", {"train": "oops"}, "export.json config is damaged"),
])
def test_a_manifest_inconsistent_with_its_config_is_refused(copy, capsys, field, value, words) -> None:
    manifest = json.loads((copy / "export.json").read_text())
    manifest[field] = value
    (copy / "export.json").write_text(json.dumps(manifest))
    assert predict_main.main([str(copy), "--no-progress"]) == EXIT_BAD_STATE
    assert words in capsys.readouterr().err


# -- int8 pools as float does ---------------------------------------------------------------------
def test_int8_scores_each_sample_as_float_does_on_mixed_pooling_shared_tables_and_dims() -> None:
    """The mixed schema: a table shared by two features, dims 8 and 16, mean pooling (feature b)."""
    from dlrm_dist.serving.model import ServingDLRM

    cfg, dlrm = build_dlrm(MIXED_JOB)
    fp, q8 = ServingDLRM(dlrm, "none").eval(), ServingDLRM(dlrm, "int8").eval()
    assert "mean" in fp.feature_mode and len(set(fp.feature_table)) < len(fp.feature_table)
    gen = torch.Generator().manual_seed(0)
    n, batch = len(fp.feature_names), 64
    lengths = [torch.randint(0, 6, (batch,), generator=gen) for _ in range(n)]
    offsets = [torch.cat([torch.zeros(1, dtype=torch.long), ln.cumsum(0)]) for ln in lengths]
    rows = [getattr(fp, f"table_{fp.feature_table[f]}").shape[0] for f in range(n)]
    ids = [torch.randint(0, rows[f], (int(offsets[f][-1]),), generator=gen) for f in range(n)]
    dense = torch.randn(batch, 5, generator=gen)
    with torch.no_grad():
        pooled_f = [fp._bag(f, ids[f], offsets[f]) for f in range(n)]
        pooled_q = [q8._bag(f, ids[f], offsets[f]) for f in range(n)]
        for f in range(n):  # each bag within int8's rounding of its float value (no sum-for-mean)
            # a row's codes round to half a step of (max - min) / 255 <= 2 |max| / 255; a sum adds them up
            half_step = getattr(fp, f"table_{fp.feature_table[f]}").abs().max() / 255
            bound = half_step * (lengths[f].clamp(min=1) if fp.feature_mode[f] == "sum" else 1) + 1e-6
            worst = (pooled_f[f] - pooled_q[f]).abs().max(dim=1).values
            assert bool((worst <= bound).all()), (fp.feature_names[f], (worst - bound).max())
        assert (fp(dense, ids, offsets) - q8(dense, ids, offsets)).abs().max() < 2e-3
        # k copies of one id: a mean bag is that id's row whatever k is, in float and in int8
        b = fp.feature_names.index("b")
        one = [q8._bag(b, torch.full((k,), 3), torch.tensor([0, k])) for k in (1, 4, 16)]
        assert torch.allclose(one[0], one[1], atol=1e-6) and torch.allclose(one[0], one[2], atol=1e-6)


# -- the int8 cost gate -------------------------------------------------------------------------
def test_an_int8_cost_beyond_the_limits_fails_and_writes_nothing(tmp_path) -> None:
    from dlrm_dist.serving.export import CostLimits, QuantizationCostError, cost_problems
    from dlrm_dist.serving.manifest import QuantizationCost

    # The issue's figures: AUC 0.053 lost and log-loss 0.234 -> 2.24 must fail at the defaults.
    issue = QuantizationCost(split="test", samples=1000, float_auc=0.80, int8_auc=0.747, auc_difference=-0.053,
                             float_logloss=0.234, int8_logloss=2.24, max_auc_loss=0.005, max_logloss_increase=0.01)
    assert [p.split()[0] for p in cost_problems(issue)] == ["AUC", "log-loss"]
    assert cost_problems(issue.model_copy(update={"max_auc_loss": 0.06, "max_logloss_increase": 2.1})) == []
    out = tmp_path / "int8"
    manifest = make_export(out, quantize="int8")  # within the default limits
    q = manifest.quantization
    assert q.measured and q.samples == 128 and abs(q.auc_difference) <= 0.005 and q.max_auc_loss == 0.005
    assert json.loads((out / "export.json").read_text())["quantization"]["int8_logloss"] == q.int8_logloss
    # The int8 program (quantized:: kernels, mean bags divided by their lengths) passes inspection
    # and scores as the eager int8 module does.
    from dlrm_dist.serving.model import ServingDLRM

    loaded, (_, dlrm) = load_export(out), build_dlrm(MIXED_JOB)
    n = len(loaded.feature_names)
    args = (torch.randn(3, 5), [torch.tensor([0, 1, 1, 2])] * n, [torch.tensor([0, 2, 2, 4])] * n)
    with torch.no_grad():
        assert torch.allclose(loaded.module(*args), ServingDLRM(dlrm, "int8").eval()(*args), atol=1e-6)
    strict = tmp_path / "strict"
    tight = CostLimits(max_auc_loss=0.0, max_logloss_increase=0.0)
    # With no cost allowed, what int8 measurably loses here (seeded model and data) fails the export.
    assert cost_problems(q.model_copy(update={"max_auc_loss": 0.0, "max_logloss_increase": 0.0})), q
    with pytest.raises(QuantizationCostError, match="Nothing was written") as e:
        make_export(strict, quantize="int8", limits=tight)
    assert f"{q.int8_auc:.5f}" in str(e.value) or f"{q.int8_logloss:.5f}" in str(e.value)
    assert not (strict / "model.pt2").exists() and not (strict / "export.json").exists()
    with pytest.raises(QuantizationCostError, match="--max-auc-loss -1"):
        CostLimits(max_auc_loss=-1)


# -- scoring data must be the model's ------------------------------------------------------------
def _columnar(tmp: Path, name: str, sparse: list[dict]) -> Path:
    from dlrm_dist.data.columnar.preprocess import Options, preprocess
    from dlrm_dist.features.schema import from_dict

    rows = [f"{i % 5},{'abc'[i % 3]},{i * 1.5},{i},{i % 2}" for i in range(40)]
    csv = tmp / f"{name}.csv"
    csv.write_text("\n".join(["user_id,color,price,ts,click", *rows]) + "\n")
    schema = {"name": name, "label": {"column": "click"}, "split": {"by": "time", "column": "ts",
                                                                     "fractions": [0.6, 0.2, 0.2]},
              "dense": [{"name": "price", "transform": "standardize"}], "sparse": sparse}
    preprocess(Options(from_dict(schema), [csv], tmp / name, progress=False))
    return tmp / name


def test_predict_refuses_data_of_another_schema_naming_what_differs(tmp_path, capsys) -> None:
    users = _columnar(tmp_path, "users", [{"name": "user_id", "kind": "identity", "buckets": 5, "dim": 8},
                                          {"name": "color", "kind": "hash", "buckets": 7, "dim": 8}])
    colors = _columnar(tmp_path, "colors", [{"name": "color", "kind": "hash", "buckets": 7, "dim": 8}])
    job = ["--data.source=columnar", f"--data.data_dir={users}", "--model.bottom_mlp=1-8",
           "--model.top_mlp=8-1", "--train.global_batch_size=4", "--train.progress=false"]
    make_export(tmp_path / "export", job)
    assert predict_main.main([str(tmp_path / "export"), "--split", "val", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 8
    assert predict_main.main([str(tmp_path / "export"), "--data", str(colors), "--no-progress"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "preprocessed with schema 'colors'" in err and "sparse feature 'user_id' only in one of them" in err, err
    assert "KeyError" not in err and "Traceback" not in err
    # dlrm-export checks --data the same way (here through export_model, as dlrm-export calls it)
    from dlrm_dist.features import SchemaError

    cfg, dlrm = build_dlrm(job)
    from dlrm_dist.serving.export import export_model

    with pytest.raises(SchemaError, match="'user_id' only in one of them"):
        export_model(dlrm, cfg, tmp_path / "export2", data_dir=str(colors), progress=False)
    assert not (tmp_path / "export2" / "model.pt2").exists()


def test_a_config_with_infinite_clip_bounds_round_trips_through_the_manifest() -> None:
    """The demo schema clips dense features to [0, inf): export.json keeps it (as config.json does)."""
    from dlrm_dist.config import load_config
    from dlrm_dist.config.loader import to_dict
    from dlrm_dist.features.schema import FeatureSchema
    from dlrm_dist.serving.manifest import ExportManifest, parse_manifest
    from dlrm_dist.serving.predict import export_config
    from dlrm_dist.training.build import resolve

    cfg, schema, _ = resolve(load_config([]))
    assert schema.dense[0].clip == (0.0, float("inf"))
    manifest = ExportManifest(checkpoint="c", step=1, quantize="none", dense_features=schema.num_dense,
                              sparse_features=schema.sparse_names, tables={"t": (10, 16)},
                              schema_fingerprint=schema.fingerprint(), config=to_dict(cfg), model_sha256="0" * 64)
    again = parse_manifest(manifest.to_json(), "export.json")
    assert FeatureSchema.from_dict(export_config(again).features).fingerprint() == schema.fingerprint()
    bad = json.loads(manifest.to_json().replace('"step": 1', '"step": NaN'))
    with pytest.raises(ExportError, match="step: nan"):
        parse_manifest(json.dumps(bad), "export.json")
