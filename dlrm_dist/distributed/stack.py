"""What the installed stack can run on: the NVIDIA driver, the torch and fbgemm builds, their CUDA.

PyPI's Linux torch 2.13 is a CUDA 13 build (fbgemm-gpu 1.8 too); on a driver older than the
one CUDA 13 needs, ``torch.cuda.is_available()`` is simply False and everything would
quietly run on the CPU. This module collects the facts that explain such a machine in one
line (``Stack.describe``) and lists what stops a device from working (``Stack.problems``), for
``train.device=cuda``, ``make install`` and the GPU acceptance script.

Importing it costs nothing: torch is imported by ``probe`` only, so the Makefile can run
``python -m dlrm_dist.distributed.stack`` right after installing.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

CUDA_DRIVER_NEEDED = "R580"  # CUDA 13.0's minimum Linux driver (580.x), what PyPI's torch 2.13 is built for
FBGEMM_DISTRIBUTIONS = {"cpu": "fbgemm-gpu-cpu", "cuda": "fbgemm-gpu"}  # one import package, two distributions
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class Stack:
    """Facts about this machine's stack (strings as found; None when absent)."""

    torch_version: Optional[str]
    torch_cuda: Optional[str]  # torch.version.cuda: None for a CPU build
    cuda_available: bool
    device_count: int
    driver: Optional[str]  # the NVIDIA kernel driver's version, if one is loaded
    fbgemm: dict[str, str] = field(default_factory=dict)  # installed distribution -> version
    fbgemm_cuda_ops: Optional[str] = None  # "ok" or why fbgemm's CUDA kernels did not run; None: not tried

    @property
    def fbgemm_flavours(self) -> list[str]:
        return [flavour for flavour, dist in FBGEMM_DISTRIBUTIONS.items() if dist in self.fbgemm]

    def describe(self) -> str:
        """One line naming the driver, torch's build and CUDA, and the fbgemm build(s)."""
        torch_build = f"torch {self.torch_version} " + (f"(CUDA {self.torch_cuda} build)" if self.torch_cuda
                                                        else "(CPU build)")
        fbgemm = ", ".join(f"{d} {v}" for d, v in sorted(self.fbgemm.items())) or "no fbgemm installed"
        driver = f"NVIDIA driver {self.driver}" if self.driver else "no NVIDIA driver loaded"
        gpus = f"{self.device_count} GPU(s) usable" if self.cuda_available else "torch sees no usable GPU"
        return f"{driver}; {torch_build}; {fbgemm}; {gpus}"

    def problems(self, device: str, need_gpu: bool = True) -> list[str]:
        """What stops ``device`` ("cpu" or "cuda") from working with this stack ([] if nothing)."""
        out = []
        flavours = self.fbgemm_flavours
        if len(flavours) > 1:
            out.append(f"two fbgemm builds are installed ({', '.join(FBGEMM_DISTRIBUTIONS[f] for f in flavours)}; "
                       "they share one import package): reinstall with `make install DEVICE=...`")
        if device == "cpu":
            if "cpu" not in flavours:
                out.append(f"{FBGEMM_DISTRIBUTIONS['cpu']} is not installed")
            return out
        if not self.torch_cuda:
            out.append(f"torch {self.torch_version} is a CPU build (torch.version.cuda is None)")
        if "cuda" not in flavours:
            out.append(f"{FBGEMM_DISTRIBUTIONS['cuda']} (the CUDA build of fbgemm) is not installed")
        if need_gpu and self.torch_cuda and not self.cuda_available:
            driver = f"NVIDIA driver {self.driver}" if self.driver else "no NVIDIA driver"
            out.append(f"torch.cuda.is_available() is False with {driver}: torch {self.torch_version} is built for "
                       f"CUDA {self.torch_cuda}, which needs driver {CUDA_DRIVER_NEEDED} or newer (nvidia-smi shows it)")
        if need_gpu and self.cuda_available and self.fbgemm_cuda_ops not in (None, "ok"):
            out.append(f"fbgemm's CUDA kernels do not run: {self.fbgemm_cuda_ops}")
        return out


def driver_version(version_file: Path = DRIVER_VERSION_FILE) -> Optional[str]:
    """The loaded NVIDIA kernel driver's version (e.g. "580.65.06"), or None."""
    try:
        text = version_file.read_text()
    except OSError:
        text = ""
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    if found:
        return found.group(1)
    try:  # containers often lack /proc/driver/nvidia but have nvidia-smi
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def installed_fbgemm() -> dict[str, str]:
    found = {}
    for dist in FBGEMM_DISTRIBUTIONS.values():
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _fbgemm_cuda_ops() -> str:
    """Runs one fbgemm CUDA kernel (the ops register on import); "ok" or the error."""
    try:
        import fbgemm_gpu  # noqa: F401 - registers torch.ops.fbgemm
        import torch

        x = torch.tensor([1, 2, 3], dtype=torch.int64, device="cuda")
        out = torch.ops.fbgemm.asynchronous_complete_cumsum(x)
        return "ok" if out.tolist() == [0, 1, 3, 6] else f"asynchronous_complete_cumsum returned {out.tolist()}"
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def probe(run_kernels: bool = True) -> Stack:
    """This machine's stack; with ``run_kernels``, fbgemm's CUDA ops are tried where a GPU is usable."""
    import torch

    available = torch.cuda.is_available()
    return Stack(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        cuda_available=available,
        device_count=torch.cuda.device_count() if available else 0,
        driver=driver_version(),
        fbgemm=installed_fbgemm(),
        fbgemm_cuda_ops=_fbgemm_cuda_ops() if run_kernels and available else None,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dlrm_dist.distributed.stack --device cuda``: exit 1 naming every problem."""
    p = argparse.ArgumentParser(prog="python -m dlrm_dist.distributed.stack", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=sorted(FBGEMM_DISTRIBUTIONS), required=True)
    p.add_argument("--no-gpu", action="store_true",
                   help="check the builds only (an image built on a machine without a GPU)")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = p.parse_args(argv)
    stack = probe(run_kernels=not args.no_gpu)
    if args.json:
        import json

        print(json.dumps(asdict(stack), sort_keys=True))
    problems = stack.problems(args.device, need_gpu=not args.no_gpu)
    for problem in problems:
        print(f"stack: error: {problem}", file=sys.stderr)
    print(f"stack {'ok' if not problems else 'NOT usable'} for {args.device}: {stack.describe()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
