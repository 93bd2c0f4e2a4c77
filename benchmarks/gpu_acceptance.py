"""GPU acceptance: one script that proves a machine trains dlrm_dist on its GPUs.

    python -m benchmarks.gpu_acceptance [--out acceptance.json] [--require-gpu] [--only NAME,...]

Runs in under 10 minutes on one GPU (the jobs use every GPU present), each check with its
own timeout, printing one ``PASS``/``FAIL``/``SKIP`` line per check and a JSON summary:

- stack: NVIDIA driver, the CUDA builds of torch and fbgemm, fbgemm's CUDA ops run, no CPU fbgemm
- cuda_tier: the tests marked ``cuda`` (tests/test_cuda.py, tests/unit/test_env.py)
- gpu_vs_cpu: the same small job on the GPUs and on CPU ranks: per-step losses within 1e-4
  (relative), eval AUC within 1e-3
- mixed_plan: a plan mixing fused, fused_uvm, fused_uvm_caching and data-parallel tables,
  trained with Adagrad and with Adam
- resume: checkpoint at step 15 of 30, resume; equal to an uninterrupted run (Adagrad, Adam)
- cpu_eval_int8: that checkpoint evaluated on CPU ranks, and exported with int8 tables
- memory: peak device memory of a run against its plan's estimate
- throughput: samples/s plain and with compile, bf16, TF32 and quantized all-to-all

On a machine without a usable GPU every GPU check is skipped with the reason (the stack
found) and the script exits 0, so CI runs it and it cannot rot; ``--require-gpu`` makes that
a failure (use it on the GPU machine: a silent CPU fallback must not look green).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data.schema=demo:table_sizes=1000/2000/500/800", "--model.bottom_mlp=13-32-16", "--model.embedding_dim=16",
         "--model.top_mlp=32-1", "--train.progress=false", "--train.log_interval=1", "--train.eval_interval=0",
         "--synthetic.eval_batches=4", "--train.tensorboard=false"]
LOSS_RTOL, AUC_ATOL = 1e-4, 1e-3


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail} ({self.seconds:.0f} s)"


class CheckFailed(Exception):
    """A check's finding (the message is its FAIL line)."""


# -- running jobs ---------------------------------------------------------------------------
def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], timeout: float, env: Optional[dict] = None) -> str:
    """Runs ``cmd`` from the repository root; its output, or CheckFailed naming the failure."""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd[:8])} ...") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise CheckFailed(f"exit {proc.returncode} from {' '.join(cmd[:8])} ...: {' | '.join(tail)}")
    return proc.stdout


def train(run_dir: Path, args: Sequence[str], nproc: int, device: str, timeout: float = 240) -> dict:
    """One training job on ``nproc`` ranks of ``device``; its summary plus per-step losses."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dlrm_dist.train", *SMALL, f"--train.device={device}", f"--run-dir={run_dir}", *args]
    env = _env()
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["OMP_NUM_THREADS"] = "1"
    run(cmd, timeout, env)
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            losses[record["step"]] = record["loss"]
    summary["losses"] = losses
    return summary


def close_losses(a: dict[int, float], b: dict[int, float], steps: Sequence[int], rtol: float) -> float:
    """The largest relative difference over ``steps``; CheckFailed if a step is missing."""
    missing = [s for s in steps if s not in a or s not in b]
    if missing:
        raise CheckFailed(f"steps {missing[:5]} missing from a run's metrics")
    worst = max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in steps)
    if not worst <= rtol:
        raise CheckFailed(f"per-step losses differ by {worst:.2e} relative (limit {rtol:g})")
    return worst


# -- the checks -----------------------------------------------------------------------------
class Acceptance:
    def __init__(self, work: Path, gpus: int) -> None:
        self.work, self.gpus = work, gpus
        self.nproc = max(gpus, 1)
        self.batch = [f"--train.global_batch_size={128 * self.nproc}"]
        self.resume_dirs: dict[str, Path] = {}

    def dir(self, name: str) -> Path:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stack(self) -> tuple[str, dict]:
        from dlrm_dist.distributed.stack import probe

        facts = probe()
        problems = facts.problems("cuda")
        if problems:
            raise CheckFailed("; ".join(problems) + f" ({facts.describe()})")
        return facts.describe(), asdict(facts)

    def cuda_tier(self) -> tuple[str, dict]:
        out = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "tests/unit/test_env.py"],
                  timeout=420)
        last = out.strip().splitlines()[-1]
        if "passed" not in last or "skipped" in last:
            raise CheckFailed(f"the CUDA tier did not run in full: {last}")
        return last, {}

    def gpu_vs_cpu(self) -> tuple[str, dict]:
        args = self.batch + ["--train.steps=20", "--sharding-type=table_wise"]
        gpu = train(self.dir("same_gpu"), args, self.nproc, "cuda")
        cpu = train(self.dir("same_cpu"), args, self.nproc, "cpu")
        worst = close_losses(gpu["losses"], cpu["losses"], range(1, 21), LOSS_RTOL)
        gap = abs(gpu["eval_auc"] - cpu["eval_auc"])
        if not gap <= AUC_ATOL:
            raise CheckFailed(f"eval AUC {gpu['eval_auc']:.5f} on GPU vs {cpu['eval_auc']:.5f} on CPU")
        return f"20 steps on {self.nproc} GPU(s) and CPU rank(s): losses within {worst:.1e}, AUC within {gap:.1e}", {
            "max_rel_loss_diff": worst, "auc_diff": gap}

    def mixed_plan_file(self) -> Path:
        kinds = [("table_wise", "fused"), ("table_wise", "fused_uvm"), ("table_wise", "fused_uvm_caching"),
                 ("data_parallel", "dense")]
        rows = [1000, 2000, 500, 800]
        inputs = {"tables": [{"name": f"t_cat_{i}", "rows": r, "dim": 16, "feature_names": [f"cat_{i}"],
                              "sharding_types": [st], "compute_kernels": [k]}
                             for i, (r, (st, k)) in enumerate(zip(rows, kinds))],
                  "topology": {"world_size": self.nproc, "ranks_per_host": self.nproc, "device": "cuda", "hbm_gb": 16.0}}
        path = self.dir("mixed") / "inputs.json"
        path.write_text(json.dumps(inputs))
        plan = self.dir("mixed") / "plan.json"
        run([sys.executable, "-m", "dlrm_dist.cli.plan_main", "make", "--inputs", str(path), "-o", str(plan)], 120)
        return plan

    def mixed_plan(self) -> tuple[str, dict]:
        plan = self.mixed_plan_file()
        found = {}
        for opt in ("adagrad", "adam"):
            s = train(self.dir(f"mixed_{opt}"), self.batch + [f"--plan={plan}", "--train.steps=20",
                                                               f"--optim.embedding_optimizer={opt}"], self.nproc, "cuda")
            if not all(math.isfinite(v) for v in s["losses"].values()):
                raise CheckFailed(f"{opt}: a loss is not finite")
            found[opt] = s["final_loss"]
        return "fused + fused_uvm + fused_uvm_caching + data_parallel trained with Adagrad and Adam", found

    def resume(self) -> tuple[str, dict]:
        out = {}
        for opt in ("adagrad", "adam"):
            common = self.batch + ["--sharding-type=table_wise", f"--optim.embedding_optimizer={opt}"]
            full = train(self.dir(f"resume_{opt}_full"), common + ["--train.steps=30"], self.nproc, "cuda")
            ckpt = self.dir(f"resume_{opt}_ckpt")
            train(self.dir(f"resume_{opt}_a"), common + ["--train.steps=15", f"--checkpoint-dir={ckpt}"],
                  self.nproc, "cuda")
            second = train(self.dir(f"resume_{opt}_b"), common + ["--train.steps=30", f"--checkpoint-dir={ckpt}"],
                           self.nproc, "cuda")
            out[opt] = close_losses(second["losses"], full["losses"], range(16, 31), 1e-6)
            self.resume_dirs[opt] = ckpt
        return "checkpoint at 15 of 30 and resumed: steps 16-30 equal the uninterrupted run (Adagrad, Adam)", out

    def cpu_eval_int8(self) -> tuple[str, dict]:
        ckpt = self.resume_dirs.get("adagrad")
        if ckpt is None:
            raise CheckFailed("needs the resume check's checkpoint (it failed or was not run)")
        s = train(self.dir("cpu_eval"), self.batch + ["--sharding-type=table_wise", "--inference-only",
                                                       f"--checkpoint={ckpt}"], 2, "cpu")
        run([sys.executable, "-m", "dlrm_dist.cli.export_main", str(ckpt), "--out", str(self.work / "int8"),
             "--quantize", "int8", "--no-progress"], 300)
        return f"evaluated on 2 CPU ranks (AUC {s['eval_auc']:.4f}) and exported with int8 tables", {
            "cpu_eval_auc": s["eval_auc"]}

    def memory(self) -> tuple[str, dict]:
        run_dir = self.dir("memory")
        code = ("import sys, torch; from dlrm_dist.train import run; run(sys.argv[1:]); "
                "print('PEAK', torch.cuda.max_memory_allocated())")
        out = run([sys.executable, "-c", code, *SMALL, "--train.device=cuda", "--train.steps=10",
                   "--train.global_batch_size=128", f"--run-dir={run_dir}"], 240)
        peak = int(next(x for x in out.splitlines() if x.startswith("PEAK")).split()[1])
        plan = json.loads((run_dir / "plan.json").read_text())
        estimate = int(plan["estimates"]["per_rank"][0]["hbm_bytes"])
        budget = int(plan["estimates"]["summary"]["hbm_budget_bytes"])
        if peak > budget:
            raise CheckFailed(f"peak {peak / 2**20:.1f} MB exceeds the plan's HBM budget {budget / 2**20:.1f} MB")
        return (f"peak {peak / 2**20:.1f} MB vs the plan's embedding estimate {estimate / 2**20:.1f} MB "
                f"(budget {budget / 2**20:.0f} MB)"), {"peak_bytes": peak, "estimate_bytes": estimate}

    def throughput(self) -> tuple[str, dict]:
        options = {"plain": [], "compile": ["--train.compile=true"], "bf16": ["--train.mixed_precision=bf16"],
                   "tf32": ["--train.tf32=true"], "qcomms_bf16": ["--sharding.qcomms=bf16"]}
        figures = {}
        for name, extra in options.items():
            s = train(self.dir(f"speed_{name}"), [f"--train.global_batch_size={2048 * self.nproc}", "--train.steps=60",
                                                  "--train.log_interval=20", *extra], self.nproc, "cuda", timeout=300)
            figures[name] = round(s["samples_per_s"])
        return ", ".join(f"{k} {v:,} samples/s" for k, v in figures.items()), figures


CHECKS: list[str] = ["stack", "cuda_tier", "gpu_vs_cpu", "mixed_plan", "resume", "cpu_eval_int8", "memory",
                     "throughput"]


def usable_gpus() -> tuple[int, str]:
    """(GPUs torch can use, the stack line that says why there are none)."""
    import torch

    from dlrm_dist.distributed.stack import probe

    if torch.cuda.is_available():
        return torch.cuda.device_count(), ""
    return 0, probe(run_kernels=False).describe()


def run_checks(names: Sequence[str], work: Path, gpus: int, why: str,
               emit: Callable[[Check], None]) -> list[Check]:
    acceptance = Acceptance(work, gpus)
    results = []
    for name in names:
        start = time.monotonic()
        if not gpus:
            check = Check(name, "SKIP", f"no usable GPU here ({why})")
        else:
            try:
                detail, data = getattr(acceptance, name)()
                check = Check(name, "PASS", detail, data=data)
            except CheckFailed as e:
                check = Check(name, "FAIL", str(e))
            except Exception as e:  # noqa: BLE001 - a broken check is a failed check, and the rest still run
                check = Check(name, "FAIL", f"{type(e).__name__}: {e}")
        check.seconds = time.monotonic() - start
        emit(check)
        results.append(check)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_acceptance", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the JSON summary here too")
    p.add_argument("--only", help=f"comma-separated checks (default all: {','.join(CHECKS)})")
    p.add_argument("--require-gpu", action="store_true", help="no usable GPU is a failure, not a skip")
    p.add_argument("--work-dir", help="keep the jobs' run directories here (default: a temporary directory)")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else CHECKS
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    gpus, why = usable_gpus()
    print(f"gpu_acceptance: {gpus} usable GPU(s)" + (f"; skipping every GPU check: {why}" if not gpus else ""),
          flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        work = Path(args.work_dir or tmp)
        results = run_checks(names, work, gpus, why, lambda c: print(c.line(), flush=True))
    failed = [c.name for c in results if c.status == "FAIL"] + (["no_gpu"] if args.require_gpu and not gpus else [])
    summary = {"gpus": gpus, "passed": not failed, "failed": failed, "checks": [asdict(c) for c in results]}
    text = json.dumps(summary, sort_keys=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
