"""Logging: the package's logger, shown by rank 0 only, and library noise silenced by name.

Modules log through ``logging.getLogger(__name__)`` (children of ``dlrm_dist``); nothing is
passed around. ``init_logging(rank)`` puts one handler on the package logger that writes
through ``tqdm.write`` (so messages do not tear a progress bar) and drops records of other
ranks unless they carry ``extra={"all_ranks": True}`` (torchtitan's rank-0 pattern).

Library chatter is silenced by logger name (TorchRec's planner, fbgemm's kernel
construction messages) and by the exact warning messages below, never by whole categories:
a deprecation in our own use of torch must still show up. ``KNOWN_WARNINGS`` is also what
the test suite ignores (tests/conftest.py), so the list has one home.
"""

from __future__ import annotations

import logging
import warnings

from tqdm import tqdm

PACKAGE = "dlrm_dist"

# (category, message regex matched at the message's start): warnings that libraries raise
# about themselves, which a user can do nothing about. Each says why it is safe.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # TorchRec 1.8's sharded state dicts hold ShardedTensors (no DTensor option for
    # EmbeddingBagCollection); reading their local shards is the documented way.
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    # TorchRec's DMP and sharded EBC still pass DDP's old argument internally.
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
    # fbgemm-gpu-cpu registers its dense (data-parallel) lookup without an autograd key;
    # its backward is correct (the equivalence tests cover data_parallel tables).
    (UserWarning, r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered"),
    # DCP reading a checkpoint in one process (export, tests) says it assumes that on purpose.
    (UserWarning, r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to load"),
    # fbgemm-gpu-cpu at import: SSD (GPU-only) lookups missing, and its own module layout.
    (DeprecationWarning, r"\x1b\[93m\s+Failed to import: fbgemm_gpu\.split_embedding_codegen_lookup_invokers"),
    (DeprecationWarning, r"\x1b\[93m\s+The Python module fbgemm_gpu\.split_table_batched_embeddings_ops is now DEPRECATED"),
    # TorchRec and fbgemm script modules with torch.jit at import.
    (DeprecationWarning, r"`torch\.jit\.(script|interface)` is deprecated"),
    # torchmetrics 1.0 (TorchRec's pin) compares versions with distutils at import.
    (DeprecationWarning, r"distutils Version classes are deprecated"),
    # The restricted unpickler about a crafted file's protocol, just before it refuses the file
    # (the refusal is the error the user sees, naming the file).
    (UserWarning, r"Detected pickle protocol \d+ in the checkpoint"),
)

# Loggers whose INFO/WARNING lines are per-rank or per-table noise on every run.
NOISY_LOGGERS = ("torchrec", "fbgemm_gpu", "torch.distributed", "torch.fx", "iopath")

logger = logging.getLogger(PACKAGE)


class RankZeroFilter(logging.Filter):
    """Lets through records of rank 0, and any record logged with ``extra={"all_ranks": True}``."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or bool(getattr(record, "all_ranks", False))


class TqdmHandler(logging.Handler):
    """Writes through ``tqdm.write`` so that log lines land above a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record))
        except Exception:  # noqa: BLE001 - a logging handler must never raise
            self.handleError(record)


def init_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Sets up the package logger for ``rank`` and quiets the libraries (idempotent)."""
    quiet_libraries()
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RankZeroFilter(rank))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def quiet_libraries(level: int = logging.ERROR) -> None:
    """Library loggers at ``level`` and above, the root at ERROR, the known warnings ignored.

    fbgemm_gpu installs a root handler at import time (force=True replaces it) and its kernels
    log every construction through the root logger at INFO; TorchRec's planner warns there
    about every data-parallel table.
    """
    logging.basicConfig(level=logging.ERROR, format="%(message)s", force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
