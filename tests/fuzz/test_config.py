"""Generated job configs through config.loader (a TOML file, ``--section.key=value``
overrides, or both) and through dlrm-train's argument parsing, in-process.

Values are drawn from each field's declared type (so a new field is fuzzed too), then
some are mutated: a wrong type, a number out of range, nan/inf, an unknown key or
section, unicode. The property: loading either gives a Config holding exactly the values
given (an independent check: each value compared with what was written) that round-trips
through ``to_dict`` / ``config_from_dict``, or raises ConfigError whose one-line message
starts with the origin and names the mutated ``section.key``; never another exception.
dlrm-train stops before any process group: ``prepare`` is replaced by a sentinel.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from dlrm_dist import train
from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.config.loader import _nested, _sections, config_from_dict, to_dict
from dlrm_dist.config.validation import unwrap
from dlrm_dist.errors import DlrmError
from tests.fuzz import toml_text

SECTIONS = _sections()


def _bounds(typ: Any) -> tuple[Optional[float], Optional[float], bool]:
    """(lowest, highest, lowest excluded) allowed by the field's Annotated constraints."""
    lo = hi = None
    strict_lo = False
    stack = [typ]
    while stack:
        t = stack.pop()
        if typing.get_origin(t) is typing.Annotated:
            for m in t.__metadata__:
                for inner in [m, *getattr(m, "metadata", [])]:
                    if getattr(inner, "ge", None) is not None:
                        lo = inner.ge
                    if getattr(inner, "gt", None) is not None:
                        lo, strict_lo = inner.gt, True
                    if getattr(inner, "le", None) is not None:
                        hi = inner.le
            stack.append(t.__origin__)
        else:
            stack += [a for a in typing.get_args(t) if a is not type(None)]
    return lo, hi, strict_lo


def valid_value(typ: Any) -> st.SearchStrategy:
    """Values the field's declared type accepts (cross-field rules aside)."""
    bare, optional = unwrap(typ)
    lo, hi, strict_lo = _bounds(typ)
    if bare is bool:
        out: st.SearchStrategy = st.booleans()
    elif bare is int:
        out = st.integers(int(lo if lo is not None else -(2**40)), min(int(hi if hi is not None else 2**40), 2**40))
    elif bare is float:
        out = st.floats(lo if lo is not None else -1e6, 1e6, allow_nan=False, exclude_min=strict_lo)
    elif typing.get_origin(bare) is Literal:
        out = st.sampled_from(typing.get_args(bare))
    elif typing.get_origin(bare) is list:
        out = st.lists(st.integers(1, 100), min_size=1, max_size=4)
    elif "partition numbers and ranges" in repr(typ):  # data.partitions: increasing numbers, runs as ranges
        from dlrm_dist.data.partition_list import format_partitions

        out = st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True).map(lambda n: format_partitions(sorted(n)))
    elif "bottom_mlp" in repr(typ) or "layer widths" in repr(typ):
        out = st.lists(st.integers(1, 64), min_size=1, max_size=4).map(lambda w: "-".join(map(str, w)))
    else:  # a path: any text without NUL (and not one a command line reads as "unset")
        out = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1,
                      max_size=8).filter(lambda t: t.strip().lower() not in ("none", "null", ""))
    return st.one_of(st.none(), out) if optional else out


WRONG = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 1.5, "ten", "", "ünï", [], [0], {"x": 1},
                                   True, 2**64]), st.text(max_size=5), st.integers(-(2**65), 2**65))


@st.composite
def configs(draw: Any) -> tuple[dict[str, dict[str, Any]], Optional[tuple[str, str]]]:
    """Some sections' values, and the (section, key) mutated (None: nothing was)."""
    raw: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        # a nested section ([train.early_stop]) is a table, not a value: only its mutations are drawn
        fields = {k: f for k, f in cls.__pydantic_fields__.items() if k not in _nested(cls)}
        keys = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
        values = {k: draw(valid_value(fields[k].rebuild_annotation())) for k in keys}
        if values:
            raw[section] = values
    how = draw(st.sampled_from(["none", "none", "wrong", "wrong", "unknown_key", "unknown_section"]))
    if how == "none":
        return raw, None
    section = draw(st.sampled_from(sorted(SECTIONS)))
    if how == "unknown_section":
        section = draw(st.sampled_from(["modle", "trian", "Train"]))
        raw[section] = {"steps": 1}
        return raw, (section, "")
    if how == "unknown_key":
        key = draw(st.sampled_from(["colour", "step", "seed_", "ünï"]))
        raw.setdefault(section, {})[key] = 1
        return raw, (section, key)
    key = draw(st.sampled_from(sorted(SECTIONS[section].__pydantic_fields__)))
    raw.setdefault(section, {})[key] = draw(WRONG)
    return raw, (section, key)


def _text(value: Any) -> str:
    """A value as a user would type it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _overrides(raw: dict[str, dict[str, Any]]) -> list[str]:
    return [f"--{s}.{k}={_text(v)}" for s, values in raw.items() for k, v in values.items()]


def _expected(value: Any) -> Any:
    return [int(v) for v in value] if isinstance(value, list) else value


def _check_loaded(cfg: Any, raw: dict[str, dict[str, Any]], omitted_none: bool,
                  skip: Optional[tuple[str, str]] = None) -> None:
    """Every value written is the value loaded (``skip``: a mutated override, typed as text)."""
    for section, values in raw.items():
        for key, value in values.items():
            if (value is None and omitted_none) or (section, key) == skip:
                continue  # TOML cannot say None: the key was left out
            got = getattr(getattr(cfg, section), key)
            assert got == _expected(value) and (type(got) is type(value) or value is None
                                                or isinstance(got, float)), (section, key, value, got)
    assert config_from_dict(to_dict(cfg)) == cfg


# The rules across fields: generated values may break them without any mutation.
CROSS_FIELD = ("is required when", "is inside the warmup", "both say where tables go", "applies to data.source = ",
               "both say how long to train", "both say where the run starts", "does not apply to inference_only",
               "needs data.partitions", "is also in data.partitions")


def _check_refused(msg: str, origin: str, mutated: Optional[tuple[str, str]], raw: dict[str, dict[str, Any]]) -> None:
    """One line from the origin, naming the mutated key (unless that value was valid after all
    and only a rule across fields refused the config). A key refused for another data source
    was given, and the source named is the one given (or the default)."""
    assert msg.startswith(f"{origin}: ") and "\n" not in msg, msg
    for section, key, source in re.findall(r"(\w+)\.(\w+) applies to data\.source = \w+ only "
                                           r"\(this job's source is (\w+)\)", msg):
        assert key in raw.get(section, {}) and source == raw.get("data", {}).get("source", "synthetic"), (msg, raw)
    if mutated is not None and not _names(msg, *mutated):
        assert any(c in msg for c in CROSS_FIELD), (mutated, msg)
    elif mutated is None:
        assert any(c in msg for c in CROSS_FIELD), msg


def _names(msg: str, section: str, key: str) -> bool:
    """The message names ``section.key`` (an odd key is quoted: ``train['ünï']``), or the section."""
    if not key:
        return f"[{section}]" in msg or f"section {section!r}" in msg
    return f"{section}.{key}" in msg or f"{section}[{key!r}]" in msg


def _load(args: list[str], origin: str, raw: dict, mutated: Optional[tuple[str, str]], omitted_none: bool,
          skip: Optional[tuple[str, str]] = None) -> None:
    try:
        cfg = load_config(args)
    except ConfigError as e:
        # a cross-field rule (e.g. data.source needs data.data_dir) may refuse an unmutated config
        event("refused")
        _check_refused(str(e), origin, mutated, raw)
        return
    event("loaded")
    _check_loaded(cfg, raw, omitted_none, skip)


@given(configs())
def test_config_from_overrides(case: tuple[dict, Optional[tuple[str, str]]]) -> None:
    raw, mutated = case
    if mutated and not mutated[1]:  # an unknown section on the command line is refused as it is parsed
        with pytest.raises(ConfigError, match=f"unknown section '{mutated[0]}'"):
            load_config(_overrides(raw))
        return
    _load(_overrides(raw), "command line", raw, mutated, omitted_none=False, skip=mutated)


@given(configs())
def test_config_from_a_toml_file(tmp_path_factory: Any, case: tuple[dict, Optional[tuple[str, str]]]) -> None:
    raw, mutated = case
    f = Path(tmp_path_factory.mktemp("job")) / "job.toml"
    f.write_text(toml_text.dumps(raw))
    _load(["--config", str(f)], f"config file {str(f)!r}", raw, mutated, omitted_none=True)


class _Parsed(DlrmError):
    """Raised in place of prepare(): argument parsing is done, no process group was made."""

    exit_code = 99


@given(configs())
def test_dlrm_train_argument_parsing(monkeypatch: Any, capsys: Any, case: tuple[dict, Optional[tuple]]) -> None:
    raw, mutated = case
    if mutated != ("train", "device"):  # the device is another test's: never ask this machine for CUDA
        raw.setdefault("train", {})["device"] = "cpu"
    seen: list[Any] = []

    def stop(cfg: Any, env: Any) -> None:
        seen.append(cfg)
        raise _Parsed("parsed")

    monkeypatch.setattr(train, "prepare", stop)
    monkeypatch.setattr(train, "init_distributed", lambda env: pytest.fail("a process group was started"))
    code = train.main(_overrides(raw))
    err = capsys.readouterr().err
    if code == 99:
        assert len(seen) == 1
        _check_loaded(seen[0], raw, omitted_none=False, skip=mutated)
        return
    assert code == 2 and err.count("\n") == 1, (code, err)
    _check_refused(err.removeprefix("dlrm-train: error: ").rstrip("\n"), "command line", mutated, raw)
