"""Delta publishing (issue 23 item 4): base export + a chain of deltas scores as a full export does.

One small run (one rank, in this process) trains 12 steps with a checkpoint every 4: the
base is exported at step 4, and the run continues after it: delta 1 (step 8) since the base,
delta 2 (step 12) since the base with delta 1 applied. Their scores, through dlrm-predict and
through Predictor.load(base, deltas=...), equal a full export of step 12 bit for bit (float
and int8); the rows a delta says it carries are those that changed between the two
checkpoints (counted here from the checkpoints themselves). Chains in the wrong order, with
a missing link, a delta given twice or a delta of another export are refused by name (exit
4); a precision other than the base's, an --out in the chain, --delta without --since are
bad arguments (exit 2); a model of another schema or other table shapes is refused by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrm_dist.checkpoint.store import step_dir
from dlrm_dist.checkpoint.unsharded import read_unsharded
from dlrm_dist.cli import export_main, predict_main, serve_main
from dlrm_dist.errors import EXIT_BAD_INPUT, EXIT_BAD_STATE
from dlrm_dist.serving.delta import check_chain, load_chain
from dlrm_dist.serving.delta_format import DELTA_FILE, DeltaError, export_identity, read_head
from dlrm_dist.serving.delta_write import ServingState, delta_of_model, write_delta
from dlrm_dist.serving.load import ExportError, load_export
from dlrm_dist.serving.predictor import Predictor
from dlrm_dist.serving.server import Limits
from tests.checkpoint_helper import train_here
from tests.serving_helper import build_dlrm
from tests.small_job import SMALL_JOB

STEPS, EVERY = 12, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """The run's checkpoints, the float base (step 4), its two deltas (8, 12) and a full export of step 12."""
    root = tmp_path_factory.mktemp("delta")
    ckpt = root / "ckpt"
    train_here([f"--train.checkpoint_dir={ckpt}", f"--train.steps={STEPS}", f"--train.checkpoint_interval={EVERY}",
                "--train.keep_last=0", f"--run-dir={root / 'run'}"])
    p = {"root": root, "ckpt": ckpt, "base": root / "base", "d1": root / "d1", "d2": root / "d2",
         "full": root / "full"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert export_main.main([str(ckpt), "--step", "4", "--out", str(p["base"]), "--no-progress"]) == 0
    p["base.out"] = printed.getvalue()
    assert export_main.main([str(ckpt), "--step", "12", "--out", str(p["full"]), "--no-progress"]) == 0
    for name, step, chain in (("d1", 8, ()), ("d2", 12, ("d1",))):
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert _delta(p, step, name, *chain) == 0
        p[f"{name}.out"] = printed.getvalue()
    return p


def _delta(p: dict[str, Path], step: int, out: str, *chain: str, extra: tuple[str, ...] = ()) -> int:
    args = [str(p["ckpt"]), "--step", str(step), "--since", str(p["base"]), "--out", str(p["root"] / out)]
    for d in chain:
        args += ["--delta", str(p["root"] / d)]
    return export_main.main(args + list(extra))


def _changed_rows(ckpt: Path, a: int, b: int) -> dict[str, int]:
    """Per table, the rows that differ between checkpoints a and b (read from the checkpoints)."""
    old, new = (read_unsharded(step_dir(ckpt, s)).model.model.sparse_arch.embedding_bags for s in (a, b))
    return {name: int((old[name].weight != new[name].weight).any(dim=1).sum()) for name in old}


def _scores(p: dict[str, Path], model: Path, *deltas: Path, name: str) -> bytes:
    out = p["root"] / f"{name}.npy"
    args = [str(model)] + [a for d in deltas for a in ("--delta", str(d))]
    assert predict_main.main(args + ["--split", "val", "--out", str(out), "--no-progress"]) == 0
    return np.load(out).tobytes()


def test_base_plus_deltas_scores_equal_a_full_export(run) -> None:
    assert "4 table(s) (none)," in run["base.out"], run["base.out"]  # (a full export's precision, not None)
    # What each delta says it carries: exactly the rows that changed between the checkpoints.
    for text, (a, b) in ((run["d1.out"], (4, 8)), (run["d2.out"], (8, 12))):
        for table, n in _changed_rows(run["ckpt"], a, b).items():
            assert f"  {table}: {n:,} of " in text, text
        assert "rows compared exact" in text and "% of a full export" in text
    d2 = read_head(run["d2"]).manifest
    assert (d2.link, d2.step, d2.applies_to.identity) == (2, 12, read_head(run["d1"]).identity)
    chain = _scores(run, run["base"], run["d1"], run["d2"], name="chain")
    assert chain == _scores(run, run["full"], name="full")  # bit for bit
    assert chain != _scores(run, run["base"], name="base")  # (the deltas changed the model)
    # Predictor.load's chain (what dlrm-serve uses) holds the same state as the full export.
    chained = Predictor.load(run["base"], deltas=[run["d1"], run["d2"]])
    full = load_export(run["full"]).module.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in chained.export.module.state_dict().items())
    assert chained.metadata()["step"] == 12
    # dlrm-serve's server is built on the same chain (what /metadata reports).
    _, metadata = serve_main.make_server(str(run["base"]), Limits(), deltas=[str(run["d1"]), str(run["d2"])])
    assert metadata["step"] == 12 and metadata["checkpoint"].endswith("step_00000012")
    chain_seen = [(d["link"], d["step"], d["identity"]) for d in metadata["deltas"]]
    assert chain_seen == [(1, 8, read_head(run["d1"]).identity), (2, 12, read_head(run["d2"]).identity)]
    assert metadata["base_identity"] == export_identity(run["base"])


def test_int8_chain_is_compared_quantized_and_equals_a_full_int8_export(run, capsys) -> None:
    r = run["root"]
    for step, out in ((4, "base8"), (12, "full8")):
        assert export_main.main([str(run["ckpt"]), "--step", str(step), "--out", str(r / out), "--quantize", "int8",
                                 "--no-progress"]) == 0
    capsys.readouterr()
    args = [str(run["ckpt"]), "--step", "12", "--since", str(r / "base8"), "--out"]
    assert export_main.main(args + [str(r / "d8")]) == 0
    assert "rows compared quantized" in capsys.readouterr().out
    assert read_head(r / "d8").manifest.quantize == "int8"
    assert _scores(run, r / "base8", r / "d8", name="chain8") == _scores(run, r / "full8", name="full8")
    # A precision other than the base's is a bad argument, named; so is a float delta on the int8 base.
    assert export_main.main(args + [str(r / "d8f"), "--quantize", "none"]) == EXIT_BAD_INPUT
    assert "a delta is in its base's precision" in capsys.readouterr().err
    assert not (r / "d8f" / DELTA_FILE).exists()
    with pytest.raises(DeltaError, match="is a delta of another export"):
        check_chain(r / "base8", load_export(r / "base8").manifest, export_identity(r / "base8"),
                    [read_head(run["d1"])])


BROKEN = [
    (["d2"], "which is not given: the chain is missing link(s) 1..1 after the export"),
    (["d2", "d1"], "which is given after it: give the deltas in their chain's order"),
    (["d1", "d1"], "is given twice"),
    (["d1", "d1c"], "does not follow it (deltas made from the same link are alternatives"),
]


def test_a_broken_chain_is_refused_by_name(run, capsys) -> None:
    r = run["root"]
    assert _delta(run, 12, "d1c") == 0  # a delta of step 12 on the export itself: an alternative to d1
    base = load_export(run["base"]).manifest
    for chain, says in BROKEN:  # the links alone decide (no tensor is read)
        with pytest.raises(DeltaError) as e:
            check_chain(run["base"], base, export_identity(run["base"]), [read_head(r / d) for d in chain])
        assert says in str(e.value) and str(r / chain[0]) in str(e.value), (chain, str(e.value))
    capsys.readouterr()
    # Through the CLIs: one line naming the delta, exit 4; dlrm-serve refuses before it listens.
    args = [str(run["base"]), "--delta", str(r / "d2"), "--delta", str(r / "d1")]
    assert predict_main.main(args + ["--split", "val", "--no-progress"]) == EXIT_BAD_STATE
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlrm-predict: error: ") and BROKEN[1][1] in err and len(err.splitlines()) == 1, err
    assert serve_main.main([str(run["base"]), "--delta", str(r / "d2"), "--port", "0"]) == EXIT_BAD_STATE
    assert BROKEN[0][1] in capsys.readouterr().err


def test_bad_arguments_are_exit_2(run, capsys) -> None:
    ckpt, r = str(run["ckpt"]), run["root"]
    cases = [([ckpt, "--delta", str(r / "d1"), "--out", str(r / "x")], "give its base export with --since"),
             ([ckpt, "--since", str(run["base"]), "--out", str(run["base"])], "part of the chain"),
             ([ckpt, "--since", str(run["base"]), "--out", str(run["full"])], "already holds an export"),
             ([ckpt, "--since", str(run["base"]), "--out", str(r / "x"), "--data", str(r)], "apply to a full export"),
             ([ckpt, "--since", str(run["d1"]), "--out", str(r / "x")], "is a delta, not an export")]
    for args, says in cases:
        assert export_main.main(args) == EXIT_BAD_INPUT, args
        assert says in capsys.readouterr().err
    assert predict_main.main([str(run["d1"]), "--split", "val"]) == EXIT_BAD_INPUT
    assert "is a delta, not an export: give the chain's base export first" in capsys.readouterr().err
    assert predict_main.main([str(run["base"]), "--delta", str(run["full"]), "--split", "val"]) == EXIT_BAD_STATE
    assert "has no delta.json (it is a full export: give it as the base" in capsys.readouterr().err


def test_a_model_of_another_schema_or_shape_is_refused_by_name(run, tmp_path) -> None:
    cfg, dlrm = build_dlrm(SMALL_JOB + ["--data.schema=demo:table_sizes=100/200/50/81"])
    with pytest.raises(DeltaError, match=r"the model has schema [0-9a-f]{16}, the export it would apply to"):
        delta_of_model(dlrm, cfg, run["base"], tmp_path / "x")
    other_dim = [a for a in SMALL_JOB if "embedding_dim" not in a and "bottom_mlp" not in a]
    cfg, dlrm = build_dlrm(other_dim + ["--model.embedding_dim=4", "--model.bottom_mlp=13-16-4"])
    with pytest.raises(DeltaError, match=r"model.bottom_mlp: '13-16-8' in the export, '13-16-4' in the model; "
                                         r"model.embedding_dim: 8 in the export, 4 in the model"):
        delta_of_model(dlrm, cfg, run["base"], tmp_path / "y")
    # Any other model key is refused too (the delta's tensors go into the export's program), shapes or not.
    cfg, dlrm = build_dlrm(SMALL_JOB + ["--model.loss=mse"])
    with pytest.raises(DeltaError, match=r"model.loss: 'bce' in the export, 'mse' in the model"):
        delta_of_model(dlrm, cfg, run["base"], tmp_path / "z")
    # A program state of other shapes (e.g. remappers of another shard count) is named tensor by tensor.
    base = load_chain(run["base"])
    state = {k: v.clone() for k, v in base.module.state_dict().items()}
    state["table_1"] = torch.zeros(7, 8)
    with pytest.raises(DeltaError, match=r"table_1: float32 \[7, 8\] in the checkpoint, float32 \[200, 8\] in"):
        write_delta(ServingState(state, {}), base, run["base"], tmp_path / "w", 0, "crafted")
    assert not any((tmp_path / d / DELTA_FILE).exists() for d in "xyzw")


def _admit(dlrm, cfg, first_batch: int, batches: int) -> None:
    """Train-mode forwards over synthetic batches: the managed remappers count, admit and evict ids."""
    from dlrm_dist.data.resolve import build_data
    from dlrm_dist.features.schema import from_dict

    data = build_data(cfg, from_dict(cfg.features))
    dlrm.train()
    with torch.no_grad():
        for i, batch in enumerate(data.batches("train", 64, 0, 1, first_batch + batches)):
            if i >= first_batch:
                dlrm(batch.dense_features, batch.sparse_features)
    dlrm.eval()


def test_a_managed_tables_remapper_is_carried_in_full_and_checked(tmp_path) -> None:
    from dlrm_dist.serving.export import export_model
    from dlrm_dist.serving.model import ServingDLRM
    from tests.managed_serving_helper import MANAGED_JOB

    cfg, dlrm = build_dlrm(MANAGED_JOB)
    _admit(dlrm, cfg, 0, 2)
    export_model(dlrm, cfg, tmp_path / "base", progress=False)
    loaded = load_export(tmp_path / "base")
    base, before = loaded.manifest.remappers, loaded.module.state_dict()
    _admit(dlrm, cfg, 2, 4)  # more ids admitted (and some evicted) after the export
    with torch.no_grad():
        for p in dlrm.over_arch.parameters():
            p.add_(0.01)
    report = delta_of_model(dlrm, cfg, tmp_path / "base", tmp_path / "d1", step=6)
    m = report.manifest
    managed = [i for i, t in enumerate(sorted(m.rows[b].table for b in m.rows)) if t in base]  # item, user
    assert managed == [0, 2] and {k for k in m.state if k.startswith("remap_")} == {
        f"remap_{i}_{a}" for i in managed for a in ("ids", "rows", "starts", "miss")}
    chained = Predictor.load(tmp_path / "base", deltas=[tmp_path / "d1"])
    want = ServingDLRM(dlrm).state_dict()
    got = chained.export.module.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert chained.export.manifest.remappers == m.remappers and set(base) == set(m.remappers)
    assert not all(torch.equal(before[k], want[k]) for k in m.state if k.endswith("_ids"))  # ids were evicted
    # A delta whose remapper arrays TorchRec could not have written is refused by table, as an export's is.
    ids = m.state["remap_2_ids"].data
    raw = bytearray((tmp_path / "d1" / ids.file).read_bytes())
    raw[:8], raw[8:16] = raw[8:16], raw[:8]  # two admitted ids swapped: no longer sorted
    edited = json.loads((tmp_path / "d1" / DELTA_FILE).read_text())
    edited["state"]["remap_2_ids"]["data"]["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
    (tmp_path / "d1" / ids.file).write_bytes(bytes(raw))
    (tmp_path / "d1" / DELTA_FILE).write_text(json.dumps(edited))
    with pytest.raises(ExportError, match=r"d1 is damaged or edited: .*user"):
        Predictor.load(tmp_path / "base", deltas=[tmp_path / "d1"])


def test_changed_rows_are_those_differing_in_any_bit_whatever_the_block_size() -> None:
    from dlrm_dist.serving.delta_write import changed_rows

    old = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    new = old.clone()
    new[[3, 500, 999]] += 1
    new[7, 2] = torch.nextafter(old[7, 2], torch.tensor(9.0))  # one ulp
    zeros = torch.zeros(4, 8)
    signed = zeros.clone()
    signed[1, 0] = -0.0  # equal as numbers, another bit pattern: a full export would hold -0.0
    for block in (1, 100, 1 << 26):  # bytes per comparison block: rows one by one, a few, all at once
        assert changed_rows(new, old, block).tolist() == [3, 7, 500, 999]
        assert changed_rows(signed, zeros, block).tolist() == [1]
    assert changed_rows(old, old).tolist() == [] and changed_rows(old, old).dtype == torch.int64
