"""Feature schemas: reading, every kind of bad entry named, derived tables, the model they make."""

from __future__ import annotations

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
    """--data.schema=demo with --model.table_sizes used to drop the sizes without a word."""
    with pytest.raises(ConfigError, match="table_sizes sizes the default built-in schema only.*'demo'"):
        validate_job(load_config(["--data.schema=demo", "--model.table_sizes=10,20"]), world_size=1)
