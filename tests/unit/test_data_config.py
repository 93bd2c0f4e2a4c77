"""The config follows the data (issue 20): built-in schemas with parameters, one resolution of the
schema, and each source built from its own section ([synthetic], [multi_hot])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.data.resolve import build_data, job_schema
from dlrm_dist.features import SchemaError, demo_schema, load_schema
from dlrm_dist.features.builtin import BUILTIN
from dlrm_dist.features.schema import FeatureSchema, from_dict
from dlrm_dist.training.build import resolve


# -- NAME:key=value,... ----------------------------------------------------------------------
def test_a_builtin_schema_takes_its_parameters_by_name() -> None:
    assert load_schema("demo:table_sizes=10/20/30") == demo_schema([10, 20, 30])
    assert load_schema("demo:table_sizes = 10/20, ") == demo_schema([10, 20])  # spaces and a trailing comma
    criteo = load_schema("criteo:table_sizes=7/9,name=tiny")
    assert criteo == BUILTIN["criteo"]([7, 9], name="tiny") and criteo.name == "tiny"
    assert load_schema("demo") == demo_schema()
    assert load_schema("criteo:days=7,buckets=1000") == BUILTIN["criteo"](days=7, buckets=1000)
    assert load_schema("criteo:vocab_min_count=3") == BUILTIN["criteo"](vocab_min_count=3)


@pytest.mark.parametrize("text, words", [
    ("demo:table_size=3", "schema 'demo:table_size=3': unknown parameter 'table_size'; valid: table_sizes "
                          "(integers separated by '/')"),
    ("demo:table_sizes=10,20", "'20' is not key=value"),  # a comma separates parameters, not sizes
    ("demo:table_sizes=10/0", "table_sizes='10/0': must be integers >= 1 separated by '/', e.g. 100/200"),
    ("demo:table_sizes=", "table_sizes='': must be integers >= 1"),
    ("demo:table_sizes=1,table_sizes=2", "parameter 'table_sizes' is given twice"),
    ("criteo:name=", "name='': must not be empty"),
    ("criteo:nope=1,table_sizes=x", "unknown parameter 'nope'; valid: table_sizes (integers separated by '/'), "
                                    "name (text)"),
    ("nope:x=1", "schema 'nope:x=1' is neither a file nor a built-in schema (criteo, demo"),
])
def test_a_bad_parameter_is_named_with_the_valid_ones(text: str, words: str) -> None:
    with pytest.raises(SchemaError) as e:
        load_schema(text)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_an_integer_parameter_is_read_as_a_count() -> None:
    from dlrm_dist.features.io import read_parameter

    assert read_parameter("40000000", int) == 40_000_000
    for bad in ("0", "-3", "1.5", "1e6", "٣", ""):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            read_parameter(bad, int)


def test_a_value_the_schema_itself_refuses_is_named_with_the_text_given() -> None:
    with pytest.raises(SchemaError, match=r"^schema 'criteo:name=\.x': .*name"):
        load_schema("criteo:name=.x")


def test_a_file_of_the_same_name_is_read_as_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("not json")
    with pytest.raises(SchemaError, match="schema file 'demo' is not valid JSON"):
        load_schema("demo")


def test_the_same_text_works_on_the_command_line_and_in_a_file(tmp_path: Path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('[data]\nschema = "demo:table_sizes=11/12/13"\n')
    for args in (["--config", str(f)], ["--data.schema=demo:table_sizes=11/12/13"]):
        cfg, schema, spec = resolve(load_config(args))
        assert [t.rows for t in spec.tables] == [11, 12, 13] and schema == demo_schema([11, 12, 13])
        assert cfg.data.schema is None and FeatureSchema.from_dict(cfg.features) == schema  # resolved once, carried


# -- sources built from their sections ---------------------------------------------------------
def test_the_synthetic_source_is_built_from_the_synthetic_section() -> None:
    cfg = load_config(["--data.schema=demo:table_sizes=50/60", "--synthetic.pooling_factor=3",
                       "--synthetic.variable_pooling=true", "--synthetic.eval_batches=5", "--data.seed=9",
                       "--synthetic.zipf_alpha=0", "--synthetic.teacher_scale=2"])
    data = build_data(cfg, job_schema(cfg))
    assert data.spec.seed == 9 and data.spec.zipf_alpha == 0 and data.spec.teacher_scale == 2
    assert data.eval_batch_count(64) == 5 and data.bag_lengths() == {"cat_0": 3.0, "cat_1": 3.0}
    lengths = next(data.batches("train", 64, 0, 1, 1)).sparse_features.lengths()
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 5 and int(lengths.max()) > 1


TINY = {
    "name": "tiny", "label": {"column": "y"}, "split": {"by": "random", "fractions": [0.5, 0.5, 0.0]},
    "dense": [{"name": "x"}],
    "sparse": [{"name": "a", "kind": "identity", "buckets": 10}, {"name": "b", "kind": "identity", "buckets": 20}],
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny")
    rows = [f"{i % 10},{i % 20},{i},{i % 2}" for i in range(64)]
    (tmp / "d.csv").write_text("a,b,x,y\n" + "\n".join(rows) + "\n")
    preprocess(Options(from_dict(TINY), [tmp / "d.csv"], tmp / "out", progress=False))
    return tmp / "out"


def test_multi_hot_sizes_reach_the_columnar_loader(tiny_dir: Path) -> None:
    base = ["--data.source=columnar", f"--data.data_dir={tiny_dir}", "--data.shuffle=false"]
    one = load_config(base)
    hot = load_config(base + ["--multi_hot.sizes=3,2"])
    plain, expanded = (build_data(c, job_schema(c)) for c in (one, hot))
    assert expanded.bag_lengths() == {"a": 3.0, "b": 2.0} and plain.bag_lengths() == {"a": 1.0, "b": 1.0}
    p = next(plain.batches("train", 8, 0, 1, 1)).sparse_features.to_dict()
    e = next(expanded.batches("train", 8, 0, 1, 1)).sparse_features.to_dict()
    # MLPerf's expansion: the first id of each bag is the data's own id
    assert np.array_equal(e["a"].values().numpy()[::3], p["a"].values().numpy())
    assert np.array_equal(e["b"].values().numpy()[::2], p["b"].values().numpy())


def test_multi_hot_sizes_must_fit_the_schema(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"multi_hot.sizes has 3 values; schema 'tiny' has 2 sparse features "
                                          r"\(a, b\): give one size for all of them or 2"):
        job_schema(load_config(["--data.source=columnar", f"--data.data_dir={tiny_dir}", "--multi_hot.sizes=1,2,3"]))


def test_scoring_reads_the_directory_given_even_for_a_model_of_synthetic_data(tiny_dir: Path, tmp_path: Path) -> None:
    """dlrm-predict --data DIR on a model trained on the generator used to score the generator's data."""
    import json

    from dlrm_dist.data.columnar.dataset import ColumnarDataset
    from dlrm_dist.data.synthetic import SyntheticData
    from dlrm_dist.serving.predict import open_split

    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    cfg, _, _ = resolve(load_config([f"--data.schema={tmp_path / 'tiny.json'}", "--model.interaction=cat",
                                     "--model.bottom_mlp=1-16"]))
    assert cfg.data.source == "synthetic" and isinstance(open_split(cfg, None, "val"), SyntheticData)
    data = open_split(cfg, str(tiny_dir), "val")
    assert isinstance(data, ColumnarDataset) and data.eval_split == "val" and data.directory == tiny_dir


def test_a_directory_named_like_a_built_in_schema_does_not_hide_it(tmp_path, monkeypatch) -> None:
    from dlrm_dist.features.io import load_schema

    (tmp_path / "criteo").mkdir()  # e.g. where the Criteo logs are
    monkeypatch.chdir(tmp_path)
    assert load_schema("criteo").name == "criteo"
