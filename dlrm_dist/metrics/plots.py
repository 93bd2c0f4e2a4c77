"""The run report: curves of one or more runs drawn with matplotlib, as PNG or a self-contained HTML page.

Six panels: training loss and eval AUC / NE (runs overlaid), throughput over steps, each
rank's step time over steps, and each rank's mean step time beside the plan's estimate of
its embedding work (the part of a step the planner models). A run over day partitions with
progressive validation adds a row: next-day AUC, NE and log-loss by partition (each partition
scored before training on it), runs overlaid; the tables list them per partition too. Matplotlib's object API with
the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dlrm_dist.metrics.eval import METRIC_NAMES
from dlrm_dist.metrics.progressive import SHOWN, mean_after_first, partition_table
from dlrm_dist.metrics.records import finite_or_none, is_number
from dlrm_dist.metrics.runs import RunData, mean_rank_step_ms


def _finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if _finite(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _label(name: str) -> str:
    """A run name as matplotlib text: a "$" would start mathtext."""
    return name.replace("$", r"\$")


def _curves(ax: Any, runs: list[RunData], kind: str, key: str, title: str, ylabel: str) -> None:
    for run in runs:
        xs, ys = _series(run.train if kind == "train" else run.evals, key)
        if xs:
            ax.plot(xs, ys, marker="o" if kind == "eval" else None, markersize=3, label=_label(run.name))
        if kind == "train" and key == "loss" and run.diverged:
            ax.axvline(run.diverged["step"], color="red", linestyle="--", linewidth=1,
                       label=_label(f"{run.name}: diverged"))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if (len(runs) > 1 or any(r.diverged for r in runs)) and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _rank_step_curves(ax: Any, runs: list[RunData]) -> None:
    for run in runs:
        rows = run.rank_rows
        for rank in range(len(rows[0][1]) if rows else 0):
            pts = [(step, times[rank]) for step, times in rows if _finite(times[rank])]
            prefix = f"{run.name} " if len(runs) > 1 else ""
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, label=_label(f"{prefix}rank {rank}"))
    ax.set_title("step time per rank (before waiting for others)")
    ax.set_xlabel("step")
    ax.set_ylabel("ms / step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)


def _positive(values: Optional[list[Any]]) -> list[float]:
    """The values a log axis can show (others are left as gaps)."""
    return [v if _finite(v) and v > 0 else math.nan for v in values or []]


def _rank_vs_plan(ax: Any, runs: list[RunData]) -> None:
    """Measured mean step per rank beside the plan's figure for it.

    A calibrated plan predicts the whole step (prediction.py): both go on one linear scale. An
    uncalibrated plan's estimate covers the embedding part at TorchRec's constant bandwidths,
    often 100x below the step: a log scale then shows both.
    """
    width = 0.8 / max(len(runs), 1)
    shown = [r for r in runs if any(map(_finite, _positive(mean_rank_step_ms(r))))]
    linear = bool(shown) and all(r.predicted_step_ms for r in shown)
    for i, run in enumerate(runs):
        measured = _positive(mean_rank_step_ms(run))
        if not any(map(_finite, measured)):
            continue
        xs = [r + i * width for r in range(len(measured))]
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in measured], width=width * 0.9,
               label=_label(f"{run.name}: measured step"), alpha=0.8)
        predicted = run.predicted_step_ms if linear else run.estimated_rank_ms
        estimate = _positive(predicted)[: len(xs)]
        what = "predicted step (calibrated)" if linear else "plan estimate (embeddings)"
        if any(map(_finite, estimate)):
            ax.plot(xs[: len(estimate)], estimate, "k_", markersize=18, mew=2, label=_label(f"{run.name}: {what}"))
    ranks = max((len(mean_rank_step_ms(r) or []) for r in runs), default=0)
    ax.set_xticks([r + width * (len(runs) - 1) / 2 for r in range(ranks)], [str(r) for r in range(ranks)])
    if ax.get_legend_handles_labels()[0]:
        if not linear:
            ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(0 if linear else low, high * (1.4 if linear else 30))  # room for the legend above the bars
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    # short enough for a third of the figure's width (the longer title was cut off)
    ax.set_title("mean step per rank vs " + ("predicted step (calibrated, linear)" if linear
                                             else "the plan's estimate (log)"))
    ax.set_xlabel("rank")
    ax.set_ylabel("ms / step")
    ax.grid(alpha=0.3, axis="y", which="both")


def _by_partition(ax: Any, runs: list[RunData], key: str, title: str, ylabel: str) -> None:
    """A next-day metric by partition, one line per run (progressive validation)."""
    partitions: set[int] = set()
    for run in runs:
        pts = [(r["partition"], r[key]) for r in sorted(run.progressive, key=lambda r: r["step"]) if _finite(r.get(key))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=_label(run.name))
            partitions.update(p[0] for p in pts)
    ax.set_title(title)
    ax.set_xlabel("partition (scored before training on it)")
    ax.set_ylabel(ylabel)
    if partitions:
        ax.set_xticks(sorted(partitions))
    ax.grid(alpha=0.3)
    if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def draw(runs: list[RunData]) -> Figure:
    """The report figure (2 x 3 panels, 3 x 3 with next-day scores) for ``runs``."""
    progressive = any(r.progressive for r in runs)
    fig = Figure(figsize=(16, 13.5 if progressive else 9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 if progressive else 2, 3)
    if progressive:
        _by_partition(axes[2][0], runs, "auc", "next-day AUC by partition", "AUC")
        _by_partition(axes[2][1], runs, "ne", "next-day NE by partition (lower is better)", "NE")
        _by_partition(axes[2][2], runs, "logloss", "next-day log-loss by partition", "log-loss (nats)")
    _curves(axes[0][0], runs, "train", "loss", "training loss (mean over ranks)", "loss")
    _curves(axes[0][1], runs, "eval", "auc", "eval AUC", "AUC")
    _curves(axes[0][2], runs, "eval", "ne", "eval normalised entropy (lower is better)", "NE")
    _curves(axes[1][0], runs, "train", "samples_per_s", "throughput (cumulative)", "samples / s")
    _rank_step_curves(axes[1][1], runs)
    _rank_vs_plan(axes[1][2], runs)
    fig.suptitle(_label("dlrm_dist run report: " + ", ".join(r.name for r in runs)))
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def summary_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """One row per run: steps, final eval metrics, throughput, step time against the plan,
    why it stopped if it diverged, and what was skipped reading it. Strict JSON: no NaN."""
    rows = []
    for run in runs:
        final = run.final_eval or {}
        last_train = run.train[-1] if run.train else {}
        measured = [t for t in mean_rank_step_ms(run) or [] if _finite(t)]
        estimated = [t for t in run.estimated_rank_ms or [] if _finite(t)]
        rows.append(finite_or_none({
            "run": run.name,
            "step": final.get("step", last_train.get("step")),
            **{name: final.get(name) for name in METRIC_NAMES},
            "final_loss": last_train.get("loss"),
            "samples_per_s": last_train.get("samples_per_s"),
            "max_rank_step_ms": max(measured) if measured else None,
            "plan_estimate_ms": max(estimated) if estimated else None,
            "predicted_step_ms": max(run.predicted_step_ms) if run.predicted_step_ms else None,
            "next_day_auc": (mean_after_first(run.progressive) or {}).get("auc"),
            "diverged": run.diverged.get("message") if run.diverged else None,
            "notes": list(run.notes),
            "progressive": [{k: r.get(k) for k in ("partition", "step", "rows", *SHOWN)}
                            for r in sorted(run.progressive, key=lambda r: r["step"])],
        }))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def html_page(runs: list[RunData], png: bytes) -> str:
    """A self-contained page: the figure inlined as a data URI, and the summary table."""
    full = summary_rows(runs)
    rows = [{k: v for k, v in row.items() if k not in ("notes", "progressive")} for row in full]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    names, cells = partition_table(full)
    by_partition = ("<h2>Next-day AUC by partition (progressive validation)</h2><table><tr>"
                    + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in line) + "</tr>" for line in cells)
                    + "</table>") if names else ""
    notes = [html.escape(note) for run in runs for note in run.notes]
    listed = "<ul>" + "".join(f"<li>{note}</li>" for note in notes) + "</ul>" if notes else ""
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dlrm_dist report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#f4f4f4}}</style></head>
<body><h1>dlrm_dist run report</h1>
<table><tr>{head}</tr>{body}</table>{by_partition}{listed}
<p>Log-loss in nats; NE = log-loss / entropy of the split's CTR; calibration = mean prediction / CTR.
Step time per rank is each rank's own time before it waits for the others; the plan's estimate
covers the embedding work only (lookups, all-to-all), not the MLPs. Next-day scores: each day
partition scored by the model before training on it; next_day_auc is their mean after the first.</p>
<img alt="run curves" style="max-width:100%" src="data:image/png;base64,{image}">
</body></html>
"""
