"""Generated feature schemas through the real reader: valid ones built by a strategy, then
mutated (a wrong type, a number out of range, nan/inf, an unknown or missing key, a bad
name, unicode), read from a dict and from TOML/JSON files.

The property: each either reads into a schema that round-trips (``to_dict`` ->
``from_dict`` equal) and passes an independent re-check of its invariants, or raises
SchemaError whose one-line message starts with the origin and names the mutated entry;
never another exception.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from hypothesis import event, given
from hypothesis import strategies as st

from dlrm_dist.features import SchemaError, load_schema
from dlrm_dist.features.schema import FeatureSchema, from_dict
from tests.fuzz import toml_text

TABLE = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True)
CHAINS = [[], ["log1p"], ["clip"], ["clip", "log1p"], ["standardize"], ["log1p", "minmax"], ["none"]]
FINITE = st.floats(-1e6, 1e6, allow_nan=False)
SPLITS = [[0.8, 0.1, 0.1], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]
# a categorical label's values: no surrounding whitespace (or control characters, which Python and
# the schema's regex disagree about as whitespace); ">50K", "<=50K.", "ja", "1"
LABEL_TEXT = st.text(st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1, max_size=6)


@st.composite
def dense(draw: Any, name: str) -> dict[str, Any]:
    chain = draw(st.sampled_from(CHAINS))
    d: dict[str, Any] = {"name": name, "transform": chain[0] if len(chain) == 1 and draw(st.booleans()) else chain}
    if "clip" in chain:
        lo = draw(st.one_of(FINITE, st.just(-math.inf)))
        d["clip"] = [lo, draw(st.one_of(st.floats(max(lo, -1e6), 1e7, allow_nan=False), st.just(math.inf)))]
    if draw(st.booleans()):
        d["fill"] = draw(FINITE)
    if draw(st.booleans()):
        d["column"] = draw(st.text(max_size=8))
    return d


@st.composite
def sparse(draw: Any, name: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["identity", "vocab", "hash", "managed"]))
    s: dict[str, Any] = {"name": name, "kind": kind}
    if kind == "vocab":
        s["min_count"] = draw(st.integers(1, 10))
        s["oov_buckets"] = draw(st.integers(1, 4))
    else:
        s["buckets"] = draw(st.integers(2 if kind == "managed" else 1, 10**9))
    if kind in ("hash", "managed") and draw(st.booleans()):
        s["hash"] = draw(st.sampled_from(["fnv1a", "int_modulo"]))
    if kind == "managed":
        s["eviction"] = draw(st.sampled_from(["lfu", "lru"]))
        if draw(st.booleans()):
            s["eviction_interval"] = draw(st.integers(1, 1000))
        if s["eviction"] == "lru" and draw(st.booleans()):
            s["decay_exponent"] = draw(st.floats(0.01, 8.0))
    for key, strategy in (("dim", st.integers(1, 256)), ("prefix", st.integers(1, 9)),
                          ("delimiter", st.sampled_from(["|", ";", "::"])), ("pooling", st.sampled_from(["sum", "mean"])),
                          ("table", TABLE)):
        if draw(st.booleans()):
            s[key] = draw(strategy)
    return s


@st.composite
def label(draw: Any) -> Any:
    """``label = "col"``, ``{ column, threshold }`` or ``{ column, positive, negative }`` (disjoint)."""
    column = draw(st.text(min_size=1, max_size=6))
    form = draw(st.sampled_from(["text", "table", "threshold", "positive", "both"]))
    if form == "text":
        return column
    out: dict[str, Any] = {"column": column}
    if form == "threshold":
        out["threshold"] = draw(FINITE)
    if form in ("positive", "both"):
        values = draw(st.lists(LABEL_TEXT, min_size=1, max_size=6, unique=True))
        cut = draw(st.integers(1, len(values)))
        out["positive"] = values[:cut]
        if form == "both" and cut < len(values):
            out["negative"] = values[cut:]
    return out


@st.composite
def schemas(draw: Any) -> dict[str, Any]:
    names = draw(st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True), min_size=1, max_size=7,
                          unique=True))
    n_dense = draw(st.integers(0, len(names) - 1))
    sp = [draw(sparse(n)) for n in names[n_dense:]]
    for s in sp:  # a dotted feature name needs a table name of its own (TorchRec's module names)
        if "." in s["name"] and "table" not in s:
            s["table"] = s["name"].replace(".", "_")
    used = [s.get("table", "t_" + s["name"]) for s in sp]
    if len(set(used)) < len(used):  # a table named twice by chance: the features must then agree
        for s in sp:
            s.pop("table", None)
            if "." in s["name"]:
                s["table"] = "t_" + s["name"].replace(".", "_") + "_" + str(names.index(s["name"]))
    if len(sp) > 1 and sp[0]["kind"] != "managed" and draw(st.booleans()):  # a shared table (never a managed one):
        # a copy of a feature under another name
        sp[-1] = {**sp[0], "name": sp[-1]["name"], "table": sp[0].get("table", "t_" + sp[0]["name"].replace(".", "_"))}
        sp[0]["table"] = sp[-1]["table"]
    data: dict[str, Any] = {"name": draw(TABLE), "dense": [draw(dense(n)) for n in names[:n_dense]], "sparse": sp,
                            "label": draw(label())}
    split: dict[str, Any] = {"fractions": draw(st.sampled_from(SPLITS)), "seed": draw(st.integers(0, 2**63 - 1))}
    if draw(st.booleans()):
        split.update(by="time", column="ts")
    data["split"] = split
    inp: dict[str, Any] = {"format": draw(st.sampled_from(["csv", "tsv", "parquet"]))}
    if draw(st.booleans()):
        inp.update(header=False, columns=draw(st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True)))
    if draw(st.booleans()):
        inp["delimiter"] = draw(st.sampled_from([",", "\t", ";", "é"]))
    data["input"] = inp
    return data


BAD_NAMES = ["../../../escaped_feature", ".hidden", "a/b", "", "naïve", "x\x00y", "a" * 200, "C:\\x"]
WRONG = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                  st.sampled_from([math.nan, math.inf, -math.inf, 1.9, -1, 0, 2.7, "4", "0,10", "ab"]),
                  st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=4), st.just({"x": 1}))


def _entries(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every (container path, key) of the generated schema a mutation can hit."""
    out: list[tuple[Any, ...]] = [(k,) for k in data]
    for section in ("dense", "sparse"):
        out += [(section, i, k) for i, entry in enumerate(data.get(section, [])) for k in entry]
    out += [(section, k) for section in ("label", "split", "input") if isinstance(data.get(section), dict)
            for k in data[section]]
    lab = data.get("label")
    if isinstance(lab, dict):  # one listed value of a categorical label
        out += [("label", k, i) for k in ("positive", "negative") if isinstance(lab.get(k), list)
                for i in range(len(lab[k]))]
    return out


def _container(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@st.composite
def mutated(draw: Any) -> tuple[dict[str, Any], Optional[tuple[Any, ...]]]:
    """A schema and the path of what was changed (None: unchanged)."""
    data = json.loads(json.dumps(draw(schemas())))
    how = draw(st.sampled_from(["none", "wrong", "wrong", "delete", "extra", "name", "unicode"]))
    if how == "none":
        return data, None
    path = draw(st.sampled_from(_entries(data)))
    box, key = _container(data, path[:-1]), path[-1]
    if how == "wrong":
        box[key] = draw(WRONG)
    elif how == "delete":
        del box[key]
    elif how == "extra" and isinstance(box, list):  # a list has no keys: one more item instead
        box.append(draw(WRONG))
        path = path[:-1] + (len(box) - 1,)
    elif how == "extra":  # an unknown key beside the chosen one
        path = path[:-1] + (draw(st.sampled_from(["colour", "buckets_", "Name", "ünïcode", "seed2"])),)
        box[path[-1]] = 1
    elif how == "name":
        target = draw(st.sampled_from([p for p in _entries(data) if p[-1] in ("name", "table")] or [("name",)]))
        path = target
        _container(data, path[:-1])[path[-1]] = draw(st.sampled_from(BAD_NAMES))
    else:
        box[key] = draw(st.text(min_size=1, max_size=6))
    return data, path


# -- the property ------------------------------------------------------------------------------
_IDENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_TABLE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _recheck(s: FeatureSchema) -> None:
    """Invariants of an accepted schema, checked without the model's code."""
    assert from_dict(s.to_dict()) == s
    assert _IDENT.fullmatch(s.name) and all(_IDENT.fullmatch(n) for n in s.dense_names + s.sparse_names)
    assert all(_TABLE.fullmatch(t) for t in s.table_names) and s.sparse
    assert len(set(s.dense_names + s.sparse_names)) == len(s.dense_names) + len(s.sparse_names)
    f = s.split.fractions
    assert len(f) == 3 and all(math.isfinite(x) and x >= 0 for x in f) and abs(sum(f) - 1) <= 1e-6 and f[0] > 0
    assert s.label.threshold is None or math.isfinite(s.label.threshold)
    lab = s.label
    if lab.categorical:
        values = list(lab.positive) + list(lab.negative or ())
        assert lab.threshold is None and lab.positive and all(type(v) is str and v and v == v.strip() for v in values)
        assert not set(lab.positive) & set(lab.negative or ()) and (lab.negative is None or lab.negative)
    else:
        assert lab.negative is None
    for d in s.dense:
        assert math.isfinite(d.fill) and (d.clip is None or (d.clip[0] <= d.clip[1] and "clip" in d.transform))
    for x in s.sparse:
        assert x.kind == "vocab" or (type(x.buckets) is int and x.buckets >= 1)
        assert type(x.min_count) is int and x.min_count >= 1 and type(x.oov_buckets) is int and x.oov_buckets >= 1
        assert x.eviction in ("lfu", "lru") and type(x.eviction_interval) is int and x.eviction_interval >= 1
        assert math.isfinite(x.decay_exponent) and x.decay_exponent > 0 and (x.eviction == "lru" or x.decay_exponent == 1)
        assert x.kind != "managed" or (x.buckets >= 2 and len(s.features_of(x.table)) == 1)
        assert x.kind == "managed" or (x.eviction, x.eviction_interval, x.decay_exponent) == ("lfu", 1, 1.0)
    for t in s.table_names:
        fs = s.features_of(t)
        assert len({(f.kind, f.buckets, f.pooling, f.dim) for f in fs}) == 1


def _label(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check(read: Any, origin: str, data: dict[str, Any], path: Optional[tuple[Any, ...]]) -> None:
    try:
        schema = read()
    except SchemaError as e:
        event("refused")
        msg = str(e)
        assert msg.startswith(f"{origin}: ") and "\n" not in msg, msg
        if path is not None:
            entry = _label(path[:2] if path[0] in ("dense", "sparse") else path[:1])
            name = _container(data, path[:2]).get("name") if path[0] in ("dense", "sparse") and len(path) > 2 else None
            shared = "is shared by features" in msg or "is used twice" in msg or "a managed table holds" in msg
            assert entry in msg or (isinstance(name, str) and name in msg) or shared, (path, msg)
        else:
            raise AssertionError(f"an unchanged generated schema was refused: {msg}")
        return
    event("read")
    _recheck(schema)


@given(mutated())
def test_schema_from_a_dict(case: tuple[dict[str, Any], Optional[tuple[Any, ...]]]) -> None:
    data, path = case
    _check(lambda: from_dict(data, "fuzz"), "fuzz", data, path)


@given(mutated(), st.sampled_from(["toml", "json", "toml-bom"]))
def test_schema_from_a_file(tmp_path_factory: Any, case: tuple[dict[str, Any], Optional[tuple]], kind: str) -> None:
    data, path = case
    directory = tmp_path_factory.mktemp("schema")
    f = Path(directory) / ("s.json" if kind == "json" else "s.toml")
    text = json.dumps(data) if kind == "json" else toml_text.dumps(data)
    f.write_bytes((b"\xef\xbb\xbf" if kind == "toml-bom" else b"") + text.encode())
    # TOML cannot say None: a key mutated to None is simply absent there (as if deleted)
    _check(lambda: load_schema(f), f"schema file {str(f)!r}", data, path)


@given(schemas(), st.integers(0, 10**6), st.binary(min_size=1, max_size=3))
def test_damaged_schema_bytes(tmp_path_factory: Any, data: dict[str, Any], at: int, junk: bytes) -> None:
    """Bytes overwritten anywhere in a schema file: read, or refused naming the file."""
    raw = bytearray(toml_text.dumps(data).encode())
    i = at % len(raw)
    raw[i:i + len(junk)] = junk
    f = Path(tmp_path_factory.mktemp("schema")) / "s.toml"
    f.write_bytes(bytes(raw))
    try:
        schema = load_schema(f)
    except SchemaError as e:
        assert str(e).startswith(f"schema file {str(f)!r}") and "\n" not in str(e), str(e)
        return
    _recheck(schema)
