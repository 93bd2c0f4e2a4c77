"""Next-day AUC on a drifting click stream: a vocabulary frozen on day 1, hashing, managed collisions.

    python -m benchmarks.continuous_training [--days 10] [--rows 100000] [--work DIR]
        [--variants vocab,hash,managed] [--nproc 1] [--out benchmarks/results/DATE-continuous-training]

The stream is benchmarks/drift_stream.py's (users and items that arrive and fade, labels from a
latent-vector teacher). For each way of mapping the user and item ids to rows the benchmark runs
the product as a team would, every step a CLI:

1. ``dlrm-data preprocess --schema S --input day01.csv --out D --partition 1`` (the schema fitted on
   day 1: the ``vocab`` variant's vocabularies are day 1's values, frozen), then
   ``dlrm-data preprocess --append --out D --input dayNN.csv`` for each later day, and
   ``dlrm-data stats D --json`` (rows, positive rate and new-id rate per partition);
2. ``dlrm-train --data.partitions=1-(N-1) --data.eval_partition=N`` for one epoch (each day trained
   once, in time order) with progressive validation: each day is scored by the model trained on
   the days before it, before training on it. Day N's next-day score is the end-of-run evaluation of
   the eval partition (the model after days 1..N-1), so every day 2..N has one.

All variants get the same table rows: the ``hash`` and ``managed`` tables are given as many rows
as the frozen vocabulary has (day 1's distinct values plus its OOV row), read from the ``vocab``
directory. Recorded per variant: next-day AUC / NE / log-loss per day, their mean over days 2..N,
the training step time (the run's per-rank step ms and samples/s), and the memory of the id
tables from the last checkpoint's own tensors: embedding rows, their optimizer state and the
managed-collision remapper's buffers (sorted raw ids, row mapping, LRU/LFU state).
Results: a JSON record and a Markdown table under benchmarks/results/, with ``uptime`` loads
before and after (the machine is shared: step times are noisy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.drift_stream import StreamSpec, generate, schema_toml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIANTS = ("vocab", "hash", "managed", "managed_lfu")
ID_FEATURES = ("user_id", "item")
LABELS = {"vocab": "vocabulary frozen on day 1", "hash": "hashing (FNV-1a)",
          "managed": "managed collisions (LRU)", "managed_lfu": "managed collisions (LFU)"}


def _run(argv: list[str], log: Path, env: dict[str, str]) -> str:
    """Run one CLI step; its output goes to ``log`` (appended); a failure stops the benchmark naming it."""
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"continuous_training: step failed (exit {proc.returncode}): {shlex.join(argv)}\n"
                         f"{proc.stderr[-3000:]}")
    print(f"  {time.monotonic() - started:6.1f} s  {shlex.join(argv)[:150]}", flush=True)
    return proc.stdout


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build_directory(variant: str, stream: Path, schema: Path, out: Path, days: int, log: Path,
                    env: dict[str, str]) -> dict[str, Any]:
    """Day 1 as partition 1 (fitting the schema), days 2..N appended; the directory's stats (JSON)."""
    data = str(BIN / "dlrm-data")
    if out.exists():
        shutil.rmtree(out)
    _run([data, "preprocess", "--schema", str(schema), "--input", str(stream / "day01.csv"), "--out", str(out),
          "--partition", "1", "--no-progress"], log, env)
    for day in range(2, days + 1):
        _run([data, "preprocess", "--append", "--out", str(out), "--input", str(stream / f"day{day:02d}.csv"),
              "--no-progress"], log, env)
    return json.loads(_run([data, "stats", str(out), "--json"], log, env))


def table_rows(stats: dict[str, Any]) -> dict[str, int]:
    """Rows of each id feature's table, from ``dlrm-data stats --json``."""
    return {f["feature"]: int(f["table_size"]) for f in stats["features"] if f["feature"] in ID_FEATURES}


def train(variant: str, data_dir: Path, run_dir: Path, days: int, args: argparse.Namespace, log: Path,
          env: dict[str, str]) -> None:
    """One run over days 1..N-1 in time order (one epoch), evaluating day N at the end."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    launcher = ([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={args.nproc}", "-m", "dlrm_dist.train"]
                if args.nproc > 1 else [str(BIN / "dlrm-train")])
    _run(launcher + [
        "--data", "columnar", "--data-dir", str(data_dir), f"--data.partitions=1-{days - 1}",
        f"--data.eval_partition={days}", "--batch-size", str(args.batch_size), "--train.epochs=1",
        "--train.early_stop.enabled=false", "--model.bottom_mlp=2-32-16", "--model.top_mlp=64-32-1",
        "--run-dir", str(run_dir), "--checkpoint-dir", str(run_dir / "ckpt"), "--train.progress=false"], log, env)


def next_day_scores(run_dir: Path, days: int) -> list[dict[str, Any]]:
    """Per day 2..N: the model trained on the days before it, scored on it (progressive records, and the
    end-of-run evaluation for day N)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = [{"day": r["partition"], "auc": r["auc"], "ne": r["ne"], "logloss": r["logloss"], "rows": r["rows"],
            "step": r["step"], "source": "progressive"}
           for r in records if r.get("kind") == "progressive" and r["partition"] >= 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    last = summary["last"]
    out.append({"day": days, "auc": last["auc"], "ne": last["ne"], "logloss": last["logloss"],
                "rows": last["samples"], "step": last["step"], "source": "end-of-run eval (eval_partition)"})
    return sorted(out, key=lambda r: r["day"])


def id_table_bytes(run_dir: Path) -> dict[str, dict[str, int]]:
    """Bytes of each id table's state in the run's newest checkpoint: rows, optimizer state, remapper."""
    from dlrm_dist.checkpoint.reader import read_metadata  # the checked (allow-list) DCP metadata reader

    step = sorted((run_dir / "ckpt").glob("step_*"))[-1]
    sizes: dict[str, dict[str, int]] = {f: {"table": 0, "optimizer": 0, "remapper": 0} for f in ID_FEATURES}
    for key, entry in read_metadata(step).state_dict_metadata.items():
        if not hasattr(entry, "size"):
            continue
        nbytes = entry.properties.dtype.itemsize * _numel(entry.size)
        for f in ID_FEATURES:
            table = f"t_{f}"
            if f"_managed_collision_modules.{table}." in key:
                sizes[f]["remapper"] += nbytes
            elif key.endswith(f"embedding_bags.{table}.weight"):
                sizes[f]["table"] += nbytes
            elif key.startswith(f"emb_optim.{table}."):
                sizes[f]["optimizer"] += nbytes
    return sizes


def _numel(size: Any) -> int:
    n = 1
    for s in size:
        n *= int(s)
    return n


def prepare_variant(variant: str, stream: Path, work: Path, days: int, rows: dict[str, int] | None,
                    log: Path, env: dict[str, str]) -> None:
    """Write the variant's schema and its day-partitioned directory; its stats go to ``work/data/V.stats.json``."""
    ids, eviction = ("managed", "lfu") if variant == "managed_lfu" else (variant, "lru")
    schema = work / "schemas" / f"{variant}.toml"
    schema.parent.mkdir(parents=True, exist_ok=True)
    schema.write_text(schema_toml(ids, rows or 2, eviction))
    print(f"{variant}: {LABELS[variant]}", flush=True)
    stats = build_directory(variant, stream, schema, work / "data" / variant, days, log, env)
    (work / "data" / f"{variant}.stats.json").write_text(json.dumps(stats))


def run_dirs(work: Path, variant: str) -> list[Path]:
    """The variant's training runs: ``runs/V`` (the first) and ``runs/V.rK`` (repeats), in order."""
    repeats = sorted(work.glob(f"runs/{variant}.r*[0-9]"), key=lambda p: int(p.name.rsplit(".r", 1)[1]))
    return [work / "runs" / variant] + repeats


def train_variant(variant: str, work: Path, days: int, repeat: int, args: argparse.Namespace, log: Path,
                  env: dict[str, str]) -> None:
    """Train one variant once (repeat 0: ``runs/V``, else ``runs/V.rK``), recording the loads around it."""
    run_dir = work / "runs" / (variant if repeat == 0 else f"{variant}.r{repeat}")
    stats = work / "data" / f"{variant}.stats.json"
    if not stats.exists():  # a directory prepared by an earlier version of this script
        stats.write_text(_run([str(BIN / "dlrm-data"), "stats", str(work / "data" / variant), "--json"], log, env))
    print(f"{variant} (run {repeat + 1}):", flush=True)
    before = _uptime()
    train(variant, work / "data" / variant, run_dir, days, args, log, env)
    Path(f"{run_dir}.uptime.json").write_text(json.dumps({"before": before, "after": _uptime()}))


def window_step_ms(run_dir: Path) -> float:
    """The median over the run's log windows of rank 0's step time (robust to a busy moment)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    times = sorted(r["rank_step_ms"][0] for r in map(json.loads, filter(None, lines))
                   if r.get("kind") == "train" and r.get("rank_step_ms"))
    return times[len(times) // 2] if times else float("nan")


def collect_variant(variant: str, work: Path, days: int) -> dict[str, Any]:
    """One variant's figures, read from its run directories, checkpoint and stats: the scores and memory
    of the first run, the step times of every run (repeats alternate the variants)."""
    runs = run_dirs(work, variant)
    stats = json.loads((work / "data" / f"{variant}.stats.json").read_text())
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    scores = next_day_scores(runs[0], days)
    same = all([s["auc"] for s in next_day_scores(r, days)] == [s["auc"] for s in scores] for r in runs[1:])
    memory = id_table_bytes(runs[0])
    windows = [window_step_ms(r) for r in runs]
    return {"label": LABELS[variant], "schema": (work / "schemas" / f"{variant}.toml").read_text(),
            "table_rows": table_rows(stats), "next_day": scores,
            "mean_auc": sum(s["auc"] for s in scores) / len(scores),
            "mean_logloss": sum(s["logloss"] for s in scores) / len(scores),
            "runs": len(runs), "next_day_identical_across_runs": same,
            "step_ms": [s["rank_step_ms"][0] for s in summaries], "step_ms_median_window": windows,
            "step_ms_best": min(windows), "samples_per_s": [s["samples_per_s"] for s in summaries],
            "steps": summaries[0]["steps"], "memory_bytes": memory,
            "memory_total_bytes": sum(sum(v.values()) for v in memory.values()),
            "uptime": [json.loads(Path(f"{r}.uptime.json").read_text()) if Path(f"{r}.uptime.json").exists()
                       else None for r in runs],
            "partitions": stats.get("partitions")}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def write_markdown(record: dict[str, Any], path: Path) -> None:
    variants = record["variants"]
    names = list(variants)
    days = [s["day"] for s in variants[names[0]]["next_day"]]
    teacher = {d["day"]: d for d in record["stream"]["days"]}
    lines = [f"# Continuous training on a drifting stream ({record['date']})", "",
             f"`python -m benchmarks.continuous_training {record['argv']}` at commit {record['commit']}, "
             f"{record['machine']}. {record['stream']['spec']['days']} days x {record['stream']['spec']['rows']:,} "
             f"rows (benchmarks/drift_stream.py, seed {record['stream']['spec']['seed']}); each day trained once "
             f"in time order, {record['nproc']} rank(s), batch {record['batch_size']}; next-day AUC = the model "
             "trained on the days before, scored on the day before training on it (progressive validation; "
             "the last day by the end-of-run evaluation of the eval partition).", "",
             "Load: before `" + record["uptime_before"] + "`, after `" + record["uptime_after"] + "`.", "",
             "## Next-day AUC", "",
             "| day | unseen users / items (vs the day before) | teacher AUC | " + " | ".join(names) + " |",
             "| ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for i, day in enumerate(days):
        t = teacher[day]
        lines.append(f"| {day} | {t['users_unseen_yesterday']:.1%} / {t['items_unseen_yesterday']:.1%} | "
                     f"{t['teacher_auc']:.4f} | " + " | ".join(f"{variants[n]['next_day'][i]['auc']:.4f}" for n in names)
                     + " |")
    lines.append("| mean | | | " + " | ".join(f"**{variants[n]['mean_auc']:.4f}**" for n in names) + " |")
    lines += ["", "## Cost", "",
              "| variant | rows (user_id / item) | id tables: rows + optimizer + remapper, bytes | step ms per run "
              "(median of its log windows) | samples/s per run | mean next-day log-loss |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for n in names:
        v = variants[n]
        mem = v["memory_bytes"]
        parts = " + ".join(f"{sum(mem[f][k] for f in ID_FEATURES):,}" for k in ("table", "optimizer", "remapper"))
        lines.append(f"| {n}: {v['label']} | {v['table_rows']['user_id']:,} / {v['table_rows']['item']:,} | "
                     f"{parts} = {v['memory_total_bytes']:,} | "
                     f"{', '.join(f'{x:.1f}' for x in v['step_ms_median_window'])} | "
                     f"{', '.join(f'{x:,.0f}' for x in v['samples_per_s'])} | {v['mean_logloss']:.4f} |")
    lines += ["", "Next-day AUC identical across a variant's runs: "
              + ", ".join(f"{n} {'yes' if variants[n]['next_day_identical_across_runs'] else 'NO'}" for n in names)
              + ".", "", "Load around each training run (`uptime`):", ""]
    for n in names:
        for k, u in enumerate(variants[n]["uptime"]):
            if u:
                lines.append(f"- {n} run {k + 1}: before `{u['before']}`, after `{u['after']}`")
    lines += ["", "## Verdict", "", record["verdict"], ""]
    path.write_text("\n".join(lines))


def verdict(variants: dict[str, Any]) -> str:
    if "hash" not in variants or "managed" not in variants:
        return "(hash and managed were not both run)"
    h, m = variants["hash"], variants["managed"]
    wins = sum(a["auc"] > b["auc"] for a, b in zip(m["next_day"], h["next_day"]))
    diff = m["mean_auc"] - h["mean_auc"]
    word = "beat" if diff > 0 else "did not beat"
    return (f"Managed collisions (LRU) {word} hashing here: mean next-day AUC {m['mean_auc']:.4f} vs "
            f"{h['mean_auc']:.4f} ({diff:+.4f}), higher on {wins} of {len(m['next_day'])} days, with the same "
            f"table rows; the remapper costs {sum(m['memory_bytes'][f]['remapper'] for f in ID_FEATURES):,} bytes "
            f"beside the tables, and a step took {m['step_ms_best']:.1f} vs {h['step_ms_best']:.1f} ms (the best "
            "run's median log window).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.continuous_training", description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=StreamSpec.days)
    p.add_argument("--rows", type=int, default=StreamSpec.rows, help="rows per day")
    p.add_argument("--seed", type=int, default=StreamSpec.seed)
    p.add_argument("--variants", default="vocab,hash,managed", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--nproc", type=int, default=1, help="ranks (torchrun) per training run; 1 runs dlrm-train")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every step")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--work", type=Path, default=Path("/tmp/dlrm_continuous"))
    p.add_argument("--out", type=Path, default=None, help="results prefix (default benchmarks/results/DATE-continuous-training)")
    p.add_argument("--repeats", type=int, default=1, help="training runs per variant, alternated (step times)")
    p.add_argument("--train-only", action="store_true",
                   help="train again on the data directories of an earlier run in --work (no generating)")
    p.add_argument("--collect", action="store_true",
                   help="only read the figures of an earlier run in --work (same --days and --variants)")
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or a.days < 3:
        p.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})" if unknown else "--days must be >= 3")
    if variants[0] != "vocab":  # the other variants take their table rows from the frozen vocabulary
        variants = ["vocab"] + [v for v in variants if v != "vocab"]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "steps.log"
    if not (a.collect or a.train_only):
        log.write_text("")
    stream = a.work / "stream"
    record: dict[str, Any] = {"date": dt.date.today().isoformat(), "commit": _commit(),
                              "argv": shlex.join(argv if argv is not None else sys.argv[1:]),
                              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                              "nproc": a.nproc, "threads": a.threads, "batch_size": a.batch_size,
                              "uptime_before": _uptime()}
    if a.collect or a.train_only:  # an earlier run's work directory: its stream and data directories
        record["stream"] = json.loads((stream / "stream.json").read_text())
    else:
        print(f"generating {a.days} days x {a.rows:,} rows into {stream}", flush=True)
        record["stream"] = generate(StreamSpec(days=a.days, rows=a.rows, seed=a.seed, users=max(a.rows // 16, 1)),
                                    stream)
        rows = None
        for variant in variants:
            prepare_variant(variant, stream, a.work, a.days, rows, log, env)
            rows = rows or table_rows(json.loads((a.work / "data" / "vocab.stats.json").read_text()))
    if not a.collect:
        for repeat in range(a.repeats):  # alternated, so that a busy moment of the machine hits every variant
            for variant in variants:
                train_variant(variant, a.work, a.days, repeat, a, log, env)
    record["uptime_after"] = _uptime()
    results = {v: collect_variant(v, a.work, a.days) for v in variants}
    record["variants"] = results
    record["verdict"] = verdict(results)
    prefix = a.out or ROOT / "benchmarks" / "results" / f"{record['date']}-continuous-training"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(record, Path(f"{prefix}.md"))
    print(Path(f"{prefix}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
