"""Checkpoints: exact resume, retention and atomic publishing, bad checkpoints, inference at
other world sizes and plans."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dlrm_dist.checkpoint import Manifest
from dlrm_dist.checkpoint.integrity import checksum
from dlrm_dist.checkpoint.manifest import MANIFEST, schema_of
from dlrm_dist.checkpoint.reader import read_metadata
from tests.checkpoint_helper import train_here
from tests.dist_helper import run_ranks
from tests.multiprocess.checkpoint_worker import SMALL, resume_cases
from tests.multiprocess.train_worker import train_jobs

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ckpt")
    (out / "a").mkdir()
    (out / "a" / "step_00000099.tmp").mkdir()  # an abandoned write: never read, cleaned up
    run_ranks(resume_cases, 2, str(out), timeout=600)
    return torch.load(out / "result.pt", weights_only=False)


def test_resume_is_exact(results) -> None:
    """8 steps straight == 4 steps, stop, resume, 4 more: same losses and weights, bitwise on CPU."""
    assert len(results["straight"]) == 8 and len(results["first"]) == 4 and len(results["second"]) == 4
    assert results["first"] + results["second"] == results["straight"]
    assert results["final_a"].keys() == results["final_b"].keys()
    for key, value in results["final_a"].items():
        assert torch.equal(value, results["final_b"][key]), key


def test_resume_is_exact_with_adam(results) -> None:
    """Adam (data-parallel tables and MLPs): its lazily created state is made up front, so it
    is saved and restored like any other: 4 + 4 steps == 8 steps, bitwise."""
    adam = results["adam"]
    assert adam["first"][0] + adam["second"][0] == adam["straight"][0]
    for key, value in adam["straight"][1].items():
        assert torch.equal(value, adam["second"][1][key]), key


def test_keeps_the_last_k_and_ignores_partial_writes(results) -> None:
    assert results["kept"] == ["step_00000006", "step_00000008"]
    assert results["latest"].endswith("step_00000008")


def test_manifest_says_what_is_inside(results) -> None:
    latest = Path(results["latest"])
    m = json.loads((latest / MANIFEST).read_text())
    assert (m["format"], m["version"], m["step"], m["world_size"]) == ("dlrm_dist.checkpoint", 3, 8, 2)
    assert m["tables"] == {"t_cat_0": [100, 8], "t_cat_1": [200, 8], "t_cat_2": [50, 8], "t_cat_3": [80, 8]}
    assert (m["embedding_optimizer"], m["dense_optimizer"]) == ("adagrad", "adagrad")
    assert sorted(r["table"] for r in m["plan"]) == sorted(m["tables"]) and m["config"]["train"]["steps"] == 8
    stored = read_metadata(latest).state_dict_metadata
    assert set(m["contents"]) == {key.split(".", 1)[0] for key in stored}
    typed = Manifest.read(latest)
    assert typed.to_dict() == m and typed.tables["t_cat_3"] == (80, 8) and typed.info.config == m["config"]
    # both ranks' shards and the metadata, checksummed by the two ranks together
    assert sorted(m["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert all(m["files"][n] == checksum(latest / n).to_dict() for n in m["files"])
    assert m["schema_fingerprint"] == schema_of(typed).fingerprint()


def test_bad_checkpoints_are_named(results) -> None:
    e = results["errors"]
    assert e["corrupt"] and re.search(r"bad/step_00000008/__\d_0\.distcp: missing \(the manifest lists it\)", e["corrupt"])
    assert e["truncated"] and re.search(r"cut/step_00000008/__1_0\.distcp: \d+ bytes, the manifest says \d+",
                                        e["truncated"]), e["truncated"]
    # found by whichever rank checked that file, raised on both (no rank left waiting)
    assert e["flipped"] and re.search(r"flip/step_00000008/__1_0\.distcp: damaged \(CRC32C [0-9a-f]{8}, the "
                                      r"manifest says [0-9a-f]{8}\)", e["flipped"]), e["flipped"]
    forged = e["forged"]  # past the checksums, the reader finds the cut file before DCP reads it
    assert forged and re.search(r"forged/step_00000008/__1_0\.distcp: \d+ bytes, but \.metadata places '.+' at "
                                r"bytes \d+\.\.\d+ \(cut short\)", forged), forged
    assert len(forged) < 800 and "FrameSummary" not in forged and "\n" not in forged, forged
    for name in ("crafted", "crafted_eval"):  # refused on every rank, on resume and on evaluation
        assert e[name] and "crafted/step_00000008/.metadata: refusing to unpickle 'posix.system'" in e[name], e[name]
    assert e["marker"] is False
    assert e["other_model"] and "different model" in e["other_model"] and "t_cat_3: checkpoint 80 x 8, model 81 x 8" in e["other_model"]
    assert e["missing"] and "no complete checkpoint" in e["missing"]
    assert e["other_optimizer"] and "embedding_optimizer: checkpoint 'adagrad', this run 'sgd'" in e["other_optimizer"]


def test_inference_only_at_other_world_sizes_and_plans(results, tmp_path) -> None:
    """The row-wise checkpoint of 2 ranks evaluated at world size 1 (the planner's placement,
    in this process) and at world size 4 table-wise: the trained model's AUC and log-loss."""
    base = [a for a in SMALL if not a.startswith("--sharding-type")]
    ckpt = str(Path(results["latest"]).parent)
    trained = results["straight_eval"]
    alone = train_here(["--inference-only", "--checkpoint", ckpt, f"--run-dir={tmp_path / 'ws1'}"], base)
    assert alone.losses == [] and alone.step == 8
    run_ranks(train_jobs, 4, str(tmp_path), {"ws4": base + ["--sharding-type=table_wise", "--inference-only",
                                                             "--checkpoint", ckpt]}, timeout=600)
    four = json.loads((tmp_path / "ws4" / "summary.json").read_text())
    assert four["steps"] == 0 and four["step"] == 8 and four["world_size"] == 4 and four["inference_only"]
    for inferred in (alone.final_eval.to_dict(), {k[len("eval_"):]: v for k, v in four.items() if k.startswith("eval_")}):
        assert inferred["auc"] == pytest.approx(trained["auc"], abs=1e-6)
        assert inferred["logloss"] == pytest.approx(trained["logloss"], abs=1e-6)


def test_export_to_an_unsharded_model(results) -> None:
    """The row-wise checkpoint (every table split over the 2 ranks) read into one plain model."""
    from dlrm_dist.checkpoint.unsharded import load_unsharded
    from dlrm_dist.config import load_config
    from dlrm_dist.metrics.eval import EvalMetrics
    from dlrm_dist.data.resolve import build_data
    from dlrm_dist.training.build import resolve

    model = load_unsharded(Path(results["latest"]).parent)
    assert not any(type(t).__name__ == "ShardedTensor" for t in model.state_dict().values())
    cfg, schema, _ = resolve(load_config(SMALL))
    data = build_data(cfg, schema)
    metrics = EvalMetrics()
    with torch.no_grad():
        for batch in data.batches("eval", 64, 0, 1, data.eval_batch_count(64)):
            metrics.update(model.model(batch.dense_features, batch.sparse_features), batch.labels)
    assert metrics.compute(step=8).auc == pytest.approx(results["straight_eval"]["auc"], abs=1e-6)
    assert model.state_dict()["model.sparse_arch.embedding_bags.t_cat_1.weight"].shape == (200, 8)
