"""The configuration schema: one declared model per section, a help text under every field.

Each section is a frozen pydantic dataclass (strict, no unknown keys, no NaN/inf; see
dlrm_dist/validation.py): the declared types, ranges and choices are the checks, and the checks
across fields are model validators, so building a section reports every problem at once.
They are ordinary dataclasses to the rest of the package (``dataclasses.replace``,
``asdict``, ``fields``).

Precedence when loading (see loader.py): command line > TOML file > these defaults.
The defaults are the demo: a 2-rank CPU run on synthetic Criteo-shaped data.
Checks that need the job (world size, device, the schema's tables) live in validate.py
and model/spec.py.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from dlrm_dist.config.validation import (STRICT, Count, PartitionList, PathText, Says, count, finite,
                                         partition_list_problem, problems)
from dlrm_dist.names import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES

ARCHS = ("dlrm", "embedding_mlp")
INTERACTIONS = ("dot", "cat", "dcn")
LOSSES = ("bce", "mse")

DATA_SOURCES = ("synthetic", "columnar")
QCOMMS = ("none", "fp16", "bf16")
MIXED_PRECISION = ("none", "bf16")
DEVICES = ("auto", "cpu", "cuda")
PLANNERS = ("dlrm_dist", "torchrec")
EVAL_SPLITS = ("val", "test")
STOP_METRICS = ("auc", "logloss", "ne")
STOP_MODES = ("max", "min")
DEFAULT_STEPS = 800  # train.steps when neither it nor train.epochs is given

NonNegative = count(0)
Seed = Annotated[int, Field(ge=0, le=2**63 - 1), Says("an integer in [0, 2**63 - 1]")]
PositiveRate = finite(gt=0.0)
NonNegativeFloat = finite(ge=0.0)
Sizes = Annotated[list[Count], Field(min_length=1)]
# DLRM's architecture strings: positive layer widths joined by "-" (config/arch.py parses them)
MlpText = Annotated[str, Field(pattern=r"^\s*0*[1-9][0-9]*(\s*-\s*0*[1-9][0-9]*)*\s*$"),
                    Says("positive layer widths joined by '-', e.g. '13-512-256-64-16'")]
SECTION = dict(config=STRICT, frozen=True)


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose help text becomes ``--help`` output."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(**SECTION)
class ModelConfig:
    """The model: DLRM, or the Embedding+MLP (Deep Crossing) preset, over the schema's features."""

    arch: Literal[ARCHS] = _f(
        "dlrm", "dlrm, or embedding_mlp (dense + embeddings concatenated, an MLP; no bottom layers).")
    bottom_mlp: Optional[MlpText] = _f(
        None,
        "Bottom MLP as DLRM writes it: input width (= the schema's dense features) then layer widths; "
        "unset: <dense>-512-256-64-<dim> (dlrm) or none (embedding_mlp).",
    )
    top_mlp: MlpText = _f(
        "512-256-1", "Top MLP layer widths; its input width is computed; must end in 1."
    )
    embedding_dim: Count = _f(16, "Embedding dimension of tables whose schema entry gives no dim.")
    interaction: Literal[INTERACTIONS] = _f("dot", "Feature interaction: dot, cat or dcn (DCNv2 low-rank cross).")
    dot_self_interaction: bool = _f(False, "dot: also keep each feature's dot with itself.")
    dcn_num_layers: Count = _f(3, "dcn: number of low-rank cross layers.")
    dcn_low_rank_dim: Count = _f(512, "dcn: rank of each cross layer's weight factorisation.")
    residual_units: NonNegative = _f(0, "Deep Crossing residual units between the interaction and the top MLP.")
    residual_hidden: Count = _f(256, "Inner width of each residual unit.")
    loss: Literal[LOSSES] = _f("bce", "bce (binary cross-entropy on logits) or mse (on the sigmoid).")


@dataclass(**SECTION)
class DataConfig:
    """Where batches come from."""

    source: Literal[DATA_SOURCES] = _f(
        "synthetic", "Data source: synthetic (the built-in generator, see [synthetic]) or columnar (a directory "
        "written by `dlrm-data preprocess --schema ...`, Criteo days included, or by `dlrm-data import-torchrec`).")
    data_dir: Optional[PathText] = _f(None, "columnar: the preprocessed directory.")
    schema: Optional[PathText] = _f(
        None, "Feature schema: a TOML/JSON file or a built-in name with optional parameters, NAME[:key=value,...] "
        "(demo:table_sizes=100/200/300, criteo:buckets=1000000); unset: the [features] section, the data "
        "directory's, or the demo's.")
    eval_split: Literal[EVAL_SPLITS] = _f(
        "val", "Any columnar directory (a schema's preprocessed CSV/Parquet/JSON rows, Criteo days, an imported "
        "TorchRec layout): evaluate on its val split or its test split (Criteo: first / second half of the last "
        "day). Early stopping needs val; a test split is then scored once, with the best model, at the end.")
    shuffle: bool = _f(True, "columnar: visit training batches in a seeded permutation each epoch.")
    seed: Seed = _f(1234, "synthetic: seed of the generator and of its hidden teacher; columnar: of the shuffle.")
    partitions: Optional[PartitionList] = _f(
        None, "columnar, a directory of day partitions (`dlrm-data preprocess --partition N` / `--append`): the "
        "partitions to train on, in time order, e.g. '1-7' or '1,3,5-7' (increasing; each must exist). Training "
        "visits partition 1's batches, then 2's, ... (shuffled within each, each dropping its last partial "
        "batch); epochs repeat the sequence. Unset: the directory's train/val/test splits.")
    eval_partition: Optional[Annotated[int, Field(ge=0, le=999_999_999)]] = _f(
        None, "columnar, with data.partitions: the partition to evaluate on (not one trained on); unset: the "
        "first partition after the last one trained on.")

    @model_validator(mode="after")
    def _needs_dir(self) -> "DataConfig":
        if self.source == "columnar" and not self.data_dir:
            problems([(("data_dir",), f"is required when source = {self.source!r} "
                                      "(the output of `dlrm-data preprocess`)")])
        problems(self._partition_problems())
        return self

    def _partition_problems(self) -> list[tuple[tuple[str, ...], str]]:
        from dlrm_dist.data.partition_list import parse_partitions

        if self.partitions is None:
            return [(("eval_partition",), "needs data.partitions (the partitions to train on, e.g. "
                                          "--data.partitions=1-7)")] if self.eval_partition is not None else []
        problem = partition_list_problem(self.partitions)
        if problem:
            return [(("partitions",), f"{self.partitions!r}: {problem}")]
        found = []
        if self.eval_partition is not None and self.eval_partition in parse_partitions(self.partitions):
            found.append((("eval_partition",), f"{self.eval_partition} is also in data.partitions={self.partitions!r}: "
                                               "evaluate on a partition the run does not train on"))
        return found  # (data.eval_split=test with partitions is refused when the data is opened: resolve.build_data)


@dataclass(**SECTION)
class SyntheticConfig:
    """data.source = synthetic only: how the built-in generator draws (any schema's shape)."""

    zipf_alpha: NonNegativeFloat = _f(1.1, "Power-law exponent of id popularity (0 = uniform).")
    pooling_factor: Count = _f(1, "Mean ids per sample per table (multi-hot when > 1).")
    variable_pooling: bool = _f(
        False, "Draw each bag's length uniformly in [1, 2*pooling_factor-1] instead of fixed."
    )
    teacher_scale: finite() = _f(1.5, "Strength of the teacher's logit: higher = more signal.")
    eval_batches: Count = _f(16, "Global batches in the held-out evaluation split.")


@dataclass(**SECTION)
class MultiHotConfig:
    """data.source = columnar only: MLPerf DLRM-DCNv2's synthetic multi-hot expansion at load time."""

    sizes: Optional[Sizes] = _f(
        None, "Bag size per sparse feature (one value for all, or one per feature in schema order): id x of a "
        "feature becomes x and size-1 more ids at fixed seeded offsets modulo its table; unset: no expansion.")


# Which data sources a section, or a key of [data], applies to. A setting given (in a file or
# on the command line) for a job whose source it does not apply to is refused by name
# (config/loader.py): it would otherwise be ignored without a word.
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "synthetic": ("synthetic",),
    "multi_hot": ("columnar",),
    "data.data_dir": ("columnar",),
    "data.eval_split": ("columnar",),
    "data.shuffle": ("columnar",),
    "data.partitions": ("columnar",),
    "data.eval_partition": ("columnar",),
    "train.epochs": ("columnar",),
}

# What to use instead, where a setting's source has a way of its own.
INSTEAD: dict[str, str] = {
    "multi_hot": "the generator draws multi-hot bags itself: synthetic.pooling_factor, synthetic.variable_pooling",
    "train.epochs": "synthetic data is drawn without end, so it has no epoch: give train.steps",
}

# Keys that moved (issue 20): where each went, for the refusal that names it.
MOVED: dict[str, str] = {
    **{f"data.{k}": f"synthetic.{k}" for k in ("zipf_alpha", "pooling_factor", "variable_pooling",
                                                 "teacher_scale", "eval_batches")},
    "data.multi_hot_sizes": "multi_hot.sizes",
    "model.table_sizes": "the schema's parameters: --data.schema=demo:table_sizes=100/200/300 "
                         "(or criteo:table_sizes=...; a schema file gives each table's buckets)",
    "data.max_ind_range": "the schema's parameters: preprocess with `dlrm-data preprocess --schema "
                          "criteo:buckets=N` (a TorchRec-layout directory: `dlrm-data import-torchrec "
                          "DIR --out DIR2 --max-ind-range N`) and train with --data.source=columnar",
}
GONE_SOURCES: dict[str, str] = {
    "criteo": "Criteo days are a columnar directory now: preprocess them with `dlrm-data preprocess --schema "
              "criteo:days=7 --input train.txt --out DIR` (a TorchRec-layout directory: `dlrm-data "
              "import-torchrec DIR --out DIR2`) and train with --data.source=columnar --data.data_dir=DIR",
}


@dataclass(**SECTION)
class OptimConfig:
    """Optimizers and the learning-rate schedule (MLPerf DLRM style)."""

    embedding_optimizer: Literal[EMBEDDING_OPTIMIZERS] = _f(
        "adagrad", "Embedding optimizer (fused into backward): sgd, adagrad, rowwise_adagrad, adam (CUDA, or "
        "data_parallel tables on CPU)."
    )
    embedding_lr: PositiveRate = _f(0.05, "Peak learning rate of the embedding tables.")
    dense_optimizer: Literal[DENSE_OPTIMIZERS] = _f("adagrad", "Dense (MLP) optimizer: sgd, adagrad, adam.")
    dense_lr: PositiveRate = _f(0.005, "Peak learning rate of the MLPs.")
    eps: PositiveRate = _f(1e-8, "Epsilon of adagrad/adam.")
    warmup_steps: NonNegative = _f(0, "Linear warmup from 0 to the peak rate over this many steps.")
    decay_start_step: NonNegative = _f(0, "Step at which polynomial decay starts (0 = no decay).")
    decay_steps: NonNegative = _f(0, "Length of the polynomial decay.")
    decay_power: NonNegativeFloat = _f(2.0, "Power of the polynomial decay.")
    end_lr_factor: NonNegativeFloat = _f(0.0, "Final rate as a fraction of the peak, after decay.")

    @model_validator(mode="after")
    def _schedule(self) -> "OptimConfig":
        if self.decay_start_step and self.decay_start_step < self.warmup_steps:
            problems([(("decay_start_step",), f"decay_start_step={self.decay_start_step} is inside the warmup "
                                              f"(warmup_steps={self.warmup_steps})")])
        return self


@dataclass(**SECTION)
class ShardingConfig:
    """Where the embedding tables live."""

    sharding_type: Optional[Literal[SHARDING_TYPES]] = _f(
        None,
        "Force one sharding type for every table (data_parallel, table_wise, column_wise, "
        "row_wise, table_row_wise, table_column_wise); unset = TorchRec's planner decides.",
    )

    plan: Optional[PathText] = _f(
        None, "A plan file (from dlrm-plan make) to train with; checked against the model and job.")
    qcomms: Literal[QCOMMS] = _f("none", "Quantized embedding all-to-all (TorchRec QCommsConfig): none, fp16 or "
                                 "bf16 (forward and backward); cuts the bytes exchanged by half.")
    planner: Literal[PLANNERS] = _f(
        "dlrm_dist", "Planner when neither a plan nor a sharding type is given: dlrm_dist or torchrec.")
    calibration: Optional[PathText] = _f(
        None, "Plan with this machine's measured costs (planning/job_calibration.py): auto = measure in the "
              "job's process group before planning, kept as RUN_DIR/calibration.json and reused by a run that "
              "matches it; a path = that calibration file, measured and written there if it does not exist.")

    @model_validator(mode="after")
    def _one_placement(self) -> "ShardingConfig":
        if self.plan and self.sharding_type:
            problems([(("plan",), f"sharding.plan={self.plan!r} and sharding.sharding_type={self.sharding_type!r} "
                                  "both say where tables go: give one of them")])
        fixed = ("plan", self.plan) if self.plan else ("sharding_type", self.sharding_type)
        if self.calibration and fixed[1]:
            problems([(("calibration",), f"sharding.calibration={self.calibration!r} chooses a plan by measured "
                                         f"costs, but sharding.{fixed[0]}={fixed[1]!r} already fixes it: give one "
                                         "of them")])
        return self


@dataclass(**SECTION)
class EarlyStopConfig:
    """Stop when the eval metric stops improving, and keep the best model (its checkpoint, its test score)."""

    enabled: Optional[bool] = _f(
        None, "Unset: on when the data has a non-empty val split that is evaluated (data.eval_split = val) and "
        "no step count is given (train.steps / --steps); false: off; true: on (needs evaluations).")
    metric: Literal[STOP_METRICS] = _f("auc", "The eval metric judged: auc, logloss or ne.")
    mode: Optional[Literal[STOP_MODES]] = _f(None, "max or min; unset: max for auc, min for logloss and ne.")
    patience: Count = _f(3, "Stop after this many evaluations in a row without an improvement.")
    min_delta: NonNegativeFloat = _f(0.0, "An improvement is a change of more than this in the better direction.")

    @property
    def direction(self) -> str:
        """The mode in force: the given one, else the metric's natural one."""
        return self.mode or ("max" if self.metric == "auc" else "min")


@dataclass(**SECTION)
class TrainConfig:
    """The training run."""

    global_batch_size: Count = _f(2048, "Samples per step over all ranks (split evenly).")
    steps: Optional[Count] = _f(
        None, f"Training steps (a maximum under early stopping); unset: from train.epochs, else {DEFAULT_STEPS}.")
    epochs: Optional[Count] = _f(
        None, "columnar: train this many passes over the train split (steps = epochs x (its rows // "
        "global_batch_size): full batches only; the log says how many); not together with train.steps.")
    eval_interval: NonNegative = _f(200, "Evaluate every N steps (0 = only at the end).")
    log_interval: Count = _f(50, "Write a metrics line every N steps.")
    seed: Seed = _f(0, "Seed of the model's initial weights.")
    run_dir: PathText = _f("runs/latest", "Directory for metrics.jsonl and the run's summary.")
    progress: bool = _f(True, "Show a progress bar (rank 0).")
    checkpoint_dir: Optional[PathText] = _f(
        None, "Write sharded checkpoints here (and resume from the newest).")
    checkpoint_interval: NonNegative = _f(
        0, "Checkpoint every N steps (0 = only at the end); needs checkpoint_dir.")
    keep_last: NonNegative = _f(3, "Checkpoints to keep (0 = all).")
    resume: bool = _f(True, "Resume from the newest complete checkpoint in checkpoint_dir, if any.")
    checkpoint: Optional[PathText] = _f(
        None, "Start from this checkpoint (a step directory or a checkpoint_dir).")
    warm_start: Optional[PathText] = _f(
        None, "Start a new run from an earlier run's weights and optimizer state: a checkpoint step directory, "
        "a checkpoint_dir or a run directory (its best checkpoint, else its newest, as dlrm-export picks), at any "
        "world size or plan. The step counter, the data position and the LR schedule start again at 0 (warm-up "
        "again), and this run writes its own run_dir. Unlike train.checkpoint (which continues the old run's "
        "step) and resume (which continues this run): when train.checkpoint_dir already holds this run's own "
        "checkpoints and resume is on, the run resumes them and warm_start is not applied again.")
    inference_only: bool = _f(False, "Only evaluate the weights of train.checkpoint; no training.")
    progressive_validation: Optional[bool] = _f(
        None, "Progressive (\"next-day\") validation: when training visits day partitions in time order "
        "(data.partitions), each partition is first scored by the model as it stands, before training on it "
        "(metrics.jsonl records of kind progressive, TensorBoard, summary.json, dlrm-report). Unset: on exactly when "
        "the run trains over partitions; true: on (refused for data without partitions); false: off.")
    mixed_precision: Literal[MIXED_PRECISION] = _f(
        "none", "Dense part (MLPs, interaction) under autocast: none or bf16 (embeddings and the loss stay float32).")
    device: Literal[DEVICES] = _f(
        "auto", "auto: CUDA when torch sees a GPU, else CPU; cuda: fail at once if CUDA is unusable; "
        "cpu: never use a GPU")
    tf32: bool = _f(False, "CUDA: allow TF32 matrix multiplies and convolutions (no effect on CPU).")
    compile: bool = _f(False, "Compile the dense part (MLPs, interaction) with torch.compile (inductor).")
    tensorboard: bool = _f(True, "Write TensorBoard event files to run_dir/tensorboard (loss, eval metrics, "
                           "learning rates, samples/s, per-rank step time).")
    auc_max_samples: Count = _f(
        2**24, "Eval AUC is exact for splits of up to this many samples (12 bytes each, gathered to every rank "
        "to compute); larger splits get a binned AUC (constant memory).")
    # A nested section ([train.early_stop], --train.early_stop.KEY): config/loader.py builds it.
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig,
                                        metadata={"help": "[train.early_stop]: see its keys."})

    @model_validator(mode="after")
    def _needs(self) -> "TrainConfig":
        found = []
        if self.steps is not None and self.epochs is not None:
            found.append((("epochs",), f"train.steps={self.steps} and train.epochs={self.epochs} both say how long "
                                       "to train: give one of them"))
        if self.early_stop.enabled and self.eval_interval == 0:
            found.append((("early_stop", "enabled"), "is true, which needs evaluations to judge: set train.eval_interval > 0"))
        if self.checkpoint_interval and not self.checkpoint_dir:
            found.append((("checkpoint_dir",), f"is required when checkpoint_interval={self.checkpoint_interval}"))
        if self.inference_only and not self.checkpoint:
            found.append((("checkpoint",), "is required when inference_only = true (--checkpoint DIR)"))
        if self.progressive_validation and self.inference_only:
            found.append((("progressive_validation",), "is true, which scores each partition before training on "
                                                       "it: inference_only = true trains nothing"))
        if self.warm_start and self.checkpoint:
            found.append((("warm_start",), f"train.warm_start={self.warm_start!r} and train.checkpoint="
                                           f"{self.checkpoint!r} both say where the run starts: give one of them "
                                           "(warm_start restarts at step 0, checkpoint continues the old run's step)"))
        elif self.warm_start and self.inference_only:
            found.append((("warm_start",), "does not apply to inference_only = true, which trains nothing: "
                                           "evaluate a checkpoint with train.checkpoint"))
        problems(found)
        return self


@dataclass(**SECTION)
class Config:
    """The whole job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    multi_hot: MultiHotConfig = field(default_factory=MultiHotConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The feature schema written inline (a [features] section); resolved jobs carry the full
    # schema here, fitted statistics included, so a run directory or checkpoint says it all.
    # Its rules are the schema's (features/model.py): the loader checks it with the rest.
    features: Optional[dict[str, Any]] = None
