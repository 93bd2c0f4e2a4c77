"""Logging setup: keeps library chatter (TorchRec's per-rank warnings) off the console."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries(level: int = logging.ERROR) -> None:
    """Library loggers only at ``level`` and above; the root at ERROR.

    fbgemm_gpu installs a root handler at import time (force=True replaces it) and its
    kernels log every construction through the root logger at INFO; TorchRec's planner warns
    there about every data-parallel table.
    """
    logging.basicConfig(level=logging.ERROR, format="%(message)s", force=True)
    for name in ("torchrec", "fbgemm_gpu", "torch.distributed", "torch.fx", "iopath"):
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
