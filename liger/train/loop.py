"""The fine-tuning loop of ``liger finetune``: :func:`finetune`, a sequence of named setup steps and then the
optimizer steps.

Per optimizer step, ``train.batch_size`` packed chunks are drawn from a seeded per-epoch permutation (the
step number alone fixes which chunks, so a resumed run sees the same data). Under ``accelerate launch`` each of
the P processes takes every P-th chunk of the step and accumulates ``batch_size / (P * micro_batch_size)``
micro-batches; the step's loss is the mean of the micro-batch losses (each a mean over its labelled tokens),
which is the same number for any P. accelerate's DDP averages the gradients, or with ``train.fsdp`` its FSDP2
shards the model per decoder layer; there is no other distributed code here. Checkpoints and the final model go
through ``torch.distributed.checkpoint``'s full state dicts (:mod:`.checkpoint`), the same code for one process,
DDP and FSDP.

Outputs (OUTPUT = ``cfg.output``): ``config.yaml`` (the resolved config), ``environment.json``,
``metrics.jsonl`` (:mod:`.metrics`), ``checkpoints/step-NNNNNN/`` (adapter, optimizer, scheduler, RNG and data
position; written to a temporary folder and renamed, so a checkpoint that exists is complete), ``final/`` (LoRA
merged, a Liger checkpoint with its tokenizer) and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..loading import load_model, load_tokenizer, to_dtype
from .checkpoint import (
    check_resume_config,
    checkpoints,
    load_checkpoint,
    merged_model,
    save_checkpoint,
    save_final,
)
from .config import TrainConfig
from .data import PackedData, build_data
from .errors import TrainingError
from .graphed import GradientSum, GraphedStep, GraphUnavailable
from .lora import adamw, add_adapters
from .metrics import MetricsLog, peak_rss_bytes, plot_metrics, read_metrics, truncate_metrics
from .objective import attention_transfer_loss, kl_to_teacher, teacher_context, token_losses, validation_loss

logger = logging.getLogger("liger")

__all__ = ["TrainingError", "finetune", "fsdp_plugin", "load_model", "load_tokenizer", "read_metrics",
           "resolve_device_dtype"]
# (load_model, load_tokenizer and read_metrics live in liger.loading and .metrics; named here for older callers)


def fsdp_plugin(cfg: TrainConfig, device: str, dtype: torch.dtype):
    """accelerate's FSDP2 plugin when ``train.fsdp`` (or ``accelerate launch --use_fsdp``) asks for it, else None.

    Each decoder layer is its own shard group (the model's ``_no_split_modules`` present in it, filled in
    before ``prepare``); weights are gathered in ``dtype`` — the float32 LoRA weights are cast for compute —
    and gradients are reduced in float32."""
    if not (cfg.train.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
        return None
    if device != "cuda":
        raise TrainingError("train.fsdp needs CUDA GPUs (accelerate runs FSDP only there); use DDP on CPU")
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32))


def resolve_device_dtype(cfg: TrainConfig) -> tuple[str, torch.dtype]:
    device = cfg.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is cuda, but no CUDA device is available")
    dtype = cfg.train.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, to_dtype(dtype)


@dataclass
class _Run:
    """What the setup steps of :func:`finetune` build, in the order they build it."""

    cfg: TrainConfig
    accelerator: object
    device: str
    dtype: torch.dtype
    accumulation: int
    """Micro-batches per optimizer step on each process."""
    output: Path
    resume_from: Path | None = None
    """The checkpoint this run continues from."""
    data: PackedData | None = None
    tokenizer: object = None
    model: object = None
    is_liger: bool = False
    steps_per_epoch: int = 0
    total_steps: int = 0
    optimizer: object = None
    scheduler: object = None
    trainable: list = field(default_factory=list)
    """The trainable parameters (sharded ones under FSDP)."""
    n_trainable: int = 0
    n_parameters: int = 0
    start_step: int = 0
    metrics: MetricsLog | None = None
    summary: dict = field(default_factory=dict)
    graphed: GraphedStep | None = None
    """The captured micro-batch step (``train.cuda_graph``), built at the first next-token step."""
    graph_failed: bool = False
    """The capture failed: the eager step runs (logged once)."""
    grad_sum: GradientSum | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def finetune(cfg: TrainConfig, resume: bool | Literal["auto"] = False, model=None, tokenizer=None,
             data: PackedData | None = None, on_step=None) -> dict:
    """Fine-tune a Liger model with LoRA as ``cfg`` says; see the module docstring for the outputs.

    Args:
        resume: continue from the newest complete checkpoint in ``cfg.output`` (an error if there is none);
            ``"auto"``: continue from it if there is one, else start a new run there.
        model, tokenizer: an already loaded model (in place of ``cfg.model``); it is trained in place. A plain
            transformers model (e.g. the teacher, as a baseline) trains the same way, without the teacher
            validation and the distillation losses, which need a Liger model.
        data: already packed data (in place of ``cfg.data``), e.g. random tokens for a benchmark.
        on_step: called as ``on_step(step, metrics)`` after each optimizer step (tests, progress hooks).

    Returns:
        A summary dict: ``val`` (``[{step, loss, ppl}]`` of this process's run), ``teacher_val`` (at step 0),
        ``steps``, ``trained_steps``, ``train_seconds``, ``tokens_per_s``, ``final`` (path), ``peak_rss_bytes``
        (and ``peak_cuda_bytes`` on GPU), ``main_process``.

    Raises:
        TrainingError: a non-finite loss (the last good checkpoint is kept), a non-empty OUTPUT without
            ``resume``, ``resume=True`` without a checkpoint, or a different config on resume.
        DataError, ConfigError: bad data or config.
    """
    from transformers import set_seed

    run = _start(cfg)
    _check_output(run, resume)
    set_seed(cfg.train.seed)
    _load_data(run, data, tokenizer)
    _load_model(run, model)
    _plan_steps(run)
    _wrap_for_training(run)
    _restore(run, resume)
    _write_run_files(run)
    _validate_before_training(run)
    _train(run, on_step)
    _finish(run)
    return run.summary


def _start(cfg: TrainConfig) -> _Run:
    """The device, the dtype and accelerate's process group; the split of each step over processes."""
    from accelerate import Accelerator

    device, dtype = resolve_device_dtype(cfg)
    accelerator = Accelerator(cpu=device == "cpu", fsdp_plugin=fsdp_plugin(cfg, device, dtype))
    t, world = cfg.train, accelerator.num_processes
    if t.batch_size % (world * t.micro_batch_size):
        raise TrainingError(f"train.batch_size={t.batch_size} is not divisible by {world} processes x "
                            f"train.micro_batch_size={t.micro_batch_size}")
    if t.cuda_graph and device != "cuda":
        raise TrainingError(f"train.cuda_graph needs a CUDA GPU (this run's device is {device})")
    if t.cuda_graph and world > 1:
        raise TrainingError(f"train.cuda_graph runs in one process ({world} here: DDP and FSDP reduce gradients "
                            "inside the backward); turn it off under accelerate launch")
    return _Run(cfg, accelerator, device, dtype, accumulation=t.batch_size // (world * t.micro_batch_size),
                output=Path(cfg.output))


def _check_output(run: _Run, resume: bool | str) -> None:
    """A new run needs an OUTPUT without one; a resumed run, a checkpoint and the same config as its run's."""
    ckpts = checkpoints(run.output)
    if not resume and (ckpts or (run.output / "metrics.jsonl").exists() or (run.output / "final").exists()):
        raise TrainingError(f"'{run.output}' already holds a run; pass --resume to continue it or choose another "
                            "output")
    if resume is True and not ckpts:
        raise TrainingError(f"--resume: no checkpoint in '{run.output}/checkpoints' to continue from (is it the "
                            "right folder?); pass --resume-if-possible to start a new run when there is none")
    if resume and ckpts:
        check_resume_config(run.output, run.cfg)
        run.resume_from = ckpts[-1]
    run.accelerator.wait_for_everyone()


def _load_data(run: _Run, data: PackedData | None, tokenizer) -> None:
    """The packed data (built from ``cfg.data`` unless given), built by the main process first."""
    if data is None:
        if tokenizer is None:
            tokenizer = load_tokenizer(run.cfg.model.path)
        with run.accelerator.main_process_first():
            data = build_data(run.cfg.data, tokenizer)
    run.data, run.tokenizer = data, tokenizer


def _load_model(run: _Run, model) -> None:
    """The model (loaded from ``cfg.model`` unless given) in the run's dtype."""
    cfg = run.cfg
    if model is None:
        model, _ = load_model(cfg.model.path, cfg.model.options(), run.dtype)
    elif model.dtype != run.dtype:
        model = model.to(run.dtype)
    run.is_liger = hasattr(model, "teacher_mode")
    if not run.is_liger and cfg.train.loss != "ce":
        raise TrainingError(f"train.loss={cfg.train.loss} needs a Liger model (its teacher is the same weights)")
    if not run.is_liger and cfg.train.transfer_steps:
        raise TrainingError("train.transfer_steps needs a Liger model (its teacher is the same weights)")
    run.model = model


def _plan_steps(run: _Run) -> None:
    t = run.cfg.train
    n_train = run.data.train_ids.shape[0]
    run.steps_per_epoch = n_train // t.batch_size
    if run.steps_per_epoch == 0:
        raise TrainingError(f"{n_train} training chunks of {run.cfg.data.max_length} tokens are fewer than "
                            f"train.batch_size={t.batch_size}")
    run.total_steps = t.max_steps or max(1, int(t.epochs * run.steps_per_epoch))


def _wrap_for_training(run: _Run) -> None:
    """LoRA adapters, the optimizer and the schedule, then accelerate's DDP or FSDP wrapping."""
    from transformers import get_scheduler

    cfg, accelerator = run.cfg, run.accelerator
    model = add_adapters(run.model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.to(accelerator.device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    run.n_trainable, run.n_parameters = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    optimizer = adamw(trainable, cfg.optim)
    run.scheduler = get_scheduler(cfg.optim.schedule, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                                  num_training_steps=run.total_steps)
    if accelerator.is_fsdp2:
        layers = set(getattr(model, "_no_split_modules", None) or [])
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = sorted(
            {type(m).__name__ for m in model.modules() if type(m).__name__ in layers})
    run.model, run.optimizer = accelerator.prepare(model, optimizer)
    run.trainable = [p for p in run.model.parameters() if p.requires_grad]  # FSDP replaces them by sharded ones


def _restore(run: _Run, resume: bool | str) -> None:
    """Continue from the newest checkpoint (resumed runs), or start at step 0."""
    metrics_path = run.output / "metrics.jsonl"
    if run.resume_from is not None:
        run.start_step = load_checkpoint(run.resume_from, run.model, run.optimizer, run.scheduler, run.accelerator)
        if run.main:
            truncate_metrics(metrics_path, run.start_step)
            logger.info("resumed from %s (step %d of %d)", run.resume_from, run.start_step, run.total_steps)
    elif resume:
        logger.info("no checkpoint in %s: starting from step 0", run.output)
        if run.main:
            metrics_path.unlink(missing_ok=True)


def _write_run_files(run: _Run) -> None:
    """OUTPUT/config.yaml and environment.json (main process); the metrics log; the run's description."""
    from ..provenance import provenance

    cfg, accelerator, t = run.cfg, run.accelerator, run.cfg.train
    n_trainable, n_total = run.n_trainable, run.n_parameters
    world = accelerator.num_processes
    if run.main:
        run.output.mkdir(parents=True, exist_ok=True)
        for stale in (run.output / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (run.output / "config.yaml").write_text(cfg.to_yaml())
        (run.output / "environment.json").write_text(json.dumps(
            dict(provenance(accelerator.device), num_processes=world, dtype=str(run.dtype).replace("torch.", ""),
                 distributed=str(accelerator.distributed_type).split(".")[-1] + ("2" if accelerator.is_fsdp2 else ""),
                 trainable_parameters=n_trainable, parameters=n_total), indent=2))
        logger.info(run.data.describe())
        logger.info("LoRA r=%d alpha=%g on %s: %s trainable of %s parameters (%.3f%%); %d steps of %d sequences "
                    "(%d processes x %d micro-batches x %d), %d steps per epoch", cfg.lora.r, cfg.lora.alpha,
                    ",".join(cfg.lora.target_modules), f"{n_trainable:,}", f"{n_total:,}",
                    100 * n_trainable / n_total, run.total_steps, t.batch_size, world, run.accumulation,
                    t.micro_batch_size, run.steps_per_epoch)
    run.metrics = MetricsLog(run.output / "metrics.jsonl", run.main)
    run.summary = dict(main_process=run.main, output=str(run.output), steps=run.total_steps,
                       start_step=run.start_step, num_processes=world, trainable_parameters=n_trainable,
                       train_chunks=run.data.train_ids.shape[0], val_chunks=run.data.val_ids.shape[0],
                       max_length=cfg.data.max_length, val=[])


def _validate(run: _Run, step: int) -> None:
    from tqdm.auto import tqdm

    data = run.data
    result = validation_loss(run.model, data.val_ids, data.val_labels, run.cfg.train.micro_batch_size,
                             run.accelerator)
    run.metrics.write(dict(type="val", step=step, val_loss=result["loss"], val_ppl=result["ppl"],
                           val_tokens=result["tokens"]))
    run.summary["val"].append(dict(step=step, loss=result["loss"], ppl=result["ppl"]))
    if run.main:
        tqdm.write(f"step {step}: validation loss {result['loss']:.4f}, perplexity {result['ppl']:.2f}")


def _validate_before_training(run: _Run) -> None:
    """Validation loss at step 0: the teacher's (the same weights with the original attention) and the model's."""
    from tqdm.auto import tqdm

    data, accelerator = run.data, run.accelerator
    if accelerator.is_fsdp2:
        # FSDP2 fixes a shard group's gradient dtype at its first forward, from the parameters that require a
        # gradient then; the teacher validation below runs with the adapters disabled (peft freezes them), so
        # run one forward with them trainable first (pytorch/pytorch#186998).
        with torch.no_grad():
            run.model(input_ids=data.train_ids[:1].to(accelerator.device), use_cache=False)
    if run.start_step != 0:
        return
    if run.is_liger:
        teacher = validation_loss(run.model, data.val_ids, data.val_labels, run.cfg.train.micro_batch_size,
                                  accelerator, teacher=True)
        run.metrics.write(dict(type="val", model="teacher", step=0, val_loss=teacher["loss"],
                               val_ppl=teacher["ppl"], val_tokens=teacher["tokens"]))
        run.summary["teacher_val"] = dict(loss=teacher["loss"], ppl=teacher["ppl"])
        if run.main:
            tqdm.write(f"teacher (same weights, original attention): validation loss {teacher['loss']:.4f}, "
                       f"perplexity {teacher['ppl']:.2f}")
    _validate(run, 0)


def _train(run: _Run, on_step) -> None:
    """The optimizer steps, with validation and checkpoints at their intervals and after the last step."""
    from tqdm.auto import tqdm

    cfg, accelerator, model, data = run.cfg, run.accelerator, run.model, run.data
    t = cfg.train
    core = accelerator.unwrap_model(model)
    world, rank = accelerator.num_processes, accelerator.process_index
    n_train = data.train_ids.shape[0]
    last_checkpoint = run.resume_from
    tokens_per_step = t.batch_size * cfg.data.max_length
    progress = tqdm(total=run.total_steps, initial=run.start_step, disable=not run.main, desc="finetune",
                    unit="step", dynamic_ncols=True)
    train_seconds, trained_steps = 0.0, 0
    for step in range(run.start_step, run.total_steps):
        started = time.perf_counter()
        epoch, position = divmod(step, run.steps_per_epoch)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(t.seed + epoch))
        batch = order[position * t.batch_size:(position + 1) * t.batch_size][rank::world]
        transfer = step < t.transfer_steps
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(run.accumulation):
            idx = batch[micro * t.micro_batch_size:(micro + 1) * t.micro_batch_size]
            x, y = data.train_ids[idx].to(accelerator.device), data.train_labels[idx].to(accelerator.device)
            graphed = None if transfer else _graphed_step(run, model, core, x, y)
            if graphed is not None:
                loss = graphed(x, y)
                if run.grad_sum is not None:
                    run.grad_sum.add()
            else:
                with accelerator.no_sync(model) if micro < run.accumulation - 1 else nullcontext():
                    loss = _micro_loss(run, model, core, x, y, transfer)
                    accelerator.backward(loss / run.accumulation)
            step_loss += loss.detach() / run.accumulation
        if graphed is not None and run.grad_sum is not None:  # (the step's micro-batches ran on the graph)
            run.grad_sum.attach()
        step_loss = accelerator.reduce(step_loss, "mean")
        if not torch.isfinite(step_loss):
            progress.close()
            run.metrics.close()
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
            raise TrainingError(f"loss is {step_loss.item()} at step {step + 1}; stopped before updating the weights "
                                f"({where})")
        grad_norm = None
        if cfg.optim.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(run.trainable, cfg.optim.max_grad_norm))
        lr = run.scheduler.get_last_lr()[0]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        train_seconds += seconds
        trained_steps += 1
        entry = dict(type="train", step=step + 1, epoch=epoch, loss=step_loss.item(), lr=lr,
                     objective="transfer" if transfer else t.loss,
                     tokens=(step + 1) * tokens_per_step, tokens_per_s=tokens_per_step / seconds)
        if grad_norm is not None:
            entry["grad_norm"] = grad_norm
        run.metrics.write(entry)
        average_speed = tokens_per_step * trained_steps / train_seconds
        progress.set_postfix(loss=f"{entry['loss']:.4f}", tok_s=f"{average_speed:.0f}")
        progress.update(1)
        done = step + 1 == run.total_steps
        if (t.eval_every and (step + 1) % t.eval_every == 0) or done:
            _validate(run, step + 1)
        if (t.save_every and (step + 1) % t.save_every == 0) or done:
            last_checkpoint = save_checkpoint(run.output, step + 1, model, run.optimizer, run.scheduler,
                                              dict(epoch=epoch, position=position + 1, seed=t.seed), accelerator,
                                              t.keep_checkpoints)
        if on_step is not None:
            on_step(step + 1, entry)
    progress.close()
    run.metrics.close()
    run.summary.update(trained_steps=trained_steps, train_seconds=train_seconds, cuda_graph=run.graphed is not None,
                       tokens_per_s=tokens_per_step * trained_steps / train_seconds if train_seconds else None)


def _micro_loss(run: _Run, model, core, x, y, transfer: bool) -> torch.Tensor:
    """One micro-batch's loss: attention transfer, or ``train.loss`` (next-token CE, the KL to the teacher)."""
    t = run.cfg.train
    if transfer:
        return attention_transfer_loss(model, core, x)
    logits = model(input_ids=x, use_cache=False).logits
    s, n = token_losses(logits, y)
    loss = s / n.clamp_min(1)
    if t.loss != "ce":
        with torch.no_grad(), teacher_context(core):
            teacher_logits = core(input_ids=x, use_cache=False).logits
        kl = kl_to_teacher(logits, teacher_logits, y, t.kl_temperature)
        loss = kl if t.loss == "kl" else loss + t.kl_weight * kl
    return loss


def _graphed_step(run: _Run, model, core, x, y) -> GraphedStep | None:
    """The captured micro-batch step (``train.cuda_graph``), captured on the first call with this batch; None:
    the eager step (the option is off, or the capture failed, logged once)."""
    if not run.cfg.train.cuda_graph or run.graph_failed:
        return None
    if run.graphed is None:
        try:
            run.graphed = GraphedStep(lambda a, b: _micro_loss(run, model, core, a, b, False), run.trainable,
                                      (x, y), scale=1.0 / run.accumulation)
        except GraphUnavailable as err:
            run.graph_failed = True
            logger.warning("train.cuda_graph: the step could not be captured (%s); training eagerly", err)
            return None
        if run.accumulation > 1:
            run.grad_sum = GradientSum(run.trainable)
        logger.info("train.cuda_graph: the micro-batch step is captured in a CUDA graph")
    return run.graphed


def _finish(run: _Run) -> None:
    """OUTPUT/final (the LoRA merged) and the loss curve; the run's peak memory."""
    save = run.cfg.train.save_final
    merged = merged_model(run.model, run.accelerator) if save else None
    final = run.output / "final"
    if run.main:
        if save:
            save_final(merged, run.tokenizer, run.output)
        try:
            plot_metrics(run.output / "metrics.jsonl", run.output / "loss_curve.png")
        except ImportError:
            logger.info("note: matplotlib is not installed; no loss curve written")
    run.accelerator.wait_for_everyone()
    run.summary.update(final=str(final) if save else None, peak_rss_bytes=peak_rss_bytes())
    if torch.cuda.is_available() and run.accelerator.device.type == "cuda":
        run.summary["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(run.accelerator.device)
    if run.main and save:
        logger.info("final model (LoRA merged): %s", final)
