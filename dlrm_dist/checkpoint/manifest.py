"""A checkpoint's manifest, typed: what it holds, which run wrote it, and how to check its files.

``manifest.json`` sits beside the DCP files of every published checkpoint (store.py writes
it last, so its presence means the checkpoint is complete). It names the step, the world
size it was written at, every table's shape, the run's identity (optimizers, plan,
resolved config, whose ``features`` is the fitted feature schema, and that schema's
fingerprint), the size and CRC32C of every other file of the checkpoint (integrity.py),
which every reader verifies before DCP opens a file, and, under early stopping, the best
evaluation so far (``best``: its step, metric and value; store.py never prunes that step's
checkpoint, and dlrm-export exports it unless a step is named).

Version 2 manifests (written before checksums) are still read: their files cannot be
verified, which the reader says in one warning. They hold nothing else a reader relies on
that v3 added (their config carries the schema), and their metadata goes through the same
allow-list reader, so refusing them would only strand runs that are otherwise sound.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dlrm_dist.checkpoint.optim_state import SECTION as OPTIM_STATE_SECTION
from dlrm_dist.errors import EXIT_BAD_STATE, DlrmError
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.fileio import atomic_write_text

FORMAT = "dlrm_dist.checkpoint"
VERSION = 3  # 2: embedding optimizer state in the layout-independent form; 3: file checksums, schema fingerprint
READABLE = (2, VERSION)  # v2: no checksums to verify (see the module docstring)
MANIFEST = "manifest.json"
CONTENTS = {  # the manifest's note on the DCP state dict's sections
    "model": "embedding tables (sharded) and dense weights",
    OPTIM_STATE_SECTION: "embedding optimizer state per table, layout-independent (dlrm_dist/checkpoint/optim_state.py)",
    "optim": "dense (MLP) optimizer state",
    "train": "step (= data position; fixes the LR schedule) and torch RNG state",
}


class CheckpointError(DlrmError):
    """A checkpoint is missing, incomplete, corrupted or from a different model."""

    exit_code = EXIT_BAD_STATE


@dataclass(frozen=True)
class FileSum:
    """One checkpoint file's size and CRC32C (8 hex digits)."""

    size: int
    crc32c: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.size, "crc32c": self.crc32c}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "FileSum":
        if not (isinstance(d, dict) and set(d) == {"bytes", "crc32c"} and type(d["bytes"]) is int
                and d["bytes"] >= 0 and isinstance(d["crc32c"], str) and re.fullmatch(r"[0-9a-f]{8}", d["crc32c"])):
            raise ValueError(f"{where} is not {{'bytes': <int >= 0>, 'crc32c': <8 hex digits>}}: {d!r}")
        return cls(d["bytes"], d["crc32c"])


@dataclass(frozen=True)
class BestMark:
    """The best evaluation so far and how many evaluations have not improved on it since."""

    step: int
    metric: str
    mode: str  # "max" or "min"
    value: float
    stale: int = 0  # evaluations since the best without an improvement
    stopped: bool = False  # the rule said stop (a resumed run does not train on)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "metric": self.metric, "mode": self.mode, "value": self.value,
                "stale": self.stale, "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: Any) -> "BestMark":
        """From a manifest's ``best`` (ValueError/TypeError/KeyError name what is wrong)."""
        if not isinstance(d, dict):
            raise TypeError(f"best is {d!r}, not an object")
        step, stale = d["step"], d.get("stale", 0)
        if type(step) is not int or step < 0 or type(stale) is not int or stale < 0:
            raise ValueError(f"best.step and best.stale must be integers >= 0, got {step!r}, {stale!r}")
        if d["mode"] not in ("max", "min") or not isinstance(d["metric"], str):
            raise ValueError(f"best.mode must be max or min and best.metric a name, got {d['mode']!r}, {d['metric']!r}")
        value = d["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"best.value must be a finite number, got {value!r}")
        return cls(step, d["metric"], d["mode"], float(value), stale, bool(d.get("stopped", False)))


@dataclass(frozen=True)
class RunInfo:
    """What identifies the run that writes (or loads) a checkpoint."""

    embedding_optimizer: str
    dense_optimizer: str
    plan: list[dict[str, Any]] = field(default_factory=list)  # the sharding plan, one row per table (informational)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config: rebuilds the model

    def differences(self, other: "RunInfo") -> list[str]:
        """What a checkpoint of ``other`` cannot give this run (its optimizers must match)."""
        return [f"{k}: checkpoint {getattr(other, k)!r}, this run {getattr(self, k)!r}"
                for k in ("embedding_optimizer", "dense_optimizer") if getattr(self, k) != getattr(other, k)]

    def schema(self, origin: str) -> Optional[FeatureSchema]:
        """The fitted feature schema of the config (``features``), if it has one."""
        features = self.config.get("features") if isinstance(self.config, dict) else None
        if not features:
            return None
        try:
            return FeatureSchema.from_dict(features, f"{origin} features")
        except (SchemaError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{origin}: the stored feature schema is malformed ({e})") from None


@dataclass(frozen=True)
class Manifest:
    """One published checkpoint's manifest."""

    step: int
    world_size: int
    tables: dict[str, tuple[int, int]]  # table -> (rows, dim)
    info: RunInfo
    files: Optional[dict[str, FileSum]] = field(default_factory=dict)  # name -> size, CRC32C; None: v2 (unverifiable)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    best: Optional[BestMark] = None  # early stopping: the best evaluation when this checkpoint was written

    def to_dict(self) -> dict[str, Any]:
        schema = self.info.schema("this run")
        return {"format": FORMAT, "version": VERSION, "step": self.step, "world_size": self.world_size,
                "tables": {t: list(s) for t, s in self.tables.items()}, "contents": CONTENTS, "created": self.created,
                "embedding_optimizer": self.info.embedding_optimizer, "dense_optimizer": self.info.dense_optimizer,
                "plan": self.info.plan, "config": self.info.config,
                "schema_fingerprint": schema.fingerprint() if schema else None,
                "files": {n: s.to_dict() for n, s in sorted((self.files or {}).items())},
                "best": self.best.to_dict() if self.best else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str) -> "Manifest":
        if d.get("format") != FORMAT or d.get("version") not in READABLE:
            raise CheckpointError(f"{origin}: format {d.get('format')!r} v{d.get('version')} is not {FORMAT} "
                                  f"v{' or v'.join(map(str, READABLE))}")
        try:
            manifest = cls(_int(d["step"], "step"), _int(d["world_size"], "world_size"), _tables(d["tables"]),
                           _info(d), _files(d) if d["version"] >= 3 else None, str(d.get("created", "")),
                           None if d.get("best") is None else BestMark.from_dict(d["best"]))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{origin}: the manifest is malformed ({type(e).__name__}: {e})") from None
        manifest._check_fingerprint(d.get("schema_fingerprint"), origin)
        return manifest

    def _check_fingerprint(self, stored: Any, origin: str) -> None:
        """A v3 manifest's fingerprint must be its own schema's (else the manifest was edited or damaged)."""
        schema = self.info.schema(origin)
        if self.files is None or (schema is None and stored is None):
            return
        actual = schema.fingerprint() if schema else None
        if stored != actual:
            raise CheckpointError(f"{origin}: the manifest's schema_fingerprint {stored!r} is not that of its "
                                  f"feature schema ({actual!r}): the manifest was edited or damaged")

    def write(self, directory: Path) -> None:
        # Not atomic_write_json: a schema's clip bounds may be infinite, which JSON spells Infinity.
        atomic_write_text(Path(directory) / MANIFEST, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        """The manifest of checkpoint ``directory``; a CheckpointError says why it cannot be read."""
        path = Path(directory) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: no readable manifest ({e}); not a complete dlrm_dist checkpoint") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} is not a JSON object")
        return cls.from_dict(data, str(path))


def schema_of(manifest: Manifest) -> Optional[FeatureSchema]:
    """The fitted feature schema a checkpoint was trained on (None if its config has none)."""
    return manifest.info.schema(f"checkpoint step {manifest.step}")


def schema_changes(saved: FeatureSchema, job: FeatureSchema) -> list[str]:
    """What differs between a checkpoint's fitted schema and a job's, field by field (``old -> new``).

    Everything the model's inputs depend on counts, fitted statistics included (a dense
    feature's scale, a vocabulary's size); the schema's display name does not.
    """
    if saved.fingerprint() == job.fingerprint():
        return []
    a, b = saved.to_dict(), job.to_dict()
    out: list[str] = []
    for kind in ("dense", "sparse"):
        old, new = {e["name"]: e for e in a[kind]}, {e["name"]: e for e in b[kind]}
        out += [f"{kind} feature {n!r}: only in the checkpoint" for n in old if n not in new]
        out += [f"{kind} feature {n!r}: only in this run's data" for n in new if n not in old]
        for n in (n for n in old if n in new):
            out += _field_changes(f"{kind} feature {n!r} ", old[n], new[n])
        if set(old) == set(new) and list(old) != list(new):
            out.append(f"{kind} feature order: {list(old)} -> {list(new)}")
    for part in ("label", "split", "input"):
        out += _field_changes(f"{part}.", a[part], b[part])
    rows_a, rows_b = dict(map(tuple, a["vocab_rows"])), dict(map(tuple, b["vocab_rows"]))
    out += [f"vocabulary rows of table {t!r}: {rows_a.get(t)} -> {rows_b.get(t)}"
            for t in sorted(set(rows_a) | set(rows_b), key=str) if rows_a.get(t) != rows_b.get(t)]
    return out


def _field_changes(prefix: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{prefix}{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def _int(x: Any, what: str) -> int:
    if type(x) is not int or x < 0:
        raise ValueError(f"{what} is {x!r}, not an integer >= 0")
    return x


def _tables(d: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(d, dict):
        raise TypeError(f"tables is a {type(d).__name__}, not an object")
    out = {}
    for t, s in d.items():
        if not (isinstance(s, list) and len(s) == 2):
            raise ValueError(f"table {t!r} has shape {s!r}, not [rows, dim]")
        out[t] = (_int(s[0], f"table {t!r} rows"), _int(s[1], f"table {t!r} dim"))
    return out


def _info(d: dict[str, Any]) -> RunInfo:
    names = d["embedding_optimizer"], d["dense_optimizer"]
    plan, config = d.get("plan", []), d.get("config", {})
    if not all(isinstance(n, str) for n in names) or not isinstance(plan, list) or not isinstance(config, dict):
        raise TypeError("embedding_optimizer/dense_optimizer must be names, plan a list, config an object")
    return RunInfo(names[0], names[1], plan, config)


def _files(d: dict[str, Any]) -> dict[str, FileSum]:
    files = d["files"]
    if not isinstance(files, dict):
        raise TypeError(f"files is {files!r}, not an object naming each file's bytes and crc32c")
    bad = [n for n in files if not n or "/" in n or n in (".", "..", MANIFEST)]
    if bad:
        raise ValueError(f"files names {bad!r}, which are not data files of the checkpoint")
    return {n: FileSum.from_dict(s, f"files[{n!r}]") for n, s in files.items()}
