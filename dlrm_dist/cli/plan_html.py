"""A self-contained HTML page of a plan: per-rank stacked bars of cost and memory.

Pure inline SVG (no scripts, no network). Every bar segment carries data-* attributes
(rank, part, value) and the page embeds the estimates as JSON, so tests and tools can
read exactly what is drawn.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from dlrm_dist.fileio import atomic_write_text
from dlrm_dist.planning.types import COST_PARTS

if TYPE_CHECKING:
    from dlrm_dist.planning.planfile import PlanFile
    from dlrm_dist.planning.planview import PlanView

    Plan = Union[PlanFile, PlanView]  # both hold the inputs and estimates drawn here

# The cost bars stack the parts of TorchRec's Perf.total (COST_PARTS): input_dist_comms is
# shown in the tables but not counted in the cost, so it is not drawn.
COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"]
WIDTH, HEIGHT, PAD = 900, 220, 40


def _bars(title: str, unit: str, per_rank: list[dict[str, float]], parts: list[str], limit: Optional[float]) -> str:
    n = len(per_rank)
    top = max([sum(r.values()) for r in per_rank] + [limit or 0, 1e-12])
    bw = (WIDTH - 2 * PAD) / max(n, 1)
    out = [f'<h2>{html.escape(title)}</h2><svg class="chart" data-chart="{html.escape(title)}" '
           f'width="{WIDTH}" height="{HEIGHT + PAD}" xmlns="http://www.w3.org/2000/svg">']
    for rank, values in enumerate(per_rank):
        y = HEIGHT
        for i, part in enumerate(parts):
            v = values.get(part, 0.0)
            h = (HEIGHT - PAD) * v / top
            y -= h
            out.append(f'<rect x="{PAD + rank * bw:.2f}" y="{y:.2f}" width="{max(bw - 1, 0.5):.2f}" height="{h:.2f}" '
                       f'fill="{COLORS[i % len(COLORS)]}" data-rank="{rank}" data-part="{part}" data-value="{v!r}">'
                       f'<title>rank {rank} {part}: {v:.4g} {unit}</title></rect>')
    if limit:
        ly = HEIGHT - (HEIGHT - PAD) * limit / top
        out.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{ly:.2f}" y2="{ly:.2f}" stroke="#000" '
                   f'stroke-dasharray="4" data-limit="{limit!r}"/>')
    out.append(f'<text x="{PAD}" y="{HEIGHT + 20}" font-size="12">ranks 0..{n - 1}; top = {top:.4g} {unit}</text>')
    legend = " ".join(f'<span style="color:{COLORS[i % len(COLORS)]}">&#9632; {html.escape(p)}</span>' for i, p in enumerate(parts))
    return "\n".join(out) + f"</svg><p>{legend}</p>"


def render(pf: "Plan", measured: Optional[list[float]] = None) -> str:
    est = pf.estimates
    per_rank, s = est.per_rank, est.summary
    cost = [{p: getattr(r.perf, p) for p in COST_PARTS} for r in per_rank]
    types = sorted({k for r in per_rank for k in r.hbm_by_type} | {k for r in per_rank for k in r.ddr_by_type})
    gib = 1024**3
    hbm = [{t: r.hbm_by_type.get(t, 0) / gib for t in types} for r in per_rank]
    ddr = [{t: r.ddr_by_type.get(t, 0) / gib for t in types} for r in per_rank]
    t = pf.inputs.topology
    parts = [
        f"<h1>Sharding plan: {len(pf.inputs.tables)} tables on {t.world_size} x {t.device}</h1>",
        f"<p>bottleneck rank {s.bottleneck_rank} at {s.estimated_iteration_ms:.4f} ms; cost imbalance "
        f"{s.cost_imbalance:.3f}; estimated {s.estimated_samples_per_s or 0:,.0f} samples/s. "
        "Cost bars stack the parts of TorchRec's per-shard cost (input-dist comms, which overlap "
        "with the previous batch, are not counted); dashed lines are memory budgets.</p>",
        _bars("Estimated cost per rank", "ms", cost, list(COST_PARTS), None),
        _bars("HBM per rank", "GiB", hbm, types, s.hbm_budget_bytes / gib or None),
        _bars("DDR per rank", "GiB", ddr, types, s.ddr_budget_bytes / gib or None),
    ]
    if measured:
        parts.append(_bars("Measured step time per rank", "ms", [{"measured": m} for m in measured], ["measured"], None))
    data = json.dumps({"estimates": est.describe(), "measured_step_ms": measured}, sort_keys=True).replace("</", "<\\/")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>dlrm_dist plan</title>"
            "<style>body{font-family:sans-serif;margin:20px}</style></head><body>"
            + "\n".join(parts)
            + f'<script type="application/json" id="plan-data">{data}</script></body></html>\n')


def write_html(pf: "Plan", path: str, measured: Optional[list[float]] = None) -> None:
    atomic_write_text(Path(path), render(pf, measured))


