"""Config loading and every kind of bad input, all without a process group."""

from __future__ import annotations

import re

import pytest

from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.config.loader import help_text
from dlrm_dist.train import main
from dlrm_dist.training.build import validate_job


def validate_for_launch(cfg, world_size: int, device_type: str = "cpu") -> None:
    validate_job(cfg, world_size, device_type)


def test_defaults_are_the_demo() -> None:
    cfg = load_config([])
    assert cfg.model.bottom_mlp is None and cfg.data.schema is None and cfg.features is None
    assert cfg.model.top_mlp == "512-256-1"
    resolved, schema, spec = validate_job(cfg, world_size=2)
    # resolved from the built-in demo schema: 13 dense features, 26 tables of dim 16
    assert resolved.model.bottom_mlp == "13-512-256-64-16"
    assert schema.name == "demo" and schema.num_dense == 13 and len(spec.tables) == 26
    assert resolved.features == schema.to_dict()


def test_toml_then_cli_precedence(tmp_path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('[model]\nembedding_dim = 8\nbottom_mlp = "13-32-8"\n[train]\nsteps = 7\nglobal_batch_size = 64\n')
    cfg = load_config(["--config", str(f), "--train.steps=9", "--sharding-type", "row_wise"])
    assert cfg.model.embedding_dim == 8 and cfg.model.bottom_mlp == "13-32-8"
    assert cfg.train.steps == 9 and cfg.train.global_batch_size == 64
    assert cfg.sharding.sharding_type == "row_wise"


def test_list_and_bool_values() -> None:
    cfg = load_config(["--data.source=columnar", "--data.data_dir=d", "--multi_hot.sizes=10,20,30",
                       "--model.dot_self_interaction=true"])
    assert cfg.multi_hot.sizes == [10, 20, 30]
    assert cfg.model.dot_self_interaction is True


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model.bottom_mlp=13-abc-16"], ["model.bottom_mlp", "13-abc-16", "'-'"]),
        (["--model.bottom_mlp=13-64-32"], ["ends in 32", "embedding dim 16"]),
        (["--model.bottom_mlp=12-64-16"], ["starts with 12", "13 dense feature(s)", "'13-...'"]),
        (["--model.top_mlp=512-2"], ["must end in 1"]),
        (["--train.global_batch_size=1001"], ["1001", "not divisible by the world size 2", "1000", "1002"]),
        (["--sharding-type=diagonal"], ["sharding.sharding_type: must be one of", "row_wise", "table_wise", "got 'diagonal'"]),
        (["--optim.embedding_optimizer=lamb"], ["lamb", "rowwise_adagrad"]),
        (["--optim.dense_optimizer=rowwise_adagrad"], ["dense_optimizer", "sgd, adagrad, adam"]),
        (["--model.embedding_dim=10", "--model.bottom_mlp=13-64-10"], ["t_cat_0", "embedding dim 10", "multiple of 4", "8 or 12"]),
        (["--optim.embedding_optimizer=adam"], ["'adam' has no fused CPU kernel", "rowwise_adagrad", "data_parallel"]),
        (["--model.interaction=attention"], ["attention", "dot, cat, dcn"]),
        (["--model.embedding_dim=3", "--model.bottom_mlp=13-3"], ["embedding dim 3", "multiple of 4, e.g. 4 (set"]),
        (["--optim.embedding_lr=nan"], ["optim.embedding_lr: must be a finite number > 0, got nan"]),
        (["--optim.dense_lr=inf"], ["optim.dense_lr: must be a finite number > 0, got inf"]),
        (["--optim.embedding_lr=0"], ["optim.embedding_lr: must be a finite number > 0, got 0.0"]),
        (["--model.nope=1"], ["unknown key", "nope", "bottom_mlp"]),
        (["--train.steps=ten"], ["train.steps: must be an integer >= 1, got 'ten'"]),
        (["--config", "/no/such/file.toml"], ["/no/such/file.toml", "does not exist"]),
    ],
)
def test_bad_input_is_named(args: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        validate_for_launch(load_config(args), world_size=2)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def test_dp_allows_any_dim_and_adam() -> None:
    cfg = load_config(["--model.embedding_dim=10", "--model.bottom_mlp=13-64-10", "--sharding-type=data_parallel",
                       "--optim.embedding_optimizer=adam"])
    validate_for_launch(cfg, world_size=2)


def test_adam_is_allowed_on_cuda() -> None:
    validate_for_launch(load_config(["--optim.embedding_optimizer=adam"]), world_size=2, device_type="cuda")


def test_bad_toml_names_file(tmp_path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[model\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(["--config", str(f)])
    f.write_text("[modle]\nx = 1\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config(["--config", str(f)])


def test_cli_error_exit_code_and_message(capsys, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--train.global_batch_size=999"]) == 2
    assert "not divisible by the world size 2" in capsys.readouterr().err


def test_help_lists_every_option(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--model.bottom_mlp" in out and "--optim.decay_power" in out and "--sharding-type" in out
    assert help_text() in out


def test_performance_options_parse_and_are_checked() -> None:
    import torch

    from dlrm_dist.distributed.parallel import set_matmul_precision, sharder
    from dlrm_dist.train import run_options

    cfg = load_config(["--sharding.qcomms=fp16", "--train.mixed_precision=bf16", "--train.tf32=true",
                       "--train.compile=true"])
    assert run_options(cfg) == ["quantized all-to-all fp16 (forward and backward)", "dense part in bf16 autocast",
                                "TF32 matmuls (CUDA)", "dense part compiled (torch.compile)"]
    assert sharder("bf16").qcomm_codecs_registry and not sharder("none").qcomm_codecs_registry
    before = torch.backends.cuda.matmul.allow_tf32
    set_matmul_precision(True, torch.device("cpu"))  # no effect off CUDA
    assert torch.backends.cuda.matmul.allow_tf32 == before
    for bad, words in ((["--sharding.qcomms=int8"], "sharding.qcomms: must be one of none, fp16, bf16, got 'int8'"),
                       (["--train.mixed_precision=fp8"], "train.mixed_precision: must be one of none, bf16, got 'fp8'")):
        with pytest.raises(ConfigError, match=words):
            load_config(bad)


def test_train_device_is_a_choice() -> None:
    assert load_config([]).train.device == "auto"
    assert load_config(["--train.device=cuda"]).train.device == "cuda"
    with pytest.raises(ConfigError, match="train.device: must be one of auto, cpu, cuda, got 'gpu'"):
        load_config(["--train.device=gpu"])


# -- issue 19: the job config is a declared model: strict in files, typed overrides ------------------
@pytest.mark.parametrize("toml, words", [
    ('[train]\nsteps = "10"\n', "train.steps: must be an integer >= 1, got '10'"),
    ('[train]\nsteps = 10.5\n', "train.steps: must be an integer >= 1, got 10.5"),
    ('[train]\nseed = -1\n', "train.seed: must be an integer in [0, 2**63 - 1], got -1"),
    ('[data]\nseed = "abc"\n', "data.seed: must be an integer in [0, 2**63 - 1], got 'abc'"),
    ('[train]\nprogress = "yes"\n', "train.progress: must be true or false, got 'yes'"),
    ('[optim]\nembedding_lr = nan\n', "optim.embedding_lr: must be a finite number > 0, got nan"),
    ('[synthetic]\nzipf_alpha = -inf\n', "synthetic.zipf_alpha: must be a finite number >= 0, got -inf"),
    ('[data]\nsource = "columnar"\ndata_dir = "d"\n[multi_hot]\nsizes = [10, 0]\n',
     "multi_hot.sizes[1]: must be an integer >= 1, got 0"),
    ('[data]\nsource = "columnar"\ndata_dir = "d"\n[multi_hot]\nsizes = []\n',
     "multi_hot.sizes: must be a non-empty list (each an integer >= 1), got []"),
    ('[model]\nbottom_mlp = "13-abc-16"\n', "model.bottom_mlp: must be positive layer widths joined by '-'"),
    ('[train]\nrun_dir = "a\\u0000b"\n', "train.run_dir: must be a path (non-empty, no NUL character)"),
    ('train = 3\n', "train: must be a table (a [train] section), got int"),
    ('[modle]\nx = 1\n', "[modle]: unknown section; sections: model, data, synthetic, multi_hot, optim, sharding, "
                         "train, features"),
    ('[data]\nsource = "columnar"\n', "data.data_dir: is required when source = 'columnar'"),
    ('[train]\ncheckpoint_interval = 5\n', "train.checkpoint_dir: is required when checkpoint_interval=5"),
])
def test_config_file_values_are_strict(tmp_path, toml: str, words: str) -> None:
    """TOML has real types: a string or a float where an integer belongs is an error, not a guess."""
    f = tmp_path / "job.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(f)])
    assert str(e.value).startswith(f"config file {str(f)!r}: ") and words in str(e.value), str(e.value)


def test_config_file_integers_are_floats_where_floats_belong(tmp_path) -> None:
    f = tmp_path / "job.toml"
    f.write_bytes(b"\xef\xbb\xbf[optim]\nembedding_lr = 1\n")  # and a UTF-8 BOM is dropped
    assert load_config(["--config", str(f)]).optim.embedding_lr == 1.0


def test_overrides_are_read_by_the_field_type_then_checked() -> None:
    cfg = load_config(["--train.steps= 12", "--optim.dense_lr=1e-3", "--train.progress=off", "--synthetic.eval_batches=3",
                       "--train.checkpoint_dir=none", "--model.bottom_mlp=13-64-16", "--inference-only",
                       "--checkpoint", "ck"])
    assert (cfg.train.steps, cfg.optim.dense_lr, cfg.train.progress) == (12, 1e-3, False)
    assert cfg.synthetic.eval_batches == 3 and cfg.train.checkpoint_dir is None and cfg.train.inference_only
    cfg = load_config(["--data.source=columnar", "--data.data_dir=d", "--multi_hot.sizes=[3, 4]"])
    assert cfg.multi_hot.sizes == [3, 4]
    for args, words in ((["--data.source=columnar", "--data.data_dir=d", "--multi_hot.sizes=10,x"],
                         "multi_hot.sizes[1]: must be an integer >= 1, got 'x'"),
                        (["--train.steps=1.5"], "train.steps: must be an integer >= 1, got '1.5'"),
                        (["--train.tf32=maybe"], "train.tf32: must be true or false, got 'maybe'"),
                        (["--synthetic.zipf_alpha=nan"], "synthetic.zipf_alpha: must be a finite number >= 0, got nan")):
        with pytest.raises(ConfigError, match=re.escape(f"command line: {words}")):
            load_config(args)


def test_every_section_problem_is_in_one_error(tmp_path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('[model]\nembedding_dim = 0\n[train]\nsteps = -3\ncolour = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(f), "--optim.dense_lr=0", "--sharding.planner=mine"])
    msg = str(e.value)
    assert msg.startswith(f"config file {str(f)!r} with command-line overrides: ") and "\n" not in msg
    for words in ("model.embedding_dim: must be an integer >= 1, got 0", "train.steps: must be an integer >= 1, got -3",
                  "train.colour: unknown key; valid keys: auc_max_samples", "optim.dense_lr: must be a finite number > 0",
                  "sharding.planner: must be one of dlrm_dist, torchrec, got 'mine'"):
        assert words in msg, (words, msg)


def test_saved_configs_round_trip_and_are_frozen() -> None:
    import dataclasses

    from dlrm_dist.config.loader import config_from_dict, to_dict

    cfg = load_config(["--data.schema=demo:table_sizes=10/20", "--train.device=cpu", "--sharding.qcomms=bf16"])
    assert config_from_dict(to_dict(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]
    from pathlib import Path

    assert dataclasses.replace(cfg.data, data_dir=Path("d")).data_dir == "d"  # code may hand a Path
    with pytest.raises(ConfigError, match="saved config: must be a table of sections, got list"):
        config_from_dict([])  # type: ignore[arg-type]


def test_dlrm_train_reports_every_problem_on_one_line(capsys) -> None:
    assert main(["--train.steps=0", "--model.loss=hinge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlrm-train: error: command line: ") and err.count("\n") == 1
    assert "train.steps: must be an integer >= 1, got 0" in err and "model.loss: must be one of bce, mse" in err


# -- issue 20: the config follows the data -------------------------------------------------------
@pytest.mark.parametrize("key, value, went", [
    ("data.zipf_alpha", "0.5", "synthetic.zipf_alpha"),
    ("data.pooling_factor", "2", "synthetic.pooling_factor"),
    ("data.variable_pooling", "true", "synthetic.variable_pooling"),
    ("data.teacher_scale", "1", "synthetic.teacher_scale"),
    ("data.eval_batches", "2", "synthetic.eval_batches"),
    ("data.multi_hot_sizes", "3", "multi_hot.sizes"),
    ("model.table_sizes", "10,20", "--data.schema=demo:table_sizes=100/200/300"),
    ("data.max_ind_range", "1000", "dlrm-data preprocess --schema criteo:buckets=N"),
])
def test_a_moved_key_says_where_it_went(tmp_path, key: str, value: str, went: str) -> None:
    section, name = key.split(".")
    f = tmp_path / "job.toml"
    f.write_text(f"[{section}]\n{name} = {value if value[0].isdigit() and ',' not in value else repr(value)}\n")
    for args, origin in (([f"--{key}={value}"], "command line"), (["--config", str(f)], f"config file {str(f)!r}")):
        with pytest.raises(ConfigError) as e:
            load_config(args)
        assert str(e.value).startswith(f"{origin}: {key} moved to ") and went in str(e.value), str(e.value)


def test_the_criteo_source_is_gone_and_says_how_to_train_on_criteo() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(["--data", "criteo", "--data-dir", "days"])
    msg = str(e.value)
    assert msg.startswith("command line: data.source: 'criteo' is no longer a source: ") and "\n" not in msg
    assert "--schema criteo:days=7" in msg and "import-torchrec" in msg and "--data.source=columnar" in msg
    assert "data.data_dir applies" not in msg  # the source is wrong: not a second complaint about the directory


COLUMNAR = ["--data.source=columnar", "--data.data_dir=d"]


@pytest.mark.parametrize("args, words", [
    # given at its default value: refused all the same (the loader knows it was given)
    (COLUMNAR + ["--synthetic.zipf_alpha=1.1"],
     "synthetic.zipf_alpha applies to data.source = synthetic only (this job's source is columnar)"),
    (COLUMNAR + ["--synthetic.eval_batches=4"], "synthetic.eval_batches applies to data.source = synthetic only"),
    (["--data.data_dir=d"], "data.data_dir applies to data.source = columnar only (this job's source is synthetic)"),
    (["--data.eval_split=test"], "data.eval_split applies to data.source = columnar only"),
    (["--data.shuffle=false"], "data.shuffle applies to data.source = columnar only"),
    (["--multi_hot.sizes=3"], "multi_hot.sizes applies to data.source = columnar only (this job's source is "
                              "synthetic); the generator draws multi-hot bags itself: synthetic.pooling_factor"),
])
def test_a_setting_for_another_source_is_refused_by_name(args: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(args)
    assert str(e.value).startswith("command line: ") and words in str(e.value), str(e.value)


def test_a_setting_for_another_source_in_a_file_is_listed_with_every_other_problem(tmp_path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('[data]\nsource = "columnar"\ndata_dir = "d"\n[synthetic]\npooling_factor = 2\n'
                 '[train]\nsteps = 0\n')
    with pytest.raises(ConfigError) as e:
        load_config(["--config", str(f), "--synthetic.teacher_scale=2"])
    msg = str(e.value)
    for words in ("3 problems", "train.steps: must be an integer >= 1, got 0",
                  "synthetic.pooling_factor applies to data.source = synthetic only",
                  "synthetic.teacher_scale applies to data.source = synthetic only"):
        assert words in msg, (words, msg)
    # the same keys for the source they apply to
    f.write_text('[synthetic]\npooling_factor = 2\n')
    assert load_config(["--config", str(f), "--synthetic.teacher_scale=2"]).synthetic.pooling_factor == 2


def test_a_saved_config_holds_what_applies_to_its_source_and_loads_back_as_a_file(tmp_path) -> None:
    import json

    from dlrm_dist.config.loader import config_from_dict, to_dict

    synthetic = load_config(["--synthetic.pooling_factor=3", "--data.seed=7"])
    saved = to_dict(synthetic)
    assert "multi_hot" not in saved and set(saved["data"]) == {"source", "schema", "seed"}
    assert saved["synthetic"]["pooling_factor"] == 3
    columnar = load_config(COLUMNAR + ["--multi_hot.sizes=2", "--data.shuffle=false"])
    saved = to_dict(columnar)
    assert "synthetic" not in saved and saved["multi_hot"] == {"sizes": [2]} and saved["data"]["shuffle"] is False
    for cfg in (synthetic, columnar):
        assert config_from_dict(to_dict(cfg)) == cfg
        f = tmp_path / "config.json"  # what dlrm-train writes to the run directory
        f.write_text(json.dumps(to_dict(cfg)))
        assert load_config(["--config", str(f)]) == cfg


def test_a_config_saved_before_the_synthetic_section_still_loads() -> None:
    """Checkpoints and exports written before issue 20 carry the old layout, every key of it."""
    from dlrm_dist.config.loader import config_from_dict, to_dict

    old = to_dict(load_config([]))
    old["data"] = {"source": "synthetic", "data_dir": None, "schema": None, "eval_split": "val", "max_ind_range": 0,
                   "multi_hot_sizes": None, "shuffle": True, "seed": 5, "zipf_alpha": 0.5, "pooling_factor": 2,
                   "variable_pooling": True, "teacher_scale": 1.5, "eval_batches": 3}
    old.pop("synthetic")
    old["model"] = {**old["model"], "table_sizes": None}
    cfg = config_from_dict(old)
    assert (cfg.data.seed, cfg.synthetic.zipf_alpha, cfg.synthetic.pooling_factor, cfg.synthetic.eval_batches) == \
        (5, 0.5, 2, 3)
    old["data"] = {**old["data"], "source": "columnar", "data_dir": "d"}
    cfg = config_from_dict(old)
    assert cfg.data.data_dir == "d" and cfg.synthetic.zipf_alpha == 1.1  # the generator's knobs did nothing there
    old["data"] = {**old["data"], "source": "criteo", "max_ind_range": 1000}
    with pytest.raises(ConfigError, match="saved config: 2 problems: data.max_ind_range moved to .*"
                                          "data.source: 'criteo' is no longer a source"):
        config_from_dict(old)


def test_a_resolved_config_saved_by_a_criteo_job_before_the_one_stack_still_loads() -> None:
    """A checkpoint's or export's config carries its schema (features): the old keys' work is in it."""
    from dlrm_dist.config.loader import config_from_dict, to_dict
    from dlrm_dist.features.builtin import demo_schema

    old = to_dict(load_config([]))
    old.pop("synthetic")
    old["features"] = demo_schema([10, 20]).to_dict()
    old["data"] = {"source": "criteo", "data_dir": "days", "schema": None, "eval_split": "test", "max_ind_range": 1000,
                   "multi_hot_sizes": [3], "shuffle": True, "seed": 5, "zipf_alpha": 1.1, "pooling_factor": 1,
                   "variable_pooling": False, "teacher_scale": 1.5, "eval_batches": 16}
    old["model"] = {**old["model"], "table_sizes": [10, 20]}
    cfg = config_from_dict(old)
    assert (cfg.data.source, cfg.data.data_dir, cfg.data.eval_split, cfg.multi_hot.sizes) == ("columnar", "days", "test", [3])
