"""Feature schemas: reading, every kind of bad entry named, derived tables, the model they make."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.features import SchemaError, criteo_schema, demo_schema, load_schema
from dlrm_dist.features.schema import from_dict
from dlrm_dist.model.spec import resolve_model
from dlrm_dist.training.build import validate_job

GENRES = {"name": "genres", "kind": "vocab", "delimiter": "|", "pooling": "mean", "table": "genre", "dim": 8}
BASE = {
    "dense": [{"name": "age", "transform": "standardize"}, {"name": "count", "transform": ["clip", "log1p"],
                                                            "clip": [0, 1e6]}],
    "sparse": [{"name": "user", "kind": "identity", "buckets": 100, "dim": 16},
               GENRES, {**GENRES, "name": "genre_top", "delimiter": None, "pooling": "mean"}],
    "label": {"column": "rating", "threshold": 4},
}


def test_tables_are_derived_with_shared_features_and_dims() -> None:
    s = from_dict(BASE)
    assert s.num_dense == 2 and s.sparse_names == ["user", "genres", "genre_top"]
    assert s.table_names == ["t_user", "genre"] and s.needs_preprocessing
    fitted = s.with_fitted({"genre": 21}, {"age": (30.0, 10.0)})
    tables = {t.name: t for t in fitted.tables(default_dim=4)}
    assert tables["genre"].features == ("genres", "genre_top") and tables["genre"].rows == 21
    assert tables["genre"].dim == 8 and tables["t_user"].rows == 100 and tables["genre"].pooling == "mean"
    assert from_dict(fitted.to_dict()) == fitted and not fitted.needs_preprocessing
    assert fitted.without_fitted() == s


def test_builtin_criteo_shape_lives_in_one_place() -> None:
    c = criteo_schema()
    assert c.num_dense == 13 and len(c.sparse) == 26 and c.sparse[0].name == "cat_0"
    assert c.dense[0].transform == ("clip", "log1p") and c.input.columns[0] == "label"
    assert [t.rows for t in demo_schema([7, 9]).tables(16)] == [7, 9]
    assert load_schema("demo") == demo_schema()


def _bad(**changes) -> dict:
    d = {**BASE, **changes}
    return d


@pytest.mark.parametrize("data, words", [
    (_bad(sparse=[{"name": "u", "kind": "bucket", "buckets": 3}]), ["sparse feature 'u'", "bucket", "identity, vocab, hash"]),
    (_bad(sparse=[{"name": "u", "kind": "identity"}]), ["'u'", "needs buckets"]),
    (_bad(sparse=[{"name": "u", "kind": "vocab", "buckets": 5}]), ["'u'", "vocab", "remove buckets"]),
    (_bad(sparse=[GENRES, {**GENRES, "name": "g2", "dim": 16}]), ["table 'genre'", "disagree on dim", "genres=8", "g2=16"]),
    (_bad(sparse=[{"name": "u", "kind": "hash", "buckets": 9, "pooling": "max"}]), ["sparse[0].pooling: must be one of sum, mean, got 'max'", "sparse feature 'u'"]),
    (_bad(sparse=[{"name": "u", "kind": "hash", "buckets": 9, "colour": 1}]), ["sparse[0]", "unknown key", "colour"]),
    (_bad(sparse=[]), ["at least one sparse feature"]),
    (_bad(dense=[{"name": "x", "transform": "sqrt"}]), ["dense feature 'x'", "'sqrt'", "log1p"]),
    (_bad(dense=[{"name": "x", "transform": ["standardize", "log1p"]}]), ["'x'", "must be the last"]),
    (_bad(dense=[{"name": "x", "transform": "clip"}]), ["'x'", "clip = [lo, hi]"]),
    (_bad(dense=[{"name": "user"}]), ["used twice", "user"]),
    (_bad(split={"by": "time"}), ["split.column: is required when by = \"time\""]),
    (_bad(split={"fractions": [0.5, 0.1]}), ["split.fractions", "summing to 1"]),
    (_bad(input={"header": False}), ["input.columns: is required when header = false"]),
])
def test_bad_schema_entries_are_named(data: dict, words: list[str]) -> None:
    with pytest.raises(SchemaError) as e:
        from_dict(data, "my.toml")
    assert str(e.value).startswith("my.toml")
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def _spec(schema_dict: dict, *args: str):
    cfg = load_config(list(args))
    return resolve_model(cfg.model, from_dict(schema_dict).with_fitted({"genre": 21}, {"age": (0.0, 1.0)}))


def test_dot_needs_one_dim_cat_takes_mixed() -> None:
    with pytest.raises(ConfigError, match="dot needs one embedding dim.*t_user=16, genre=8"):
        _spec(BASE)
    spec = _spec(BASE, "--model.interaction=cat")
    assert spec.bottom == (2, 512, 256, 64, 16) and spec.emb_dims == [16, 8, 8]
    preset = _spec(BASE, "--model.arch=embedding_mlp", "--model.residual_units=2")
    assert preset.interaction == "cat" and preset.bottom == (2,) and preset.residual_units == 2


def test_bottom_mlp_must_match_the_schema_dense_count() -> None:
    with pytest.raises(ConfigError, match="starts with 13.*2 dense feature"):
        _spec(BASE, "--model.interaction=cat", "--model.bottom_mlp=13-8")
    no_dense = {**BASE, "dense": []}
    assert _spec(no_dense, "--model.interaction=cat").bottom == ()
    with pytest.raises(ConfigError, match="no dense features"):
        _spec(no_dense, "--model.interaction=cat", "--model.bottom_mlp=2-8")


def test_vocab_schema_needs_preprocessing_before_training() -> None:
    cfg = load_config(["--model.interaction=cat"])
    cfg = type(cfg)(**{**cfg.__dict__, "features": BASE})
    with pytest.raises(SchemaError, match="table 'genre'.*dlrm-data preprocess"):
        validate_job(cfg, world_size=1)


def test_inline_features_section_and_schema_file(tmp_path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[model]\ninteraction = "cat"\n\n[[features.sparse]]\nname = "u"\nkind = "hash"\nbuckets = 50\n'
                   '\n[[features.dense]]\nname = "x"\n')
    cfg, schema, spec = validate_job(load_config(["--config", str(job)]), world_size=2)
    assert schema.sparse_names == ["u"] and spec.bottom == (1, 512, 256, 64, 16)
    with pytest.raises(ConfigError, match="both give the schema"):
        validate_job(load_config(["--config", str(job), "--data.schema=demo"]), world_size=2)
    with pytest.raises(SchemaError, match="neither a file nor a built-in"):
        validate_job(load_config(["--data.schema=/no/such.toml"]), world_size=2)


def test_table_sizes_beside_a_given_schema_is_refused() -> None:
    """--data.schema=demo with --model.table_sizes used to drop the sizes without a word; the sizes
    are the built-in schema's parameter now (demo:table_sizes=10/20), and the old key says so."""
    with pytest.raises(ConfigError, match="model.table_sizes moved to the schema's parameters: "
                                          "--data.schema=demo:table_sizes="):
        load_config(["--data.schema=demo", "--model.table_sizes=10,20"])


# -- issue 19: numbers checked for kind and range, names are identifiers, files are UTF-8 -------------
ONE_HASH = '[[sparse]]\nname = "u"\nkind = "hash"\nbuckets = 10\n'


@pytest.mark.parametrize("toml, words", [
    ('[split]\nfractions = [nan, 0.5, 0.5]\n', "split.fractions[0]: must be a finite number >= 0, got nan"),
    ('[label]\nthreshold = nan\n', "label.threshold: must be a finite number, got nan"),
    ('[label]\nthreshold = "4"\n', "label.threshold: must be a finite number, got '4'"),
    ('[[dense]]\nname = "x"\nfill = nan\n', "dense[0].fill: must be a finite number, got nan"),
    ('[[dense]]\nname = "x"\nfill = inf\n', "dense[0].fill: must be a finite number, got inf"),
    ('[[dense]]\nname = "x"\ntransform = "clip"\nclip = "0,10"\n', "dense[0].clip: must be [lo, hi], two numbers"),
    ('[[dense]]\nname = "x"\ntransform = "clip"\nclip = [0, nan]\n', "dense[0].clip: must be [lo, hi] with lo <= hi, no nan"),
    ('[[sparse]]\nname = "c"\nmin_count = 1.9\n', "sparse[1].min_count: must be an integer >= 1, got 1.9"),
    ('[[sparse]]\nname = "c"\noov_buckets = 2.7\n', "sparse[1].oov_buckets: must be an integer >= 1, got 2.7"),
    ('[split]\nseed = -1\n', "split.seed: must be an integer in [0, 2**63 - 1], got -1"),
    ('[split]\nseed = "abc"\n', "split.seed: must be an integer in [0, 2**63 - 1], got 'abc'"),
    ('[input]\ndelimiter = "ab"\n', "input.delimiter: must be one character"),
    ('name = 5\n', "name: must be an identifier"),
    ('colour = "red"\n', "colour: unknown key; valid keys: dense, input, label, name, sparse, split, vocab_rows"),
    ('[[sparse]]\nname = "c"\nkind = "hash"\n', "sparse[1].buckets: kind hash needs buckets"),
    ('[[sparse]]\nkind = "hash"\nbuckets = 3\n', "sparse[1].name: is required; must be an identifier"),
    ('[[sparse]]\nname = "c"\nkind = "hash"\nbuckets = 3\nmin_count = 5\n', "sparse[1].min_count: applies to kind vocab only"),
    ('[[sparse]]\nname = "c"\nbuckets = 3\nkind = "hash"\ndim = 0\n', "sparse[1].dim: must be an integer >= 1, got 0"),
])
def test_schema_file_numbers_are_checked_for_kind_and_range(tmp_path, toml: str, words: str) -> None:
    """Each of these used to be truncated, pass into the data, or fail with a traceback."""
    f = tmp_path / "s.toml"
    f.write_text(ONE_HASH + toml if toml.startswith("[[sparse]]") else toml + ONE_HASH)
    with pytest.raises(SchemaError) as e:
        load_schema(f)
    assert str(e.value).startswith(f"schema file {str(f)!r}: ") and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_every_problem_is_listed_in_one_error() -> None:
    data = {"name": "../x", "dense": [{"name": "d", "fill": float("inf")}],
            "sparse": [{"name": "a", "kind": "hash", "buckets": 2.5}, {"name": "b", "kind": "sum"}],
            "split": {"fractions": [0.8, 0.1]}, "extra": 1}
    with pytest.raises(SchemaError) as e:
        from_dict(data, "job.json")
    msg = str(e.value)
    for path in ("name:", "dense[0].fill:", "sparse[0].buckets:", "sparse[1].kind:", "split.fractions:", "extra:"):
        assert f"; {path}" in msg or msg.startswith(f"job.json: 6 problems: {path}"), (path, msg)
    assert "(sparse feature 'b')" in msg  # the entry is named as well as numbered


@pytest.mark.parametrize("entry, words", [
    ({"name": "../../../escaped_feature", "kind": "hash", "buckets": 3}, "sparse[0].name: must be an identifier"),
    ({"name": "u", "kind": "vocab", "table": "../../escaped_vocab"}, "sparse[0].table: must be a table name"),
    ({"name": ".hidden", "kind": "hash", "buckets": 3}, "sparse[0].name: must be an identifier"),
    ({"name": "a/b", "kind": "hash", "buckets": 3}, "sparse[0].name: must be an identifier"),
    ({"name": "a.b", "kind": "hash", "buckets": 3}, "sparse[0].table: the default table name 't_a.b'"),
    ({"name": "u", "kind": "hash", "buckets": 3, "table": "t.x"}, "sparse[0].table: must be a table name"),
])
def test_names_that_become_files_are_identifiers(entry: dict, words: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(words)):
        from_dict({"sparse": [entry]})


def test_names_may_hold_dots_and_dashes_and_columns_anything() -> None:
    s = from_dict({"name": "clicks-v1.2", "sparse": [{"name": "a.b", "table": "a_b", "kind": "hash", "buckets": 3,
                                                       "column": "../weird column/ü"}]})
    assert s.sparse[0].table == "a_b" and s.sparse[0].column == "../weird column/ü"


def test_preprocess_refuses_an_escaping_name_and_writes_nothing(tmp_path, capsys) -> None:
    from dlrm_dist.cli.data_main import main as data_main

    (tmp_path / "in.csv").write_text("label,u\n1,a\n0,b\n")
    schema = tmp_path / "s.toml"
    schema.write_text('[[sparse]]\nname = "../../../escaped_feature"\nkind = "vocab"\ntable = "../../escaped_vocab"\n')
    out = tmp_path / "deep" / "er" / "out"
    before = sorted(p for p in tmp_path.rglob("*"))
    assert data_main(["preprocess", "--schema", str(schema), "--input", str(tmp_path / "in.csv"),
                      "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sparse[0].name: must be an identifier" in err and "sparse[0].table" in err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_utf8_bom_is_accepted_other_encodings_are_named(tmp_path) -> None:
    f = tmp_path / "s.toml"
    f.write_bytes(b"\xef\xbb\xbf" + ONE_HASH.encode())
    assert load_schema(f).sparse_names == ["u"]
    j = tmp_path / "s.json"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps(from_dict(BASE).to_dict()).encode())
    assert load_schema(j) == from_dict(BASE)
    f.write_bytes(b'name = "caf\xe9"\n' + ONE_HASH.encode())  # Latin-1
    with pytest.raises(SchemaError, match=r"is not UTF-8 text: byte 0xe9 at offset 11 \(line 1, column 12\)"):
        load_schema(f)
    f.write_bytes(ONE_HASH.encode("utf-16"))
    with pytest.raises(SchemaError, match="UTF-16 .* save it as UTF-8"):
        load_schema(f)


def test_json_duplicate_keys_and_deep_nesting_are_named(tmp_path) -> None:
    j = tmp_path / "s.json"
    j.write_text('{"sparse": [{"name": "u", "kind": "hash", "buckets": 3, "buckets": 4}]}')
    with pytest.raises(SchemaError, match="not valid JSON: key 'buckets' appears twice"):
        load_schema(j)
    j.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SchemaError, match="nested too deeply"):
        load_schema(j)
    j.write_text('{"sparse": [{"name": "u", "kind": "hash", "buckets": ' + "9" * 5000 + "}]}")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_schema(j)


def test_builtin_criteo_round_trips_through_json_with_an_open_clip(tmp_path) -> None:
    """clip = [0, inf] clips below only: infinite bounds are allowed there (and nowhere else)."""
    c = criteo_schema()
    (tmp_path / "c.json").write_text(json.dumps(c.to_dict()))
    assert load_schema(tmp_path / "c.json") == c and c.dense[0].clip == (0.0, float("inf"))
    with pytest.raises(SchemaError, match="dense feature 'x'"):
        from_dict({**BASE, "dense": [{"name": "x", "transform": "clip", "clip": [float("inf"), float("inf")]}]})


def test_fitted_statistics_from_numpy_are_plain_numbers() -> None:
    import numpy as np

    fitted = from_dict(BASE).with_fitted({"genre": np.int64(21)}, {"age": (np.float32(3.5), np.float64(2.0))})
    assert fitted.vocab_rows == (("genre", 21),) and type(fitted.vocab_rows[0][1]) is int
    assert from_dict(fitted.to_dict()) == fitted


def test_inline_features_problems_come_with_the_config_problems(tmp_path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[train]\nsteps = 0\n\n[[features.sparse]]\nname = "u"\nkind = "hash"\nbuckets = 1.5\n')
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(job)])
    msg = str(e.value)
    assert msg.startswith(f"config file {str(job)!r}: ")
    assert "train.steps: must be an integer >= 1, got 0" in msg
    assert "features.sparse[0].buckets: must be an integer >= 1, got 1.5 (sparse feature 'u')" in msg


# -- what runs: hashing, vocabulary order, split by day, the criteo_tsv format (issue 20) -----------
CRITEO_TSV = {"format": "criteo_tsv", "header": False}


def test_hash_order_and_days_round_trip_and_builtin_criteo_says_what_runs() -> None:
    data = {**BASE, "sparse": [{"name": "u", "kind": "hash", "hash": "int_modulo", "buckets": 10},
                               {"name": "v", "kind": "vocab", "order": "value", "min_count": 3}],
            "split": {"by": "day", "days": 7}, "input": CRITEO_TSV}
    s = from_dict(data)
    assert (s.sparse[0].hash, s.sparse[1].order, s.split.days) == ("int_modulo", "value", 7)
    assert from_dict(s.to_dict()) == s and s.to_dict()["split"]["days"] == 7
    c = criteo_schema(days=7, buckets=1000)
    assert {(f.kind, f.hash, f.buckets) for f in c.sparse} == {("hash", "int_modulo", 1000)}
    assert (c.split.by, c.split.days, c.input.format, c.input.header) == ("day", 7, "criteo_tsv", False)
    assert criteo_schema().sparse[0].buckets == 40_000_000 and criteo_schema().split.days is None
    v = criteo_schema(vocab_min_count=2)
    assert {(f.kind, f.order, f.min_count, f.oov_buckets) for f in v.sparse} == {("vocab", "value", 2, 1)}
    assert from_dict(v.to_dict()) == v and from_dict(c.to_dict()) == c
    assert [f.buckets for f in criteo_schema([5, 6], name="shaped").sparse] == [5, 6]  # Criteo-shaped (demo, tests)
    with pytest.raises(SchemaError, match="not both"):
        criteo_schema([5], buckets=6)
    with pytest.raises(SchemaError, match="table_sizes has 2 sizes; Criteo lines have 26"):
        criteo_schema([5, 6])  # Criteo itself: two tables would drop 24 of its fields
    with pytest.raises(SchemaError, match="vocab_min_count sizes each table"):
        criteo_schema(vocab_min_count=2, buckets=1000)


@pytest.mark.parametrize("change, words", [
    ({"sparse": [{"name": "u", "kind": "vocab", "hash": "int_modulo"}]}, "sparse[0].hash: applies to kinds hash and managed only"),
    ({"sparse": [{"name": "u", "kind": "hash", "buckets": 9, "order": "value"}]},
     "sparse[0].order: applies to kind vocab only"),
    ({"sparse": [{"name": "u", "kind": "hash", "buckets": 9, "hash": "md5"}]}, "sparse[0].hash"),
    ({"split": {"by": "day", "days": 1}}, "split.days: must be an integer >= 2"),
    ({"split": {"days": 3}}, "split.days: applies to by = \"day\" only"),
    ({"split": {"by": "day", "fractions": [0.5, 0.25, 0.25]}}, "split.fractions: do not apply to by = \"day\""),
    ({"split": {"by": "day", "days": 7}}, "split.days: cuts the lines of criteo_tsv inputs"),
    ({"input": {"format": "criteo_tsv"}}, "input.header: must be false with format criteo_tsv"),
    ({"input": {**CRITEO_TSV, "columns": ["a", "b"]}}, "input.columns: names 2 columns; format criteo_tsv has 40"),
    ({"input": {**CRITEO_TSV, "delimiter": ","}}, "input.delimiter: must be a tab"),
    ({"input": CRITEO_TSV, "sparse": [{"name": "u", "kind": "hash", "buckets": 9}]},
     "sparse[0].hash: format criteo_tsv reads categorical fields as integers"),
    ({"input": CRITEO_TSV, "sparse": [{"name": "u", "delimiter": "|"}]}, "sparse[0].delimiter: does not apply"),
    ({"sparse": [{"name": "a", "kind": "hash", "buckets": 9, "table": "t"},
                 {"name": "b", "kind": "hash", "buckets": 9, "table": "t", "hash": "int_modulo"}]},
     "disagree on hash"),
])
def test_what_runs_is_checked(change: dict, words: str) -> None:
    with pytest.raises(SchemaError) as e:
        from_dict({**BASE, **change})
    assert words in str(e.value)
    assert from_dict({**BASE, "split": {"by": "day"}}).split.days is None  # one day per input file


# Fingerprints that checkpoints, exports and data directories written before the schema gained
# hash/order/days carry (computed by the code of 32cc29e): a schema using nothing new keeps them.
STORED_FINGERPRINTS = {"tests/schemas/mixed.toml": "ad55a358bf039155",
                       "examples/movielens100k.toml": "8533cd6ab56475a2",
                       "examples/clicks.toml": "b75d64b07c6cde17"}


@pytest.mark.parametrize("path", sorted(STORED_FINGERPRINTS))
def test_a_schema_using_nothing_new_keeps_the_fingerprint_stored_before(path) -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_schema(str(root / path)).fingerprint() == STORED_FINGERPRINTS[path]


def test_a_new_entry_changes_the_fingerprint() -> None:
    import dataclasses

    s = load_schema(str(Path(__file__).resolve().parents[2] / "tests/schemas/mixed.toml"))
    hashed = next(i for i, f in enumerate(s.sparse) if f.kind == "hash")
    sparse = list(s.sparse)
    sparse[hashed] = dataclasses.replace(sparse[hashed], hash="int_modulo")
    assert dataclasses.replace(s, sparse=tuple(sparse)).fingerprint() != s.fingerprint()
