"""Evaluation metrics (TorchRec's RecMetricModule) against an independent computation.

The reference below is plain Python over the list of (probability, label) pairs: AUC as the
fraction of correctly ordered positive/negative pairs (ties count half), NE as log-loss over
the entropy of the mean label, and so on. The same predictions are fed on one process and
split over two gloo ranks (unevenly, with padding rows): every metric must agree.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import pytest
import torch

from dlrm_dist.metrics.eval import METRIC_NAMES, EvalMetrics
from tests.dist_helper import run_ranks


def reference(pairs: list[tuple[float, int]]) -> dict[str, float]:
    """Every metric from first principles (no torch, no numpy)."""
    n = len(pairs)
    pos = [p for p, y in pairs if y == 1]
    neg = [p for p, y in pairs if y == 0]
    ordered = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    ctr = len(pos) / n
    logloss = -sum(math.log(p) if y else math.log(1 - p) for p, y in pairs) / n
    entropy = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    return {
        "auc": ordered / (len(pos) * len(neg)),
        "ne": logloss / entropy,
        "calibration": sum(p for p, _ in pairs) / sum(y for _, y in pairs),
        "logloss": logloss,
        "accuracy": sum((p >= 0.5) == (y == 1) for p, y in pairs) / n,
        "ctr": ctr,
    }


def known_predictions(n: int = 500, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels with some signal (labels drawn from the predictions, then some flipped)."""
    rng = random.Random(seed)
    logits = [rng.gauss(0.0, 1.5) for _ in range(n)]
    labels = [float(rng.random() < 1 / (1 + math.exp(-0.7 * z))) for z in logits]
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)


def expected(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    probs = torch.sigmoid(logits).tolist()
    return reference([(p, int(y)) for p, y in zip(probs, labels.tolist()) if y >= 0])


def check(result: dict[str, float], want: dict[str, float]) -> None:
    for name in METRIC_NAMES:
        assert result[name] == pytest.approx(want[name], rel=1e-5, abs=1e-6), name


def test_every_metric_on_one_process_with_padding_and_empty_batches() -> None:
    logits, labels = known_predictions()
    padded_labels = torch.cat([labels, torch.full((7,), -1.0)])
    padded_logits = torch.cat([logits, torch.randn(7)])
    m = EvalMetrics(batch_size=64)
    for start in range(0, len(padded_labels), 64):
        m.update(padded_logits[start:start + 64], padded_labels[start:start + 64])
    m.update(torch.randn(5), torch.full((5,), -1.0))  # all padding: changes nothing
    out = m.compute(step=12)
    assert out.step == 12 and out.samples == len(labels) and out.auc_exact
    check(out.to_dict(), expected(logits, labels))
    assert "auc 0." in out.line() and "ne " in out.line()


@pytest.mark.parametrize("flush_rows", [100, 10**9])
def test_the_auc_filters_padding_in_buffered_blocks_not_per_batch(monkeypatch, flush_rows: int) -> None:
    """The padding filter (a host sync on a GPU) runs once per block of rows, results unchanged."""
    from dlrm_dist.metrics import eval as eval_module

    monkeypatch.setattr(eval_module, "AUC_FLUSH_SAMPLES", flush_rows)
    logits, labels = known_predictions()
    labels = torch.cat([labels, torch.full((9,), -1.0)])
    logits = torch.cat([logits, torch.randn(9)])
    m = EvalMetrics(batch_size=32)
    calls = []
    real_update = m.auc.update
    monkeypatch.setattr(m.auc, "update", lambda p, t: (calls.append(len(p)), real_update(p, t)))
    batches = range(0, len(labels), 32)
    for start in batches:
        m.update(logits[start:start + 32], labels[start:start + 32])
    out = m.compute(step=1)
    check(out.to_dict(), expected(logits, labels))
    assert sum(calls) == len(labels) - 9
    assert len(calls) == (math.ceil(len(labels) / 128) if flush_rows == 100 else 1) < len(batches)


def test_tied_predictions_count_half() -> None:
    """TorchRec's AUC would order the tie arbitrarily (1.0 or 0.0); the definition says 0.5."""
    m = EvalMetrics(batch_size=4)
    m.update(torch.zeros(4), torch.tensor([1.0, 0.0, -1.0, -1.0]))
    out = m.compute(step=0)
    assert out.auc == 0.5 and out.samples == 2
    quantized = torch.tensor([0.5, 0.5, 0.5, -1.0, 2.0, 2.0])  # ties among scores, as int8 models produce
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    m = EvalMetrics(batch_size=6)
    m.update(quantized, labels)
    assert m.compute(step=0).auc == pytest.approx(expected(quantized, labels)["auc"])


def test_a_split_beyond_the_bound_gets_a_binned_auc_close_to_exact() -> None:
    logits, labels = known_predictions(4000)
    m = EvalMetrics(batch_size=500, auc_max_samples=1000, expected_samples=4000)
    for start in range(0, 4000, 500):
        m.update(logits[start:start + 500], labels[start:start + 500])
    out = m.compute(step=0)
    want = expected(logits, labels)
    assert out.samples == 4000 and not out.auc_exact
    assert out.auc == pytest.approx(want["auc"], abs=1e-3)
    assert out.ctr == pytest.approx(want["ctr"]) and out.ne == pytest.approx(want["ne"], rel=1e-5)


def _two_rank_worker(out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    logits, labels = known_predictions()
    # Rank 0 gets 300 samples in batches of 50, rank 1 the other 200 plus 11 padding rows.
    mine = slice(0, 300) if rank == 0 else slice(300, 500)
    lg, lb = logits[mine], labels[mine]
    if rank == 1:
        lg, lb = torch.cat([lg, torch.zeros(11)]), torch.cat([lb, torch.full((11,), -1.0)])
    with warnings.catch_warnings(record=True) as caught:  # every warning, the libraries' included
        warnings.simplefilter("always")
        m = EvalMetrics(world_size=2, rank=rank, batch_size=50)
        for start in range(0, len(lb), 50):
            m.update(lg[start:start + 50], lb[start:start + 50])
        result = m.compute(step=5)
    found = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({**result.to_dict(), "warnings": found}))
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_every_metric_over_two_ranks_equals_the_whole_split(tmp_path) -> None:
    run_ranks(_two_rank_worker, 2, str(tmp_path), timeout=180)
    logits, labels = known_predictions()
    want = expected(logits, labels)
    for rank in (0, 1):  # every rank holds the global result
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["samples"] == 500
        check(got, want)
        # uneven per-rank AUC states (300 and 200 rows) once made torchmetrics' gather index with a
        # list, which torch deprecates: a UserWarning on every rank of every run with an uneven split
        assert got["warnings"] == [], got["warnings"]
