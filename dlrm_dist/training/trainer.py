"""The training loop: a table of contents of named steps; everything else is delegated.

Training runs in segments between evaluations. Each segment is drained through TorchRec's
``TrainPipelineSparseDist`` (which starts the next batch's input all-to-all while the
current one computes), so an evaluation never meets batches in flight.

Under early stopping (training/early_stop.py) each evaluation is judged; one that improves
is checkpointed (when a checkpoint_dir is set), the run stops after ``patience`` evaluations
without an improvement, and at the end the best model is loaded and scored once on the test
split, if the data has one.

A run over day partitions scores each partition before training on it (progressive validation,
training/progressive.py): a segment ends at each partition's first step, and the partition is
scored there after the periodic evaluation and before that step's checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from dlrm_dist.checkpoint import CheckpointManager
from dlrm_dist.checkpoint.manager import WarmStart
from dlrm_dist.checkpoint.manifest import BestMark
from dlrm_dist.config.sections import Config
from dlrm_dist.data import Dataset, teacher_auc
from dlrm_dist.data.prefetch import Prefetcher
from dlrm_dist.distributed.commstats import CommCounter
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.distributed.parallel import restore_optimizer_step, train_pipeline
from dlrm_dist.errors import EXIT_DIVERGED, DlrmError
from dlrm_dist.metrics.eval import METRIC_NAMES, EvalMetrics, EvalResult
from dlrm_dist.metrics.log import MetricsLog
from dlrm_dist.metrics.progressive import PROGRESSIVE
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.training.divergence import diverged_fields, diverged_message, find_bad_input
from dlrm_dist.training.early_stop import StopRule, Verdict, rank0_value
from dlrm_dist.training.length import split_rows
from dlrm_dist.training.optimizer_setup import ScheduledLR
from dlrm_dist.training.progressive import ProgressiveSchedule, partition_spans, score_record
from dlrm_dist.training.timing import WindowTimer

logger = logging.getLogger(__name__)


class DivergedError(DlrmError):
    """The loss became NaN or infinite; the message names the step and the newest good checkpoint."""

    exit_code = EXIT_DIVERGED


@dataclass
class TrainResult:
    """What a run produced (identical on every rank)."""

    losses: list[float] = field(default_factory=list)  # global mean loss of each step (gathered per log interval)
    evals: list[EvalResult] = field(default_factory=list)
    samples_per_s: float = 0.0
    rank_step_ms: list[float] = field(default_factory=list)  # mean step time of each rank
    # Embedding-exchange bytes (all-to-all, reduce-scatter) received per training sample,
    # measured on each rank (train and eval steps both count; see distributed/commstats.py).
    a2a_bytes_per_sample: list[float] = field(default_factory=list)
    teacher_auc: Optional[float] = None  # synthetic data only: the best reachable AUC
    step: int = 0  # the model's step at the end (the checkpoint's, for --inference-only)
    # Early stopping (None when it is off):
    best: Optional[BestMark] = None  # the best evaluation (of this run or, resumed, of an earlier process)
    best_kept: bool = False  # its checkpoint exists (a checkpoint_dir was set)
    stopped: Optional[str] = None  # why the run stopped before train.steps
    test: Optional[EvalResult] = None  # the test split, scored once at the end
    test_model: Optional[str] = None  # "best" or "last": which model the test score is of
    warm_start: Optional[WarmStart] = None  # the checkpoint this run was warm-started from
    # Progressive validation: each partition's record (metrics/progressive.py), scored before training on it;
    # a resumed run's list starts with the earlier processes' records (read back from metrics.jsonl).
    progressive: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_eval(self) -> Optional[EvalResult]:
        return self.evals[-1] if self.evals else None

    @property
    def best_eval(self) -> Optional[EvalResult]:
        """The best evaluation's full metrics, if this process ran it."""
        return next((e for e in self.evals if self.best and e.step == self.best.step), None)


def test_line(result: EvalResult, split: str = "test", model: Optional[str] = None) -> str:
    """``test (best, step 100): auc 0.9433  ne ...``: a split scored with a named model."""
    parts = "  ".join(f"{name} {getattr(result, name):.4f}" for name in METRIC_NAMES)
    return f"{split} ({model or 'last'}, step {result.step}): {parts}  ({result.samples:,} samples)"


class Trainer:
    """Runs ``cfg.train.steps`` steps of a sharded model, evaluating as configured."""

    def __init__(
        self,
        cfg: Config,
        env: DistEnv,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr: ScheduledLR,
        data: Dataset,
        log: MetricsLog,
        checkpoints: CheckpointManager,
    ) -> None:
        self.cfg, self.env, self.model, self.optimizer = cfg, env, model, optimizer
        self.lr, self.data, self.log, self.checkpoints = lr, data, log, checkpoints
        self.pipeline = train_pipeline(model, optimizer, env.device)  # prefetching for UVM-cached tables on CUDA
        self.step = 0  # global step (restored on resume); also the data position
        self.steps_run = 0  # steps run by this process
        self._checked = 0  # losses already checked to be finite
        self.comms = CommCounter()
        self.train_seconds = 0.0
        self.last_rank_step_ms: list[float] = []  # each rank's mean step time over the last log window
        es = cfg.train.early_stop
        self.stop = StopRule(es.metric, es.direction, es.patience, es.min_delta) if es.enabled else None
        self.progressive: Optional[ProgressiveSchedule] = None  # set when training starts (it needs the step)

    # -- the loop -----------------------------------------------------------------------
    def train(self) -> TrainResult:
        try:
            return self._train()
        finally:
            self.comms.close()  # the wrapped collectives are restored whatever happened
            self.log.close()

    def _train(self) -> TrainResult:
        result = TrainResult(teacher_auc=teacher_auc(self.data, self.cfg.train.global_batch_size))
        if self.cfg.train.inference_only:
            self.step = self.checkpoints.restore(weights_only=True) or 0  # evaluated at the checkpoint's step
            self.log.start(resumed=False)
            result.evals.append(self.evaluate())
            result.step = self.step
            return result
        resumed = self.checkpoints.restore()
        if resumed is not None:
            self.step = resumed
            restore_optimizer_step(self.model, resumed)  # fbgemm's Adam step counter is not in the checkpoint
        warm = result.warm_start = self.checkpoints.warm_started
        if warm is not None:
            # The moments loaded are the source's: their bias correction goes on at its step,
            # while this run's own step (data position, LR schedule) starts again at 0.
            restore_optimizer_step(self.model, warm.step)
        self.start_stopping()
        self.log.start(resumed=self.step > 0, step=self.step)
        if warm is not None:
            self.log.write("warm_start", 0, checkpoint=str(warm.path), source_step=warm.step)
        self.start_progressive(result)
        self.score_partitions(result)  # a fresh run's first partition, before its first step
        bar = tqdm(total=self.cfg.train.steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.env.is_main and self.cfg.train.progress))
        for end, actions in self.schedule():
            if self.stop is not None and self.stop.stopped:
                result.stopped = self.stop.reason()  # resumed where the run stopped: it stays stopped
                break
            self.train_segment(end, result, bar)
            if self.at_boundary(actions, result):
                break
        bar.close()
        if not result.evals:  # resumed at the last step: still report the model
            result.evals.append(self.evaluate())
        result.step = self.step
        if self.stop is not None:
            self.finish_best(result)
        result.samples_per_s = len(result.losses) * self.cfg.train.global_batch_size / max(self.train_seconds, 1e-9)
        result.rank_step_ms = self.rank_step_ms()
        result.a2a_bytes_per_sample = self.exchange_bytes_per_sample()
        return result

    def at_boundary(self, actions: set[str], result: TrainResult) -> bool:
        """Evaluates, judges and checkpoints as due at a segment's end; True: stop early here.

        The evaluation comes first, so the checkpoint's manifest names the best as of this
        step; an evaluation that improves (and the one that stops the run) is checkpointed
        even when no save was due, so the best model can be kept and the stop resumed.
        """
        verdict = Verdict(improved=False, stop=False)
        if "eval" in actions:
            result.evals.append(self.evaluate())
            verdict = self.judge(result.evals[-1])
        if "progressive" in actions:  # before the checkpoint: a run resumed here does not score it again
            self.score_partitions(result)
        if "checkpoint" in actions or ((verdict.improved or verdict.stop) and self.checkpoints.enabled):
            self.checkpoints.save(self.step, best=self.stop.best if self.stop else None)
        if verdict.stop:
            assert self.stop is not None
            result.stopped = self.stop.reason()
            self.log.write("early_stop", self.step, reason=result.stopped, best_step=self.stop.best_step)
            logger.info("early stop at step %d: %s", self.step, result.stopped)
        return verdict.stop

    def schedule(self) -> list[tuple[int, set[str]]]:
        """(step, {"eval", "checkpoint"}) at every boundary still ahead; segments end there."""
        t = self.cfg.train
        boundaries: dict[int, set[str]] = {t.steps: {"eval"}}
        for s in range(t.eval_interval, t.steps, t.eval_interval) if t.eval_interval else ():
            boundaries.setdefault(s, set()).add("eval")
        for s in self.checkpoints.due_steps(t.steps):
            boundaries.setdefault(s, set()).add("checkpoint")
        for s in self.progressive.steps() if self.progressive else ():
            boundaries.setdefault(s, set()).add("progressive")
        return [(s, a) for s, a in sorted(boundaries.items()) if s > self.step]

    def train_segment(self, end: int, result: TrainResult, bar: tqdm) -> None:
        """Steps up to ``end``; losses stay on the device and are reduced once per log interval."""
        self.model.train()
        batches = self.train_batches(end - self.step)
        window: list[torch.Tensor] = []
        mark = time.perf_counter()
        timer = WindowTimer(self.env.device)  # CUDA events on GPUs: the device's time, not the host's
        timer.start()
        try:
            while self.step < end:
                self.lr.apply(self.step)
                window.append(self.train_step(batches))
                self.step += 1
                self.steps_run += 1
                bar.update(1)
                if self.step % self.cfg.train.log_interval == 0 or self.step == end:
                    busy = timer.elapsed_s()  # this rank's own time, before waiting for the others
                    result.losses += self.window_stats(window, busy)  # the one host sync per interval
                    window = []
                    now = time.perf_counter()
                    self.train_seconds, mark = self.train_seconds + now - mark, now
                    bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
                    self.check_finite(result.losses)
                    self.log_train(result.losses[-1])
            self.drain(batches)
        finally:
            batches.close()

    def train_step(self, batches: Iterator[Any]) -> torch.Tensor:
        """One pipelined step; returns this rank's loss, detached, still on the device."""
        loss, _, _ = self.pipeline.progress(batches)
        return loss.detach()

    # -- early stopping and the best model ------------------------------------------------
    def start_stopping(self) -> None:
        """Takes up the stopping rule's state from the checkpoint resumed, and says what cannot be kept."""
        if self.stop is None:
            return
        self.stop.resume(self.checkpoints.restored_best)
        if not self.checkpoints.enabled:
            logger.warning("early stopping without train.checkpoint_dir: the best evaluation is reported, but its "
                           "model is not kept (a test split is scored with the last model); set "
                           "train.checkpoint_dir to keep the best model")

    def judge(self, result: EvalResult) -> Verdict:
        """The stopping rule's verdict on an evaluation (rank 0's value: identical on every rank)."""
        if self.stop is None:
            return Verdict(improved=False, stop=False)
        value = rank0_value(float(getattr(result, self.stop.metric)), self.env.device)
        verdict = self.stop.observe(result.step, value)
        best = self.stop.best
        if verdict.improved:
            logger.info("best so far: %s %.4f at step %d", self.stop.metric, value, result.step)
        elif best is not None:
            logger.info("%s %.4f: no improvement on %.4f (step %d) for %d of %d evaluation(s)", self.stop.metric,
                        value, best.value, best.step, best.stale, self.stop.patience)
        return verdict

    def finish_best(self, result: TrainResult) -> None:
        """Records the best evaluation; scores the test split once with the best model (if kept)."""
        best = self.stop.best if self.stop else None
        result.best = best
        result.best_kept = best is not None and self.checkpoints.enabled
        test_rows = split_rows(self.data).test if self.cfg.data.eval_split == "val" else None
        if not test_rows:
            return
        if result.best_kept and best.step != self.step:
            self.checkpoints.load_weights(best.step)
        label, step = ("best", best.step) if result.best_kept or (best and best.step == self.step) else ("last", self.step)
        result.test, result.test_model = self.evaluate("test", step, label), label

    @torch.no_grad()
    def evaluate(self, split: str = "eval", step: Optional[int] = None, model: Optional[str] = None) -> EvalResult:
        """AUC, NE, calibration, log-loss, accuracy and CTR over a whole split (all ranks).

        ``split`` "eval" is the configured eval split; "test" is the test split, scored at the
        end of an early-stopped run with the ``model`` ("best" or "last") of ``step``.
        """
        gbs = self.cfg.train.global_batch_size
        step = self.step if step is None else step
        if split == "eval":
            count = self.data.eval_batch_count(gbs)
        else:
            count = max(1, math.ceil((getattr(split_rows(self.data), split) or 0) / gbs))
        result = self.score(split, count, step)
        if split == "eval":
            self.log.write("eval", step, **result.metrics())
            logger.info(result.line())
        else:
            self.log.write(split, step, model=model, **result.metrics())
            logger.info(test_line(result, split, model))
        return result

    @torch.no_grad()
    def score(self, split: str, count: int, step: int) -> EvalResult:
        """The metrics of ``count`` global batches of ``split`` (padding rows ignored), on every rank."""
        self.model.eval()
        gbs = self.cfg.train.global_batch_size
        metrics = EvalMetrics(self.env.world_size, self.env.rank, gbs // self.env.world_size, self.env.device,
                              self.cfg.train.auc_max_samples, expected_samples=count * gbs)
        source = self.data.batches(split, gbs, self.env.rank, self.env.world_size, count)
        batches = Prefetcher(source, pin_memory=self.env.device.type == "cuda")
        try:
            while True:
                try:
                    _, logits, labels = self.pipeline.progress(batches)
                except StopIteration:
                    break
                metrics.update(logits, labels)
        finally:
            batches.close()
        self.model.train()
        result = metrics.compute(step)
        if not result.auc_exact:
            logger.warning("split %s has %d samples, more than train.auc_max_samples=%d: its AUC is binned "
                           "(65,536 thresholds)", split, result.samples, self.cfg.train.auc_max_samples)
        return result

    # -- progressive validation -----------------------------------------------------------
    def start_progressive(self, result: TrainResult) -> None:
        """Lists the partitions this process scores; a resumed run takes up the earlier records."""
        if not self.cfg.train.progressive_validation:
            return
        gbs = self.cfg.train.global_batch_size
        self.progressive = ProgressiveSchedule(partition_spans(self.data, gbs), self.cfg.train.steps, self.step)
        skipped = self.progressive.skipped_line(gbs)
        if skipped:
            logger.warning(skipped)
        if self.step > 0:
            result.progressive = self.earlier_progressive()

    def earlier_progressive(self) -> list[dict[str, Any]]:
        """The progressive records earlier processes of this run wrote (up to this step), on every rank.

        Rank 0 reads them back from metrics.jsonl (already cut to this step by MetricsLog.start);
        the others receive them, so the summary is the same on every rank. Unreadable: none, said.
        """
        mine: list[Any] = [None]
        if self.env.is_main:
            try:
                mine[0] = [r for r in self.log.records(PROGRESSIVE) if r["step"] <= self.step]
            except DlrmError as e:
                logger.warning("the earlier progressive validation records are not listed in the summary: %s", e)
                mine[0] = []
        dist.broadcast_object_list(mine, src=0)  # (also at world size 1: the tested path is the multi-rank one)
        return list(mine[0] or [])

    def score_partitions(self, result: TrainResult) -> None:
        """Scores the partitions that start at this step with the model as it stands (all ranks)."""
        if self.progressive is None:
            return
        gbs = self.cfg.train.global_batch_size
        for span in self.progressive.due(self.step):
            scored = self.score(span.split, max(1, math.ceil(span.rows / gbs)), self.step)
            record = score_record(span, scored)
            result.progressive.append(record)
            self.log.write(PROGRESSIVE, self.step, **{k: v for k, v in record.items() if k != "step"})
            self.log.write_series(PROGRESSIVE, span.partition, **scored.metrics())
            logger.info("next-day (partition %d, before training on it) @ step %d: %s  (%s rows)", span.partition,
                        self.step, "  ".join(f"{n} {getattr(scored, n):.4f}" for n in METRIC_NAMES),
                        f"{span.rows:,}")

    # -- helpers ------------------------------------------------------------------------
    def train_batches(self, count: int) -> Prefetcher:
        gbs, env = self.cfg.train.global_batch_size, self.env
        source = self.data.batches("train", gbs, env.rank, env.world_size, count, start_batch=self.step)
        return Prefetcher(source, pin_memory=env.device.type == "cuda")

    def drain(self, batches: Iterator[Any]) -> None:
        # The segment's iterator is exactly as long as the segment, so the pipeline is
        # now empty; progress() confirms it (and resets its state for the next phase).
        try:
            self.pipeline.progress(batches)
        except StopIteration:
            return
        raise RuntimeError("training pipeline held more batches than the segment had")

    def check_finite(self, losses: list[float]) -> None:
        """Stops a diverged run before it logs or checkpoints past the first non-finite loss.

        Checked at log intervals and at every segment end (before any checkpoint), so the newest
        checkpoint is always one from before the divergence. The losses are global means:
        every rank stops at the same step.
        """
        start = self._checked
        self._checked = len(losses)
        for k in range(start, len(losses)):
            if not math.isfinite(losses[k]):
                step = self.step - (len(losses) - k) + 1
                # Data or learning rates? The unchecked window's batches are read again (all ranks).
                bad = find_bad_input(self.data, self.env, self.cfg.train.global_batch_size,
                                     self.step - (len(losses) - start) + 1, step,
                                     FeatureSchema.from_dict(self.cfg.features).dense_names)
                newest = self.checkpoints.newest()
                message = (diverged_message(losses[k], step, bad, self.cfg.optim.embedding_lr, self.cfg.optim.dense_lr)
                           + "; " + (f"the newest checkpoint, {newest}, is from before it" if newest
                                     else "no checkpoint was written"))
                self.log.write("diverged", step, message=message, **diverged_fields(bad))
                raise DivergedError(message)

    def window_stats(self, losses: list[torch.Tensor], busy_seconds: float) -> list[float]:
        """The window's losses averaged over all ranks, and each rank's step time, in one all-gather.

        Returns the mean losses; sets ``last_rank_step_ms`` (the time each rank spent per step
        before it waited for the others: the per-rank step time of the log).
        """
        mine = torch.stack(losses + [torch.tensor(busy_seconds, device=losses[0].device)]).double()
        mine = mine.to(self.env.device)
        every = [torch.empty_like(mine) for _ in range(self.env.world_size)]
        dist.all_gather(every, mine)
        table = torch.stack(every).cpu()
        self.last_rank_step_ms = (1000.0 * table[:, -1] / len(losses)).tolist()
        return table[:, :-1].mean(dim=0).tolist()

    def log_train(self, loss: float) -> None:
        sps = self.steps_run * self.cfg.train.global_batch_size / max(self.train_seconds, 1e-9)
        factor = self.lr.schedule.factor(self.step - 1)
        self.log.write("train", self.step, loss=loss, lr_factor=factor, samples_per_s=sps,
                       dense_lr=factor * self.cfg.optim.dense_lr, embedding_lr=factor * self.cfg.optim.embedding_lr,
                       rank_step_ms=self.last_rank_step_ms)

    def exchange_bytes_per_sample(self) -> list[float]:
        """Bytes each rank received in the embedding exchange per sample it trained on."""
        received = self.comms.bytes_received
        samples = max(self.steps_run, 1) * self.cfg.train.global_batch_size // self.env.world_size
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, received / samples)
        return [float(x) for x in out]

    def rank_step_ms(self) -> list[float]:
        mine = 1000.0 * self.train_seconds / max(self.steps_run, 1)
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, mine)
        return [float(x) for x in out]

