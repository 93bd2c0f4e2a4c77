"""The launchers refuse a plan of another shape before starting anything, the torchx role
follows the device, and every launch line of the README runs (dry) against the plans it
names (issue 24 items 5 and 9)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from torchx.specs.builders import materialize_appdef

from launch.components import trainer
from dlrm_dist.distributed.plan_shape import LaunchShapeError, check_plan_shape, plan_argument
from launch.torchrun import build_command

ROOT = Path(__file__).resolve().parents[2]
PLAN8 = "sharding_plans/mlperf_dcnv2_criteo1tb_gpu8x80gb.json"
PLAN16 = "sharding_plans/mlperf_dcnv2_criteo1tb_gpu16x80gb.json"
GPUS_PER_NODE = 8  # the README's GPU nodes


def test_plan_argument_forms() -> None:
    assert plan_argument(["--steps", "3", "--plan", "a.json"]) == "a.json"
    assert plan_argument(["--sharding.plan=b.json"]) == "b.json"
    assert plan_argument(["--plan=a.json", "--plan", "c.json"]) == "c.json"  # the last wins, as in the trainer
    assert plan_argument(["--steps", "3"]) is None


def test_a_plan_for_another_shape_is_refused_naming_both() -> None:
    assert check_plan_shape(["--plan", PLAN8], 1, 8, cwd=ROOT) == PLAN8
    assert check_plan_shape(["--plan", PLAN16], 2, 8, cwd=ROOT) == PLAN16
    with pytest.raises(LaunchShapeError, match=r"made for 8 ranks, the launch starts 2 node\(s\) x 8 = 16"):
        check_plan_shape(["--plan", PLAN8], 2, 8, cwd=ROOT)
    # Same world size, other hosts: an 8-per-host plan on 4 x 4 would put shards on cuda:5.
    with pytest.raises(LaunchShapeError, match="places 8 ranks per host, the launch starts 4 per node"):
        check_plan_shape(["--plan", PLAN16], 4, 4, cwd=ROOT)
    assert check_plan_shape(["--plan", "/in/the/image.json"], 2, 8, cwd=ROOT) is None  # left to the trainer


def test_both_launchers_check_the_plan() -> None:
    with pytest.raises(LaunchShapeError):
        build_command(["--nnodes", "2", "--rdzv-endpoint", "h:1", "--", "--plan", PLAN8], {}, gpus=8)
    with pytest.raises(LaunchShapeError):
        trainer("--plan", PLAN8, nnodes=2, gpu=8)


def test_torchx_role_follows_the_device() -> None:
    gpu = materialize_appdef(trainer, ["--nnodes", "2", "--gpu", "8", "--devices", "/dev/infiniband",
                                       "--env", "NCCL_SOCKET_IFNAME=eth0", "--", "--steps", "3"]).roles[0]
    assert (gpu.num_replicas, gpu.resource.gpu, gpu.resource.cpu, gpu.resource.memMB) == (2, 8, 64, 512_000)
    command = gpu.args[-1]
    assert "--nproc_per_node 8" in command and command.endswith("--steps 3 --train.device=cuda")
    assert gpu.env["NCCL_SOCKET_IFNAME"] == "eth0" and gpu.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert [(m.src_path, m.permissions) for m in gpu.mounts] == [("/dev/infiniband", "rwm")]
    given = materialize_appdef(trainer, ["--gpu", "4", "--cpu", "16", "--", "--train.device=auto"]).roles[0]
    assert (given.resource.cpu, given.resource.memMB) == (16, 256_000) and "--train.device=cuda" not in given.args[-1]
    cpu = materialize_appdef(trainer, ["--", "--steps", "3"]).roles[0]
    assert (cpu.resource.gpu, cpu.resource.cpu, cpu.resource.memMB) == (0, 2, 8192)
    assert "--nproc_per_node 2" in cpu.args[-1] and "train.device" not in cpu.args[-1]


def readme_launch_lines() -> list[list[str]]:
    """Every launch.torchrun / torchx command in the README's code blocks, continuations joined."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if "launch.torchrun" in line or line.startswith("torchx run") or " torchx run " in line:
                commands.append(shlex.split(line))
    return commands


def _dry_run(words: list[str]) -> None:
    # Only the leading NAME=value words are the shell's environment; later ones are arguments.
    lead = next((i for i, w in enumerate(words) if not re.fullmatch(r"[A-Z_]+=\S*", w)), len(words))
    env = dict(w.split("=", 1) for w in words[:lead])
    env = {k: "0" if v.startswith("$") else v for k, v in env.items()}  # NODE_RANK=$i: any node
    words = words[lead:]
    if "launch.torchrun" in words:
        argv = words[words.index("launch.torchrun") + 1:]
        gpus = GPUS_PER_NODE if plan_argument(argv) else 0
        build_command(argv, env, gpus)  # what --dry-run prints, shape check included
    else:
        component = next(i for i, w in enumerate(words) if w.endswith("components.py:trainer"))
        materialize_appdef(trainer, words[component + 1:])  # what torchx --dryrun renders


def test_readme_launch_lines_run_against_the_plans_they_name(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    commands = readme_launch_lines()
    with_plans = [c for c in commands if plan_argument(c) and (ROOT / plan_argument(c)).is_file()]
    assert len(commands) >= 6 and len(with_plans) >= 2, commands
    for words in commands:
        _dry_run(words)
