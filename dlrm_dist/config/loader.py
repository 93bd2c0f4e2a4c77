"""Builds a Config from defaults, a TOML file and command-line overrides.

Command line > TOML file > defaults. Overrides are ``--section.key=value`` (or
``--section.key value``); a few familiar spellings are aliases (``--sharding-type``).
Every unknown section, key or badly typed value is an error naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional, Sequence

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.files import read_data
from dlrm_dist.config.schema import Config

# Familiar flag spellings mapped to their section.key.
ALIASES = {
    "sharding-type": "sharding.sharding_type",
    "plan": "sharding.plan",
    "data": "data.source",
    "checkpoint": "train.checkpoint",
    "checkpoint-dir": "train.checkpoint_dir",
    "inference-only": "train.inference_only",
    "data-dir": "data.data_dir",
    "batch-size": "train.global_batch_size",
    "steps": "train.steps",
    "run-dir": "train.run_dir",
}


INLINE_SCHEMA = "features"  # the [features] section: a feature schema written in the job config


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _coerce(path: str, value: Any, typ: Any) -> Any:
    """Turns a TOML or command-line value into the field's declared type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(path, value, next(a for a in args if a is not type(None)))
    if origin is list:
        items = value
        if isinstance(value, str):
            items = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        return [_coerce(f"{path}[{i}]", v, args[0]) for i, v in enumerate(items)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{path}={value!r} is not a boolean (use true or false)")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be a {typ.__name__}")
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} is not a valid {typ.__name__}") from None
    if typ is str:
        return str(value)
    return value


def _apply(raw: dict[str, dict[str, Any]], origin: str) -> Config:
    """Builds the Config, running every section's own checks."""
    sections = _sections()
    built = {}
    for name, cls in sections.items():
        values = raw.get(name, {})
        types = _field_types(cls)
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown} in section [{name}] ({origin}); "
                f"valid keys: {', '.join(sorted(types))}"
            )
        kwargs = {k: _coerce(f"{name}.{k}", v, types[k]) for k, v in values.items()}
        built[name] = cls(**kwargs)
    features = raw.get(INLINE_SCHEMA)
    if features is not None and not isinstance(features, dict):
        raise ConfigError(f"[{INLINE_SCHEMA}] ({origin}) must be a table (a feature schema)")
    return Config(**built, features=features)


def _is_bool(key: str) -> bool:
    section, _, name = key.partition(".")
    cls = _sections().get(section)
    return cls is not None and _field_types(cls).get(name.replace("-", "_")) is bool


def _parse_overrides(args: Sequence[str]) -> tuple[Optional[str], dict[str, dict[str, str]]]:
    config_file: Optional[str] = None
    raw: dict[str, dict[str, str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if _is_bool(ALIASES.get(key, key)) and (i + 1 >= len(args) or args[i + 1].startswith("--")):
                value = "true"  # a bare boolean flag, e.g. --inference-only
            elif i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value")
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
                f"--{key}: overrides look like --section.key=value "
                f"(sections: {', '.join(_sections())}; aliases: {', '.join(ALIASES)})"
            )
        if section not in _sections():
            raise ConfigError(f"unknown section {section!r} in --{key}; sections: {', '.join(_sections())}")
        raw.setdefault(section, {})[name.replace("-", "_")] = value
    return config_file, raw


def read_toml(path: str) -> dict[str, dict[str, Any]]:
    """Reads a config file; every error names the file."""
    data = read_data(path, "config file")
    unknown = sorted(set(data) - set(_sections()) - {INLINE_SCHEMA})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} in {path!r}; sections: {', '.join(_sections())}")
    return data


def load_config(args: Sequence[str] = ()) -> Config:
    """Defaults, then ``--config FILE``, then ``--section.key=value`` overrides."""
    config_file, overrides = _parse_overrides(list(args))
    raw: dict[str, dict[str, Any]] = read_toml(config_file) if config_file else {}
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return _apply(raw, config_file or "command line")


def config_from_dict(data: dict[str, Any], origin: str = "saved config") -> Config:
    """The inverse of ``to_dict``: a Config from plain data (a run directory's or a checkpoint's)."""
    return _apply(data, origin)


def help_text() -> str:
    """Every option with its default and help, for ``--help``."""
    lines = [
        "usage: torchrun --nproc_per_node=N -m dlrm_dist.train [--config FILE] [--section.key=value ...]",
        "",
        f"aliases: {', '.join(f'--{a} = --{t}' for a, t in ALIASES.items())}",
    ]
    defaults = Config()
    for name, cls in _sections().items():
        lines += ["", f"[{name}] {cls.__doc__ or ''}"]
        for f in dataclasses.fields(cls):
            value = getattr(getattr(defaults, name), f.name)
            lines.append(f"  --{name}.{f.name} (default {value!r})")
            lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (for the run directory and for later resumes)."""
    return dataclasses.asdict(config)
