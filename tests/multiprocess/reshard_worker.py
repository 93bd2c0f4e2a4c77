"""Rank-side code of the resharding tests: training phases that save, or resume from, a
checkpoint under a given sharding, at the world size of the calling ``run_ranks``.

A sharding named ``managed...`` is the managed-collision schema (tests/schemas/managed_reshard.toml),
row-wise (TorchRec's only sharding for it); ``managed-ws1`` is its source trained on one rank, and
a target named ``managed-warm`` starts from the source through ``--train.warm_start``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from dlrm_dist.checkpoint import optim_state, save_checkpoint
from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from tests.state_helper import gather_full_state_dict
from dlrm_dist.training.build import build_trainer, prepare
from tests.small_job import SMALL_JOB

K = 4  # steps before the checkpoint, and steps after it
BASE = SMALL_JOB + ["--train.eval_interval=0", "--synthetic.eval_batches=2", "--optim.embedding_lr=0.05",
                    "--optim.dense_lr=0.01"]
MANAGED = "managed"
WARM = "-warm"  # a target that warm-starts from the source instead of continuing it
MANAGED_SCHEMA = str(Path(__file__).resolve().parents[1] / "schemas" / "managed_reshard.toml")


def _args(sharding: str, optimizer: str) -> list[str]:
    if sharding.startswith(MANAGED):
        return BASE + [f"--data.schema={MANAGED_SCHEMA}", "--model.bottom_mlp=2-16-8", "--sharding-type=row_wise",
                       f"--optim.embedding_optimizer={optimizer}"]
    return BASE + [f"--sharding-type={sharding}", f"--optim.embedding_optimizer={optimizer}"]


def source_name(sharding: str, optimizer: str) -> str:
    return f"{sharding}-{optimizer}"


def _phase(env: DistEnv, out: Path, name: str, args: list[str], probe: bool, drop_state: bool = False) -> None:
    """Trains one phase; rank 0 writes its losses, evals and final weights to out/name.pt.

    ``probe``: load the checkpoint first, evaluate and save the model again (unchanged) to
    out/name/probe, so a test can read what was loaded. ``drop_state``: then zero the
    embedding optimizer's state, as a path that reshards weights only would leave it.
    """
    cfg = load_config(args + [f"--run-dir={out / name}"])
    trainer = build_trainer(env, prepare(cfg, env))
    loaded = None
    if probe:
        (out / name).mkdir(exist_ok=True)  # the metrics log's directory (train() makes it later)
        trainer.step = trainer.checkpoints.restore() or 0  # (a warm start: step 0)
        loaded = trainer.evaluate()
        save_checkpoint(out / name / "probe", trainer.step, trainer.model, trainer.optimizer,
                        trainer.checkpoints.info, keep_last=0)
        if drop_state:
            with torch.no_grad():
                for slot in optim_state.slots(trainer.optimizer, cfg.optim.embedding_optimizer,
                                              trainer.model.state_dict()):
                    for t in [slot.live] if slot.replicated else [s.tensor for s in slot.live.local_shards()]:
                        t.zero_()
        # loaded: train() must not load it again
        trainer.checkpoints.policy = replace(trainer.checkpoints.policy, load_from=None, warm_start=None)
    result = trainer.train()
    weights = gather_full_state_dict(trainer.model)
    if env.is_main:
        torch.save({"losses": result.losses, "eval": result.final_eval.to_dict(), "loaded_eval": loaded and loaded.to_dict(), "weights": weights},
                   out / f"{name}.pt")
    dist.barrier()


def _sources(env: DistEnv, root: Path, layouts: list[tuple[str, str]]) -> None:
    for sharding, optimizer in layouts:
        name = source_name(sharding, optimizer)
        _phase(env, root, name, _args(sharding, optimizer) + [f"--train.checkpoint_dir={root / name / 'ckpt'}",
                                                              f"--train.steps={K}"], probe=False)
        if sharding.startswith(MANAGED):
            continue  # no never-resharded run to follow: at another world size ids are remapped otherwise
        _phase(env, root, f"{name}-continued", _args(sharding, optimizer) + [
            f"--train.checkpoint={root / name / 'ckpt'}", f"--train.steps={2 * K}"], probe=False)


def _resharded(env: DistEnv, root: Path, cases: list[tuple[str, str, str]],
               control: tuple[str, str, str] | None) -> None:
    runs = [(case, False) for case in cases] + ([(control, True)] if control else [])
    for (src, dst, optimizer), drop in runs:
        ckpt = root / source_name(src, optimizer) / "ckpt"
        name = f"{src}-to-{dst}-{optimizer}-ws{env.world_size}" + ("-dropped" if drop else "")
        start = [f"--train.warm_start={ckpt}", f"--train.steps={K}"] if dst.endswith(WARM) else [
            f"--train.checkpoint={ckpt}", f"--train.steps={2 * K}"]
        _phase(env, root, name, _args(dst, optimizer) + start, probe=True, drop_state=drop)


def sources(out: str, layouts: list[tuple[str, str]], cases: list[tuple[str, str, str]] = (),
            control: tuple[str, str, str] | None = None) -> None:
    """For each (sharding, optimizer): K steps with a checkpoint at K, then K more from it
    under the same sharding (the run that never reshards). Then, in the same process group,
    ``resharded``'s ``cases`` and ``control`` at this world size (a second spawn of the same
    world would only add process starts)."""
    env = DistEnv.from_environ(device="cpu")
    init_distributed(env, timeout_s=120)
    try:
        _sources(env, Path(out), layouts)
        _resharded(env, Path(out), list(cases), control)
    finally:
        teardown()


def resharded(out: str, cases: list[tuple[str, str, str]], control: tuple[str, str, str] | None = None) -> None:
    """For each (source sharding, target sharding, optimizer): resume the source's checkpoint
    under the target sharding, probe what was loaded, train K more steps. ``control``: one more
    such case, named '...-dropped', with the embedding optimizer state zeroed after loading."""
    env = DistEnv.from_environ(device="cpu")
    init_distributed(env, timeout_s=120)
    try:
        _resharded(env, Path(out), cases, control)
    finally:
        teardown()
