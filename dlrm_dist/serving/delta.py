"""A chain of deltas applied to a loaded export: checked link by link, then written into its program's state.

    export = load_chain("exported/", ["delta-1/", "delta-2/"])      # dlrm-predict --data with --delta
    Predictor.load("exported/", deltas=["delta-1/", "delta-2/"])   # calls apply_deltas(dir, loaded, deltas)

Each delta names the identity of what it applies to (the base export's export.json sha256 for
link 1, the previous delta's delta.json sha256 after that) and the identity of its chain's base
export (delta_format.py). Before any tensor is read every link is checked, and a chain is
refused by name (DeltaError, exit 4) when a delta is of another base export, given twice, given
before the delta it applies to (the wrong order), applied after a link it does not follow (two
deltas made from the same link are alternatives), or after a gap (a missing link), or is in
another precision or schema than the base. Then each delta's files are read and checked
(sizes, sha256s, row numbers, finite values) and its tensors checked against the program's:
it must cover the program's whole state (every table as changed rows, every other tensor in
full), dtypes and shapes equal. Only then are its rows written into the tables and its other
tensors copied over the program's own, in place; a managed table's remapper arrays (carried
whole) are then checked as load_export checks them (serving/load.py's check_remappers).

The result is a ChainedExport: the program now holds the last delta's checkpoint, and its
manifest is the base's with that step, checkpoint and remappers (and no metrics at export:
the base's are not this model's). On an error the export passed in may be left part-updated: discard
it (Predictor.load and load_chain do). Needs torch and pydantic (no TorchRec).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from dlrm_dist.serving.delta_format import (DELTA_FILE, DeltaArgumentError, DeltaError, DeltaHead, DeltaManifest,
                                            DeltaTensors, export_identity, read_head, read_tensors, shape_problem)
from dlrm_dist.serving.load import LoadedExport, check_remappers, load_export
from dlrm_dist.serving.manifest import MANIFEST_FILE, ExportManifest

__all__ = ["AppliedDelta", "ChainedExport", "DeltaError", "apply_deltas", "chain_metadata", "check_base",
           "check_chain", "load_chain", "table_buffers"]


@dataclass(frozen=True)
class AppliedDelta:
    """One link of a chain as applied: where it was read, its identity, and what it changed."""

    directory: Path
    identity: str
    link: int
    step: int
    checkpoint: str
    changed_rows: dict[str, int]  # by table name


@dataclass
class ChainedExport(LoadedExport):
    """A loaded export with a chain of deltas applied (none: the export as written)."""

    base_identity: str = ""
    base_step: int = 0  # the base export's own step (the manifest holds the last link's)
    chain: tuple[AppliedDelta, ...] = field(default_factory=tuple)

    @property
    def identity(self) -> str:
        """What a next delta must name as its ``applies_to``: the last link's identity."""
        return self.chain[-1].identity if self.chain else self.base_identity

    @property
    def link(self) -> int:
        return len(self.chain)


def table_buffers(manifest: ExportManifest) -> dict[str, str]:
    """The program's table buffers by name (``table_<i>`` over the tables in sorted order, as serving/load.py
    reads them) -> the schema's table name."""
    return {f"table_{i}": name for i, name in enumerate(sorted(manifest.tables))}


def _link_name(head: DeltaHead, heads: Sequence[DeltaHead]) -> str:
    """What a delta applies to, in words (the given delta it names, or the base export)."""
    target = head.manifest.applies_to
    if target.kind == "export":
        return f"the export itself (step {target.step})"
    named = next((h for h in heads if h.identity == target.identity), None)
    if named:
        return named.name
    return f"link {target.link} (step {target.step}, delta.json sha256 {target.identity[:12]}...)"


def _link_problem(i: int, heads: Sequence[DeltaHead], base_dir: Path, base: ExportManifest, base_identity: str,
                  previous: str) -> str | None:
    """Why ``heads[i]`` is not the next link after ``previous`` (an identity) on ``base`` (None: it is)."""
    head, m = heads[i], heads[i].manifest
    after = heads[i - 1].name if i else f"the export {base_dir} (step {base.step})"
    if m.base.identity != base_identity:
        return (f"{head.name} is a delta of another export (its base holds step {m.base.step}, export.json sha256 "
                f"{m.base.identity[:12]}...), not of {base_dir} (step {base.step}, sha256 {base_identity[:12]}...)")
    if m.applies_to.identity == previous:
        return None
    if any(h.identity == head.identity for h in heads[:i]):
        return f"{head.name} is given twice: a delta is applied once"
    later = [j for j in range(i + 1, len(heads)) if heads[j].identity == m.applies_to.identity]
    if later:
        order = ", ".join(str(h.directory) for h in sorted(heads, key=lambda h: h.manifest.link))
        return (f"{head.name} applies to {heads[later[0]].name}, which is given after it: give the deltas in "
                f"their chain's order ({order})")
    if m.link <= i + 1:
        return (f"{head.name} applies to {_link_name(head, heads)}, not to {after}: it does not follow it "
                "(deltas made from the same link are alternatives: apply one of them)")
    return (f"{head.name} applies to {_link_name(head, heads)}, which is not given: the chain is missing "
            f"link(s) {i + 1}..{m.link - 1} after {after}")


def check_chain(base_dir: Path, base: ExportManifest, base_identity: str, heads: Sequence[DeltaHead]) -> None:
    """Refuses (DeltaError naming the delta) a chain whose links do not follow one another on ``base``."""
    previous = base_identity
    for i, head in enumerate(heads):
        problem = _link_problem(i, heads, base_dir, base, base_identity, previous)
        m = head.manifest
        if problem is None and m.quantize != base.quantize:
            problem = (f"{head.name} is a {m.quantize} delta, the export {base_dir} is {base.quantize}: a delta is in "
                       "its base's precision")
        if problem is None and set(m.remappers) != set(base.remappers):
            problem = (f"{head.name} has remappers for managed tables {sorted(m.remappers)}, the export {base_dir} "
                       f"for {sorted(base.remappers)}")
        if problem is None and m.schema_fingerprint != base.schema_fingerprint:
            problem = (f"{head.name} was made for schema {m.schema_fingerprint}, the export {base_dir} has schema "
                       f"{base.schema_fingerprint}")
        if problem:
            raise DeltaError(problem)
        previous = head.identity


def _fit_problems(head: DeltaHead, state: dict[str, torch.Tensor], tables: dict[str, str]) -> list[str]:
    """Where the delta's tensors do not cover or fit the program's state (empty: they do)."""
    m = head.manifest
    problems = []
    if set(m.rows) != set(tables):
        problems.append(f"it changes rows of tables {sorted(m.rows)}, the program has {sorted(tables)}")
    others = sorted(set(state) - set(tables))
    if set(m.state) != set(others):
        odd = sorted(set(m.state) ^ set(others))[:5]
        problems.append(f"its whole tensors are not the program's other state (differing: {odd})")
    for buffer, entry in m.rows.items():
        if buffer in state:
            if tables.get(buffer) != entry.table:
                problems.append(f"{buffer} is table {tables.get(buffer)!r} in the program, {entry.table!r} in the "
                                "delta")
            problems.append(shape_problem(buffer, state[buffer], entry.dtype, [entry.rows, entry.width]) or "")
    for name, entry in m.state.items():
        if name in state:
            problems.append(shape_problem(name, state[name], entry.dtype, entry.shape) or "")
    return [p for p in problems if p]


@torch.no_grad()
def _write(tensors: DeltaTensors, state: dict[str, torch.Tensor]) -> None:
    for buffer, (ids, values) in tensors.rows.items():
        if len(ids):
            state[buffer][ids] = values
    for name, value in tensors.state.items():
        state[name].copy_(value)


def apply_deltas(base_dir: str | Path, export: LoadedExport, delta_dirs: Sequence[str | Path]) -> ChainedExport:
    """``export`` (loaded from ``base_dir``) with the chain ``delta_dirs`` applied in place (module docstring)."""
    base_dir = Path(base_dir)
    base = export.manifest
    base_identity = export_identity(base_dir)
    heads = [read_head(d) for d in delta_dirs]
    check_chain(base_dir, base, base_identity, heads)
    state = export.module.state_dict()  # detached views of the program's own tensors: writes go into the program
    tables = table_buffers(base)
    applied = []
    for head in heads:
        tensors = read_tensors(head)
        problems = _fit_problems(head, state, tables)
        if problems:
            raise DeltaError(f"{head.name} does not fit the export {base_dir}'s program: {'; '.join(problems[:5])}")
        _write(tensors, state)
        m = head.manifest
        applied.append(AppliedDelta(head.directory, head.identity, m.link, m.step, m.checkpoint,
                                    {e.table: e.changed for e in m.rows.values()}))
        manifest = chained_manifest(base, m)
        check_remappers(export.module, manifest, head.directory)  # a managed table's remapper, whole again
    manifest = chained_manifest(base, heads[-1].manifest) if heads else base
    return ChainedExport(export.module, manifest, base_identity, base.step, tuple(applied))


def chained_manifest(base: ExportManifest, last: DeltaManifest) -> ExportManifest:
    """What the chain's end is: the base's manifest with the last delta's step, checkpoint and remappers (the
    ids training admitted since), without the base's metrics at export (they are not this model's)."""
    return base.model_copy(update={"step": last.step, "checkpoint": last.checkpoint, "metrics": None,
                                   "remappers": {**base.remappers, **last.remappers}})


def load_chain(base_dir: str | Path, delta_dirs: Sequence[str | Path] = ()) -> ChainedExport:
    """The export at ``base_dir`` (checked as load_export checks it) with the chain ``delta_dirs`` applied."""
    check_base(base_dir)
    return apply_deltas(base_dir, load_export(base_dir), delta_dirs)


def check_base(base_dir: str | Path) -> None:
    """Refuses (exit 2) a delta given where the chain's base export belongs, saying what to give instead."""
    d = Path(base_dir)
    if (d / DELTA_FILE).is_file() and not (d / MANIFEST_FILE).is_file():
        raise DeltaArgumentError(f"{d} is a delta, not an export: give the chain's base export first and this delta "
                                 "after it (--delta), with the deltas before it in order")


def chain_metadata(export: LoadedExport) -> dict[str, Any]:
    """The chain a served model was built from, JSON-able ({} for an export loaded without deltas)."""
    if not isinstance(export, ChainedExport) or not export.chain:
        return {}
    return {"base_identity": export.base_identity,
            "deltas": [{"directory": str(d.directory), "identity": d.identity, "link": d.link, "step": d.step,
                        "checkpoint": d.checkpoint, "changed_rows": d.changed_rows} for d in export.chain]}
