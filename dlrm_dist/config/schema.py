"""The configuration schema: one dataclass per section, a help text under every field.

Precedence when loading (see loader.py): command line > TOML file > these defaults.
The defaults are the demo: a 2-rank CPU run on synthetic Criteo-shaped data.
Checks that need only the config itself run in ``__post_init__``; checks that need the
job (world size, device) live in validate.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.names import DENSE_OPTIMIZERS, EMBEDDING_OPTIMIZERS, SHARDING_TYPES

INTERACTIONS = ("dot", "cat", "dcn")
LOSSES = ("bce", "mse")

DATA_SOURCES = ("synthetic", "criteo", "columnar")
QCOMMS = ("none", "fp16", "bf16")
MIXED_PRECISION = ("none", "bf16")
DEVICES = ("auto", "cpu", "cuda")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose help text becomes ``--help`` output."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _choice(section: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{section}.{name}={value!r} is not valid; choose one of: {', '.join(allowed)}"
        )


@dataclass
class ModelConfig:
    """The model: DLRM, or the Embedding+MLP (Deep Crossing) preset, over the schema's features."""

    arch: str = _f("dlrm", "dlrm, or embedding_mlp (dense + embeddings concatenated, an MLP; no bottom layers).")
    bottom_mlp: Optional[str] = _f(
        None,
        "Bottom MLP as DLRM writes it: input width (= the schema's dense features) then layer widths; "
        "unset: <dense>-512-256-64-<dim> (dlrm) or none (embedding_mlp).",
    )
    top_mlp: str = _f(
        "512-256-1", "Top MLP layer widths; its input width is computed; must end in 1."
    )
    embedding_dim: int = _f(16, "Embedding dimension of tables whose schema entry gives no dim.")
    table_sizes: Optional[list[int]] = _f(
        None, "Built-in Criteo-shaped schema only: rows of each table (unset: the demo's 26, or the data's)."
    )
    interaction: str = _f("dot", "Feature interaction: dot, cat or dcn (DCNv2 low-rank cross).")
    dot_self_interaction: bool = _f(False, "dot: also keep each feature's dot with itself.")
    dcn_num_layers: int = _f(3, "dcn: number of low-rank cross layers.")
    dcn_low_rank_dim: int = _f(512, "dcn: rank of each cross layer's weight factorisation.")
    residual_units: int = _f(0, "Deep Crossing residual units between the interaction and the top MLP.")
    residual_hidden: int = _f(256, "Inner width of each residual unit.")
    loss: str = _f("bce", "bce (binary cross-entropy on logits) or mse (on the sigmoid).")

    def __post_init__(self) -> None:
        _choice("model", "interaction", self.interaction, INTERACTIONS)
        if self.residual_units < 0 or self.residual_hidden < 1:
            raise ConfigError("model.residual_units must be >= 0 and model.residual_hidden >= 1")
        _choice("model", "loss", self.loss, LOSSES)
        if self.embedding_dim <= 0:
            raise ConfigError(f"model.embedding_dim={self.embedding_dim} must be positive")
        if self.table_sizes is not None and not self.table_sizes:
            raise ConfigError("model.table_sizes is empty: a DLRM needs at least one table")
        bad = [n for n in self.table_sizes or [] if n <= 0]
        if bad:
            raise ConfigError(f"model.table_sizes has non-positive sizes {bad}")


@dataclass
class DataConfig:
    """Where batches come from."""

    source: str = _f("synthetic", "Data source: synthetic (built-in generator), criteo (preprocessed Criteo days) "
                     "or columnar (`dlrm-data preprocess --schema` output).")
    data_dir: Optional[str] = _f(None, "criteo/columnar: the preprocessed directory.")
    schema: Optional[str] = _f(None, "Feature schema: a TOML/JSON file or a built-in name (demo, criteo); "
                               "unset: the [features] section, the data directory's, or the demo's.")
    eval_split: str = _f("val", "criteo: evaluate on val (first half of the last day) or test (second half).")
    max_ind_range: int = _f(0, "criteo: hash raw ids modulo this at load (directories without meta.json).")
    multi_hot_sizes: Optional[list[int]] = _f(
        None, "criteo: synthetic multi-hot bag size per feature (one value, or 26), as MLPerf DLRM-DCNv2."
    )
    shuffle: bool = _f(True, "criteo: visit training batches in a seeded permutation each epoch.")
    seed: int = _f(1234, "Seed of the data generator and of its hidden teacher model.")
    zipf_alpha: float = _f(1.1, "Power-law exponent of id popularity (0 = uniform).")
    pooling_factor: int = _f(1, "Mean ids per sample per table (multi-hot when > 1).")
    variable_pooling: bool = _f(
        False, "Draw each bag's length uniformly in [1, 2*pooling_factor-1] instead of fixed."
    )
    teacher_scale: float = _f(1.5, "Strength of the teacher's logit: higher = more signal.")
    eval_batches: int = _f(16, "Global batches in the held-out evaluation split.")

    def __post_init__(self) -> None:
        _choice("data", "source", self.source, DATA_SOURCES)
        _choice("data", "eval_split", self.eval_split, ("val", "test"))
        if self.source != "synthetic" and not self.data_dir:
            raise ConfigError(f"data.source={self.source} needs data.data_dir (the output of `dlrm-data preprocess`)")
        if self.pooling_factor < 1:
            raise ConfigError(f"data.pooling_factor={self.pooling_factor} must be >= 1")
        if self.zipf_alpha < 0:
            raise ConfigError(f"data.zipf_alpha={self.zipf_alpha} must be >= 0")
        if self.eval_batches < 1:
            raise ConfigError(f"data.eval_batches={self.eval_batches} must be >= 1")


@dataclass
class OptimConfig:
    """Optimizers and the learning-rate schedule (MLPerf DLRM style)."""

    embedding_optimizer: str = _f(
        "adagrad", "Embedding optimizer (fused into backward): sgd, adagrad, rowwise_adagrad, adam (CUDA, or data_parallel tables on CPU)."
    )
    embedding_lr: float = _f(0.05, "Peak learning rate of the embedding tables.")
    dense_optimizer: str = _f("adagrad", "Dense (MLP) optimizer: sgd, adagrad, adam.")
    dense_lr: float = _f(0.005, "Peak learning rate of the MLPs.")
    eps: float = _f(1e-8, "Epsilon of adagrad/adam.")
    warmup_steps: int = _f(0, "Linear warmup from 0 to the peak rate over this many steps.")
    decay_start_step: int = _f(0, "Step at which polynomial decay starts (0 = no decay).")
    decay_steps: int = _f(0, "Length of the polynomial decay.")
    decay_power: float = _f(2.0, "Power of the polynomial decay.")
    end_lr_factor: float = _f(0.0, "Final rate as a fraction of the peak, after decay.")

    def __post_init__(self) -> None:
        _choice("optim", "embedding_optimizer", self.embedding_optimizer, EMBEDDING_OPTIMIZERS)
        _choice("optim", "dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS)
        for name in ("embedding_lr", "dense_lr", "eps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"optim.{name}={value} must be a finite number > 0")
        for name in ("decay_power", "end_lr_factor"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be a finite number >= 0")
        if min(self.warmup_steps, self.decay_start_step, self.decay_steps) < 0:
            raise ConfigError("optim.warmup_steps, decay_start_step, decay_steps must be >= 0")
        if self.decay_start_step and self.decay_start_step < self.warmup_steps:
            raise ConfigError(
                f"optim.decay_start_step={self.decay_start_step} is inside the warmup "
                f"(warmup_steps={self.warmup_steps})"
            )


@dataclass
class ShardingConfig:
    """Where the embedding tables live."""

    sharding_type: Optional[str] = _f(
        None,
        "Force one sharding type for every table (data_parallel, table_wise, column_wise, "
        "row_wise, table_row_wise, table_column_wise); unset = TorchRec's planner decides.",
    )

    plan: Optional[str] = _f(None, "A plan file (from dlrm-plan make) to train with; checked against the model and job.")
    qcomms: str = _f("none", "Quantized embedding all-to-all (TorchRec QCommsConfig): none, fp16 or bf16 "
                     "(forward and backward); cuts the bytes exchanged by half.")
    planner: str = _f("dlrm_dist", "Planner when neither a plan nor a sharding type is given: dlrm_dist or torchrec.")

    def __post_init__(self) -> None:
        if self.sharding_type is not None:
            _choice("sharding", "sharding_type", self.sharding_type, SHARDING_TYPES)
        _choice("sharding", "planner", self.planner, ("dlrm_dist", "torchrec"))
        _choice("sharding", "qcomms", self.qcomms, QCOMMS)
        if self.plan and self.sharding_type:
            raise ConfigError(
                f"sharding.plan={self.plan!r} and sharding.sharding_type={self.sharding_type!r} "
                "both say where tables go: give one of them"
            )


@dataclass
class TrainConfig:
    """The training run."""

    global_batch_size: int = _f(2048, "Samples per step over all ranks (split evenly).")
    steps: int = _f(800, "Training steps.")
    eval_interval: int = _f(200, "Evaluate every N steps (0 = only at the end).")
    log_interval: int = _f(50, "Write a metrics line every N steps.")
    seed: int = _f(0, "Seed of the model's initial weights.")
    run_dir: str = _f("runs/latest", "Directory for metrics.jsonl and the run's summary.")
    progress: bool = _f(True, "Show a progress bar (rank 0).")
    checkpoint_dir: Optional[str] = _f(None, "Write sharded checkpoints here (and resume from the newest).")
    checkpoint_interval: int = _f(0, "Checkpoint every N steps (0 = only at the end); needs checkpoint_dir.")
    keep_last: int = _f(3, "Checkpoints to keep (0 = all).")
    resume: bool = _f(True, "Resume from the newest complete checkpoint in checkpoint_dir, if any.")
    checkpoint: Optional[str] = _f(None, "Start from this checkpoint (a step directory or a checkpoint_dir).")
    inference_only: bool = _f(False, "Only evaluate the weights of train.checkpoint; no training.")
    mixed_precision: str = _f("none", "Dense part (MLPs, interaction) under autocast: none or bf16 "
                              "(embeddings and the loss stay float32).")
    device: str = _f("auto", "auto: CUDA when torch sees a GPU, else CPU; cuda: fail at once if CUDA is unusable; "
                     "cpu: never use a GPU")
    tf32: bool = _f(False, "CUDA: allow TF32 matrix multiplies and convolutions (no effect on CPU).")
    compile: bool = _f(False, "Compile the dense part (MLPs, interaction) with torch.compile (inductor).")
    tensorboard: bool = _f(True, "Write TensorBoard event files to run_dir/tensorboard (loss, eval metrics, "
                           "learning rates, samples/s, per-rank step time).")
    auc_max_samples: int = _f(2**24, "Eval AUC is exact for splits of up to this many samples (12 bytes each, "
                              "gathered to every rank to compute); larger splits get a binned AUC (constant memory).")

    def __post_init__(self) -> None:
        for name in ("global_batch_size", "steps", "log_interval", "auc_max_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.eval_interval < 0:
            raise ConfigError(f"train.eval_interval={self.eval_interval} must be >= 0")
        if self.checkpoint_interval < 0 or self.keep_last < 0:
            raise ConfigError("train.checkpoint_interval and train.keep_last must be >= 0")
        if self.checkpoint_interval and not self.checkpoint_dir:
            raise ConfigError(f"train.checkpoint_interval={self.checkpoint_interval} needs train.checkpoint_dir")
        _choice("train", "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("train", "device", self.device, DEVICES)
        if self.inference_only and not self.checkpoint:
            raise ConfigError("train.inference_only needs train.checkpoint (--checkpoint DIR)")


@dataclass
class Config:
    """The whole job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The feature schema written inline (a [features] section); resolved jobs carry the full
    # schema here, fitted statistics included, so a run directory or checkpoint says it all.
    features: Optional[dict[str, Any]] = None
