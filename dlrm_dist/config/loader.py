"""Builds a Config from defaults, a TOML file and command-line overrides.

Command line > TOML file > defaults. Overrides are ``--section.key=value`` (or
``--section.key value``); a few familiar spellings are aliases (``--sharding-type``).

A TOML file has real types, so its values are validated as they are (strict: ``steps =
"10"`` or ``steps = 10.5`` is an error). An override is text: it is first read as the
field's declared type (``--train.steps=10`` -> 10, ``--multi_hot.sizes=3,2`` -> [3, 2],
``none`` -> unset; text that does not read as that type is passed on as it is), then
validated by the same strict rules. Every problem of every section, the inline
``[features]`` schema included, is reported in one ConfigError.

The loader knows which keys were given, so it refuses by name a key that moved (``MOVED``:
``data.zipf_alpha`` -> ``synthetic.zipf_alpha``, ``model.table_sizes`` -> a schema parameter)
and a setting that does not apply to the job's data source (``APPLIES_TO``: ``[synthetic]``
with a columnar source, ``data.data_dir`` with a synthetic one), which would otherwise be
ignored without a word. A saved config (``to_dict``) holds only what applies to its source.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Optional, Sequence

from pydantic import ValidationError

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.files import read_data
from dlrm_dist.config.sections import APPLIES_TO, GONE_SOURCES, INSTEAD, MOVED, Config
from dlrm_dist.config.validation import joined, messages, unwrap

# Familiar flag spellings mapped to their section.key.
ALIASES = {
    "sharding-type": "sharding.sharding_type",
    "plan": "sharding.plan",
    "data": "data.source",
    "checkpoint": "train.checkpoint",
    "checkpoint-dir": "train.checkpoint_dir",
    "warm-start": "train.warm_start",
    "inference-only": "train.inference_only",
    "data-dir": "data.data_dir",
    "batch-size": "train.global_batch_size",
    "steps": "train.steps",
    "run-dir": "train.run_dir",
}


INLINE_SCHEMA = "features"  # the [features] section: a feature schema written in the job config
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_UNSET = ("none", "null", "")


@functools.cache
def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def _nested(cls: Any) -> dict[str, type]:
    """The fields of section ``cls`` that are sections themselves (``[train.early_stop]``), by name."""
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))}


def _field_type(section: str, key: str) -> Any:
    """The declared type of ``section.key`` (``train.early_stop.metric`` too; None for an unknown one)."""
    cls: Any = _sections().get(section)
    *path, key = key.split(".")
    for part in path:
        cls = _nested(cls).get(part) if cls is not None else None
    fields = getattr(cls, "__pydantic_fields__", {})
    return fields[key].rebuild_annotation() if key in fields else None


def read_override(text: str, typ: Any) -> Any:
    """A command-line value read as ``typ`` (lax: text only); text that does not read stays text."""
    bare, optional = unwrap(typ)
    if optional and text.strip().lower() in _UNSET:
        return None
    if bare is bool:
        low = text.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else text
    if bare is int:
        try:
            return int(text.strip())
        except ValueError:
            return text
    if bare is float:
        try:
            return float(text.strip())  # nan and inf read, and the strict check then names them
        except ValueError:
            return text
    if typing.get_origin(bare) is list:
        (item,) = typing.get_args(bare)
        parts = [v for v in text.strip().removeprefix("[").removesuffix("]").split(",") if v.strip()]
        return [read_override(v, item) for v in parts]
    return text  # str, Literal: the text itself


def _section_problems(name: str, cls: type, values: Any) -> tuple[Any, list[str]]:
    if not isinstance(values, dict):
        return None, [f"{name}: must be a table (a [{name}] section), got {type(values).__name__}"]
    # A nested section is built first (strict pydantic takes only an instance for it), its
    # problems named under "name.sub."; the rest of the section is still checked.
    found: list[str] = []
    values = dict(values)
    for sub, sub_cls in _nested(cls).items():
        if sub in values:
            values[sub], lines = _section_problems(f"{name}.{sub}", sub_cls, values[sub])
            if lines:
                del values[sub]
                found += lines
    try:
        built = cls(**values)
        return (None, found) if found else (built, [])
    except ValidationError as e:
        return None, found + messages(e, cls, tuple(name.split(".")))
    except TypeError as e:  # a key that is not a keyword (only possible from JSON, e.g. "")
        return None, found + [f"{name}: {e}"]


def _features_problems(features: Any) -> list[str]:
    if features is None:
        return []
    if not isinstance(features, dict):
        return [f"{INLINE_SCHEMA}: must be a table (a feature schema), got {type(features).__name__}"]
    # imported here: the schema's package imports config (its errors derive from ConfigError)
    from dlrm_dist.features.model import schema_problems

    return schema_problems(features, (INLINE_SCHEMA,))


def _moved(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """``raw`` without the keys that moved, a problem naming where each went, and whether the
    source is one that still exists."""
    found, out = [], dict(raw)
    for where, to in MOVED.items():
        section, _, key = where.partition(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
            found.append(f"{where} moved to {to}")
    source = out["data"].get("source") if isinstance(out.get("data"), dict) else None
    if isinstance(source, str) and source in GONE_SOURCES:
        out["data"] = {k: v for k, v in out["data"].items() if k != "source"}
        found.append(f"data.source: {source!r} is no longer a source: {GONE_SOURCES[source]}")
        return out, found, False
    return out, found, True


def _given(raw: dict[str, Any]) -> list[str]:
    """Every ``section.key`` written in ``raw`` (a file's, the command line's, or both)."""
    return [f"{s}.{k}" for s, values in raw.items() if isinstance(values, dict) for k in values]


def inapplicable(source: str, keys: list[str]) -> list[str]:
    """A problem for each of ``keys`` (``section.key``) that does not apply to data.source = ``source``."""
    found = []
    for key in keys:
        section = key.partition(".")[0]
        sources = APPLIES_TO.get(key) or APPLIES_TO.get(section)
        if sources and source not in sources:
            only = " or ".join(sources)
            instead = INSTEAD.get(key) or INSTEAD.get(section)
            found.append(f"{key} applies to data.source = {only} only (this job's source is {source})"
                         + (f"; {instead}" if instead else ""))
    return found


def _apply(raw: dict[str, Any], origin: str) -> Config:
    """Builds the Config; every problem of every section (and of [features]) in one ConfigError."""
    sections = _sections()
    raw, found, source_exists = _moved(raw)
    found += [f"[{name}]: unknown section; sections: {', '.join(sections)}, {INLINE_SCHEMA}"
              for name in raw if name not in sections and name != INLINE_SCHEMA]
    built = {}
    for name, cls in sections.items():
        built[name], lines = _section_problems(name, cls, raw.get(name, {}))
        found += lines
    found += _features_problems(raw.get(INLINE_SCHEMA))
    if built["data"] is not None and source_exists:
        found += inapplicable(built["data"].source, _given(raw))
    if found:
        raise ConfigError(joined(origin, found))
    return Config(**built, features=raw.get(INLINE_SCHEMA))


def _is_bool(key: str) -> bool:
    section, _, name = key.partition(".")
    return unwrap(_field_type(section, name.replace("-", "_")))[0] is bool


def _parse_overrides(args: Sequence[str]) -> tuple[Optional[str], dict[str, dict[str, Any]]]:
    """``--config FILE`` and the overrides, each read as its field's type."""
    config_file: Optional[str] = None
    raw: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {arg!r}; overrides look like --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if _is_bool(ALIASES.get(key, key)) and (i + 1 >= len(args) or args[i + 1].startswith("--")):
                value = "true"  # a bare boolean flag, e.g. --inference-only
            elif i + 1 >= len(args):
                raise ConfigError(f"command line: --{key} needs a value")
            else:
                value, i = args[i + 1], i + 1
        i += 1
        if key == "config":
            config_file = value
            continue
        key = ALIASES.get(key, key)
        section, dot, name = key.partition(".")
        if not dot:
            raise ConfigError(
                f"command line: --{key}: overrides look like --section.key=value "
                f"(sections: {', '.join(_sections())}; aliases: {', '.join(ALIASES)})"
            )
        if section not in _sections():
            raise ConfigError(f"command line: --{key}: unknown section {section!r}; sections: {', '.join(_sections())}")
        name = name.replace("-", "_")
        *path, leaf = name.split(".")  # --train.early_stop.patience=2: into [train.early_stop]
        table = raw.setdefault(section, {})
        for part in path:
            table = table.setdefault(part, {}) if isinstance(table.get(part, {}), dict) else {}
        table[leaf] = read_override(value, _field_type(section, name))
    return config_file, raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; a nested table (``[train.early_stop]``) is merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_toml(path: str) -> dict[str, Any]:
    """Reads a config file (its sections are checked by ``_apply``); a file error names the file."""
    return read_data(path, "config file")


def load_config(args: Sequence[str] = ()) -> Config:
    """Defaults, then ``--config FILE``, then ``--section.key=value`` overrides."""
    config_file, overrides = _parse_overrides(list(args))
    raw: dict[str, Any] = read_toml(config_file) if config_file else {}
    for section, values in overrides.items():
        if not isinstance(raw.get(section, {}), dict):
            continue  # the file's section is not a table: _apply names it
        raw[section] = _merge(raw.get(section, {}), values)
    if config_file:
        origin = f"config file {config_file!r}" + (" with command-line overrides" if overrides else "")
    else:
        origin = "command line"
    return _apply(raw, origin)


def config_from_dict(data: dict[str, Any], origin: str = "saved config") -> Config:
    """The inverse of ``to_dict``: a Config from plain data (a run directory's or a checkpoint's)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: must be a table of sections, got {type(data).__name__}")
    return _apply(upgrade_saved(data), origin)


_OLD_SYNTHETIC = ("zipf_alpha", "pooling_factor", "variable_pooling", "teacher_scale", "eval_batches")
# What an old writer wrote for every job whatever its source: (section, key, the value that did nothing).
_OLD_INERT = (("model", "table_sizes", None), ("data", "max_ind_range", 0), ("data", "multi_hot_sizes", None))


def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A config saved before [synthetic] and [multi_hot] existed, in today's layout.

    The old writer wrote every key for every source, so the keys that did nothing for the
    job's source (and the moved ones at the values that did nothing) are dropped and the
    synthetic knobs move to [synthetic]. In a resolved config (checkpoints, exports: its
    ``features`` hold the schema the sizes made) table sizes and max_ind_range are dropped,
    multi-hot sizes move to [multi_hot] and a Criteo job's source becomes columnar; elsewhere a
    value that did something stays, to be refused by name with where it went.
    """
    old, model = data.get("data"), data.get("model")
    if not isinstance(old, dict) or not isinstance(model, dict) or "zipf_alpha" not in old or "synthetic" in data:
        return data  # today's layout (or damaged: _apply names what is wrong)
    new, model = dict(old), dict(model)
    resolved = bool(data.get("features"))  # a resolved config: its schema already holds the table sizes
    for section, key, inert in _OLD_INERT:
        table = model if section == "model" else new
        if key in table and (table[key] == inert or (resolved and key != "multi_hot_sizes")):
            del table[key]
    moved = {k: new.pop(k) for k in _OLD_SYNTHETIC if k in new}
    out = {**data, "model": model, "data": new}
    if resolved and new.get("source") == "criteo":  # its days were read by the loader the columnar one replaced
        new["source"] = "columnar"
    if resolved and new.get("multi_hot_sizes") is not None:
        out["multi_hot"] = {"sizes": new.pop("multi_hot_sizes")}
    if new.get("source") == "synthetic":
        out["synthetic"] = moved
        for key in ("data_dir", "eval_split", "shuffle"):
            new.pop(key, None)
    return out


def help_text() -> str:
    """Every option with its default and help, for ``--help``."""
    lines = [
        "usage: torchrun --nproc_per_node=N -m dlrm_dist.train [--config FILE] [--section.key=value ...]",
        "",
        f"aliases: {', '.join(f'--{a} = --{t}' for a, t in ALIASES.items())}",
    ]
    defaults = Config()
    for name, cls in _sections().items():
        lines += _section_help(name, cls, getattr(defaults, name))
    return "\n".join(lines)


def _section_help(name: str, cls: type, defaults: Any) -> list[str]:
    lines = ["", f"[{name}] {cls.__doc__ or ''}"]
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name not in nested:
            lines.append(f"  --{name}.{f.name} (default {getattr(defaults, f.name)!r})")
            lines.append(f"      {f.metadata.get('help', '')}")
    for sub, sub_cls in nested.items():  # after the section's own keys, as TOML writes a sub-table
        lines += _section_help(f"{name}.{sub}", sub_cls, getattr(defaults, sub))
    return lines


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (for the run directory and for later resumes): only the sections
    and keys that apply to its data source, so that it loads back (as a file, too) as it is."""
    out = dataclasses.asdict(config)
    for where, sources in APPLIES_TO.items():
        if config.data.source not in sources:
            section, _, key = where.partition(".")
            if key:
                out[section].pop(key, None)
            else:
                out.pop(section, None)
    return out
