"""The delta directory format: its manifest (pydantic), its identity, and its tensors read and checked.

A delta holds what changed in an export's program state since the export (or the delta) it
applies to; ``dlrm-export CKPT --since EXPORT`` writes it (delta_write.py), serving applies a
chain of them (delta.py):

    DELTA/delta.json      the manifest (DeltaManifest): the identity of what it applies to and of
                          the chain's base export, its checkpoint and step, its precision, how
                          rows were compared, every data file with its size and sha256, and the
                          managed tables' new export.json remapper entries (ids admitted since)
    DELTA/data/<n>.bin    raw little-endian tensor bytes: per table with changed rows, the row
                          numbers (int64, strictly increasing) and those rows (the table's own
                          dtype: float32, or fbgemm's int8 row-wise bytes); every other tensor of
                          the program's state (dense weights, a managed table's remapper) in full

Identity: an export's is the sha256 of its export.json (which holds model.pt2's sha256 and every
vocabulary's), a delta's the sha256 of its delta.json (which holds its files'). A delta names the
identity it applies to and its chain's base export, so a chain is checked link by link.

Like an export, a delta is data only: nothing is unpickled, a file is read only if the manifest
names it under ``data/`` (inside the directory once resolved) with the size its dtype and shape
need, and its bytes must have the recorded sha256. Needs torch and pydantic (no TorchRec).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field, ValidationError, model_validator

from dlrm_dist.errors import EXIT_BAD_INPUT, DlrmError
from dlrm_dist.fileio import UnsafePathError, inside
from dlrm_dist.serving.manifest import ExportError, FrozenRemapper
from dlrm_dist.validation import Strict, joined, messages

FORMAT = "dlrm_dist.delta"
VERSION = 1
DELTA_FILE = "delta.json"
MAX_MANIFEST = 1 << 26  # 64 MB: a manifest names a few hundred tensors
# The dtypes a program's state holds (tables float32 or uint8 int8-row-wise, dense float32, remapper int64);
# no bool: arbitrary bytes are not valid bools.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                                  "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8,
                                  "int32": torch.int32, "int64": torch.int64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
COMPARED = {"none": "exact: a row changed if any of its float32 bits did",
            "int8": "quantized: a row changed if any byte of its int8 row-wise form (codes, scale, bias) did"}

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
DtypeName = Literal["float32", "float16", "bfloat16", "float64", "uint8", "int8", "int32", "int64"]


class DeltaError(ExportError):
    """A delta is missing, damaged, of another base or out of its chain's order (exit 4); the message says which."""


class DeltaArgumentError(DlrmError):
    """Bad arguments for writing or applying deltas (exit 2): a precision other than the base's, an --out in use."""

    exit_code = EXIT_BAD_INPUT


class DataFile(Strict):
    """One raw tensor file of the delta."""

    file: Annotated[str, Field(pattern=r"^data/\d{1,6}\.bin$")]
    bytes: Count
    sha256: Sha256


class FullTensor(Strict):
    """A state tensor carried whole (dense weights, remapper state)."""

    dtype: DtypeName
    shape: Annotated[list[Count], Field(max_length=8)]
    data: DataFile


class ChangedRows(Strict):
    """A table's changed rows: ``ids`` (int64 [changed], strictly increasing) and ``values`` ([changed, width])."""

    table: Name  # the schema's table name (the program's buffer is the key)
    rows: Annotated[int, Field(ge=1)]
    width: Annotated[int, Field(ge=1)]  # elements per row (int8: dim + 8 bytes)
    dtype: DtypeName
    changed: Count
    ids: DataFile
    values: DataFile


class Link(Strict):
    """An export or a delta in a chain: what it is, its identity, the step it holds, its place (0: the export)."""

    kind: Literal["export", "delta"]
    identity: Sha256
    step: Count
    link: Count


class DeltaManifest(Strict):
    """``delta.json``: what the delta applies to and holds."""

    format: Literal["dlrm_dist.delta"] = FORMAT
    version: Literal[1] = VERSION
    base: Link  # the export at the root of the chain
    applies_to: Link  # the export or delta this one is applied on top of
    link: Annotated[int, Field(ge=1)]  # this delta's place in the chain (1: applied to the export itself)
    checkpoint: Name
    step: Count
    quantize: Literal["none", "int8"]
    compared: Name
    schema_fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    rows: dict[Name, ChangedRows]  # by program buffer (table_<i>)
    state: dict[Name, FullTensor]  # by program state name
    remappers: dict[Name, FrozenRemapper] = {}  # managed tables: export.json's entries for the new remapper state
    full_export_bytes: Count  # the base's model.pt2: what a full export of the same shapes weighs

    @model_validator(mode="after")
    def _consistent(self) -> "DeltaManifest":
        problems = []
        if self.base.kind != "export" or self.base.link != 0:
            problems.append("base: must be an export (kind 'export', link 0)")
        if self.applies_to.link != self.link - 1:
            problems.append(f"applies_to.link: must be link - 1 = {self.link - 1}, got {self.applies_to.link}")
        if (self.applies_to.kind == "export") != (self.link == 1) or (self.link == 1 and self.applies_to != self.base):
            problems.append("applies_to: link 1 applies to the base export itself; later links to a delta")
        if self.compared != COMPARED[self.quantize]:
            problems.append(f"compared: must be {COMPARED[self.quantize]!r} for quantize {self.quantize!r}")
        if set(self.rows) & set(self.state):
            problems.append(f"rows and state both name {sorted(set(self.rows) & set(self.state))[:3]}")
        files = [f.file for r in self.rows.values() for f in (r.ids, r.values)] + [t.data.file for t in
                                                                                     self.state.values()]
        if len(set(files)) != len(files):
            problems.append("a data file is named twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)


@dataclass(frozen=True)
class DeltaHead:
    """A delta's manifest, read and validated, with its identity (the sha256 of the manifest's bytes)."""

    directory: Path
    manifest: DeltaManifest
    identity: str

    @property
    def name(self) -> str:
        return f"{self.directory} (link {self.manifest.link}, step {self.manifest.step})"


@dataclass
class DeltaTensors:
    """A delta's tensors, each file checked: changed rows by buffer, whole tensors by state name."""

    rows: dict[str, tuple[torch.Tensor, torch.Tensor]]  # buffer -> (ids int64 [n], values [n, width])
    state: dict[str, torch.Tensor]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_identity(export_dir: str | Path) -> str:
    """An export's identity: the sha256 of its export.json (which names model.pt2's and the vocabularies' sha256s)."""
    path = Path(export_dir) / "export.json"
    try:
        return sha256_bytes(path.read_bytes())
    except OSError as e:
        raise ExportError(f"{path} cannot be read ({e.strerror or e})") from None


def read_head(directory: str | Path) -> DeltaHead:
    """The delta at ``directory``: its manifest checked to be ours, of our version, and valid."""
    d = Path(directory)
    path = d / DELTA_FILE
    if not d.is_dir():
        raise DeltaError(f"{d} is not a directory (a delta is a directory written by dlrm-export --since)")
    if not path.is_file():
        hint = " (it is a full export: give it as the base, not as --delta)" if (d / "export.json").is_file() else ""
        raise DeltaError(f"{d} is not a dlrm_dist delta: it has no {DELTA_FILE}{hint}")
    try:
        if path.stat().st_size > MAX_MANIFEST:
            raise DeltaError(f"{path} is {path.stat().st_size:,} bytes, more than a delta manifest holds")
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DeltaError(f"{path} is damaged: not readable JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DeltaError(f"{path} is not a dlrm_dist delta manifest (format {found!r}, expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise DeltaError(f"{path} is delta version {data.get('version')!r}; this dlrm_dist reads version {VERSION}")
    try:
        manifest = DeltaManifest.model_validate_json(raw)
    except ValidationError as e:
        raise DeltaError(joined(f"{path} is not a valid delta manifest", messages(e, DeltaManifest))) from None
    return DeltaHead(d, manifest, sha256_bytes(raw))


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _read_file(head: DeltaHead, entry: DataFile, dtype: torch.dtype, shape: list[int], what: str) -> torch.Tensor:
    """One data file as a tensor: inside the directory, of the size dtype x shape needs, of its sha256."""
    need = _numel(shape) * dtype.itemsize
    where = f"{head.directory / entry.file} ({what})"
    if entry.bytes != need:
        raise DeltaError(f"{head.directory / DELTA_FILE}: {what} is recorded as {entry.bytes:,} bytes, its dtype "
                         f"and shape need {need:,}: the manifest is damaged")
    try:
        path = inside(head.directory, entry.file)
        if path.stat().st_size != need:
            raise DeltaError(f"{where} holds {path.stat().st_size:,} bytes, not {need:,}: the file is cut or replaced")
        data = path.read_bytes()
    except UnsafePathError:
        raise DeltaError(f"{where} resolves outside {head.directory}: refused") from None
    except OSError as e:
        raise DeltaError(f"{where} cannot be read ({e.strerror or e}): the delta is incomplete") from None
    if len(data) != need:
        raise DeltaError(f"{where} holds {len(data):,} bytes, not {need:,}: the file changed while read")
    if sha256_bytes(data) != entry.sha256:
        raise DeltaError(f"{where} is damaged: its sha256 is not the one {DELTA_FILE} records")
    tensor = torch.frombuffer(bytearray(data), dtype=dtype) if need else torch.empty(0, dtype=dtype)
    return tensor.reshape(shape)


def _finite(tensor: torch.Tensor, head: DeltaHead, what: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise DeltaError(f"{head.directory}: {what} holds NaN or infinite values: the delta is damaged")


def _changed_rows(head: DeltaHead, buffer: str, entry: ChangedRows) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _read_file(head, entry.ids, torch.int64, [entry.changed], f"{buffer} ({entry.table}) row numbers")
    values = _read_file(head, entry.values, DTYPES[entry.dtype], [entry.changed, entry.width],
                        f"{buffer} ({entry.table}) rows")
    if entry.changed and (int(ids[0]) < 0 or int(ids[-1]) >= entry.rows or not bool((ids[1:] > ids[:-1]).all())):
        raise DeltaError(f"{head.directory / entry.ids.file}: the row numbers of {entry.table} are not strictly "
                         f"increasing within 0..{entry.rows - 1}: the delta is damaged")
    _finite(values, head, f"{entry.table}'s rows")
    return ids, values


def read_tensors(head: DeltaHead) -> DeltaTensors:
    """Every tensor the delta holds, each file checked (size, sha256, row numbers, finite values)."""
    m = head.manifest
    rows = {buffer: _changed_rows(head, buffer, entry) for buffer, entry in sorted(m.rows.items())}
    state = {}
    for name, entry in sorted(m.state.items()):
        state[name] = _read_file(head, entry.data, DTYPES[entry.dtype], entry.shape, name)
        _finite(state[name], head, name)
    return DeltaTensors(rows, state)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's raw bytes (contiguous, native little-endian), as a data file holds them."""
    t = tensor.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def shape_problem(name: str, expected: torch.Tensor, dtype: str, shape: list[int]) -> Optional[str]:
    """Why a delta's tensor does not fit the program's (None: it fits)."""
    have = (DTYPE_NAMES.get(expected.dtype, str(expected.dtype)), list(expected.shape))
    if (dtype, list(shape)) != have:
        return f"{name}: the delta holds {dtype} {list(shape)}, the program {have[0]} {have[1]}"
    return None
