"""The fine-tuning loop of ``liger finetune``: one readable function, :func:`finetune`.

Per optimizer step, ``train.batch_size`` packed chunks are drawn from a seeded per-epoch permutation (the
step number alone fixes which chunks, so a resumed run sees the same data). Under ``accelerate launch`` each of
the P processes takes every P-th chunk of the step and accumulates ``batch_size / (P * micro_batch_size)``
micro-batches; the step's loss is the mean of the micro-batch losses (each a mean over its labelled tokens),
which is the same number for any P. accelerate's DDP averages the gradients, or with ``train.fsdp`` its FSDP2
shards the model per decoder layer; there is no other distributed code here. Checkpoints and the final model go
through ``torch.distributed.checkpoint``'s full state dicts, the same code for one process, DDP and FSDP.

Outputs (OUTPUT = ``cfg.output``): ``config.yaml`` (the resolved config), ``environment.json``,
``metrics.jsonl``, ``checkpoints/step-NNNNNN/`` (adapter, optimizer, scheduler, RNG and data position; written to
a temporary folder and renamed, so a checkpoint that exists is complete), ``final/`` (LoRA merged, a Liger
checkpoint with its tokenizer) and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..loading import load_model, load_tokenizer, to_dtype
from .config import TrainConfig
from .data import IGNORE_INDEX, PackedData, build_data
from .errors import TrainingError
from .lora import adamw, add_adapters

logger = logging.getLogger("liger")

CHECKPOINT_PREFIX = "step-"


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


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of next-token CE over labelled positions, number of them)``; logits ``[B, T, V]``, labels ``[B, T]``."""
    targets = labels[:, 1:]
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, (targets != IGNORE_INDEX).sum()


def kl_to_teacher(logits, teacher_logits, labels, temperature: float) -> torch.Tensor:
    """Mean over labelled positions of T²·KL(softmax(teacher/T) ‖ softmax(student/T))."""
    mask = (labels[:, 1:] != IGNORE_INDEX).flatten()
    student = (logits[:, :-1].flatten(0, 1)[mask].float() / temperature).log_softmax(-1)
    teacher = (teacher_logits[:, :-1].flatten(0, 1)[mask].float() / temperature).log_softmax(-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum") / mask.sum().clamp_min(1)
    return kl * temperature**2


def teacher_context(model):
    """Run the teacher from the same weights: the adapters off and the original softmax attention."""
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(model.disable_adapter())
    stack.enter_context(model.get_base_model().teacher_mode())
    return stack


@torch.no_grad()
def validation_loss(model, ids, labels, micro_batch_size: int, accelerator, teacher: bool = False) -> dict:
    """Token-weighted mean CE (and perplexity) over the validation chunks, split across processes."""
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = torch.arange(rank, ids.shape[0], world)
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    # Every process runs the same number of forwards (FSDP gathers each layer's weights from all of them);
    # a process out of chunks runs its first one again and does not count it.
    rounds = math.ceil(math.ceil(ids.shape[0] / world) / micro_batch_size)
    with teacher_context(model) if teacher else nullcontext():
        for start in range(0, rounds * micro_batch_size, micro_batch_size):
            idx = mine[start:start + micro_batch_size]
            counted = len(idx) > 0
            if not counted:
                idx = mine[:1] if len(mine) else torch.zeros(1, dtype=torch.long)
            x, y = ids[idx].to(accelerator.device), labels[idx].to(accelerator.device)
            s, n = token_losses(model(input_ids=x, use_cache=False).logits, y)
            if counted:
                total += s.double()
                count += n.double()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    model.train(was_training)
    loss = (total / count).item()
    return dict(loss=loss, ppl=math.exp(min(loss, 50.0)), tokens=int(count.item()))


def _rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints in ``output``, oldest first (temporary folders of interrupted writes are skipped)."""
    folder = output / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _state_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def save_checkpoint(output: Path, step: int, model, optimizer, scheduler, position: dict, accelerator,
                    keep: int) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically: everything goes to a temporary folder first, which is
    renamed when complete. Each process adds its own RNG state. The trainable weights and the optimizer state
    are gathered whole (unsharded under FSDP) onto the main process; every process takes part."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = output / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    weights, optimizer_state = get_state_dict(
        model, _torch_optimizer(optimizer), options=_state_options(cpu_offload=True, ignore_frozen_params=True))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(tmp / "adapter", state_dict=weights)
        torch.save(dict(step=step, trainable=weights, optimizer=optimizer_state, scheduler=scheduler.state_dict(),
                        position=position, num_processes=accelerator.num_processes), tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint` (every process reads it); return its step."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if "trainable" not in state:
        raise TrainingError(f"{path} was written by an older liger (no 'trainable' entry); start a new run")
    if state["num_processes"] != accelerator.num_processes:
        raise TrainingError(f"{path} was written by {state['num_processes']} processes, this run has "
                            f"{accelerator.num_processes}; resume with the same number")
    set_state_dict(model, _torch_optimizer(optimizer), model_state_dict=state["trainable"],
                   optim_state_dict=state["optimizer"], options=_state_options(ignore_frozen_params=True))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return state["step"]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the entries written after checkpoint ``step`` by the interrupted run."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _check_resume_config(output: Path, cfg: TrainConfig) -> None:
    import yaml

    saved_path = output / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text())
    now = cfg.to_dict()
    free = {"train.max_steps", "train.epochs", "train.eval_every", "train.save_every", "train.keep_checkpoints"}

    def diff(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            name = prefix + key
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict) and name != "model.liger":
                diff(a[key], b[key], name + ".")
            elif a.get(key) != b.get(key) and name not in free:
                raise TrainingError(f"--resume with a different {name} ({b.get(key)!r} in {saved_path}, now "
                                    f"{a.get(key)!r}); resume with the same config or use a new output")

    diff(now, saved)


def merged_model(model, accelerator):
    """The fine-tuned model with its LoRA merged, on the CPU of the main process (None elsewhere).

    The full weights are gathered with ``torch.distributed.checkpoint`` (all processes take part; under FSDP
    this is the only place the whole model exists), loaded into a copy of the architecture built on the meta
    device, and merged there by peft — so the same code serves one process, DDP and FSDP."""
    from peft import get_peft_model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoModelForCausalLM

    full = get_model_state_dict(model, options=_state_options(cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    peft_model = accelerator.unwrap_model(model)
    base = peft_model.get_base_model()
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(base.config)
    skeleton = get_peft_model(skeleton, peft_model.peft_config[peft_model.active_adapter])
    skeleton.load_state_dict(full, assign=True)
    skeleton.get_base_model().tie_weights()
    merged = skeleton.merge_and_unload()
    merged.generation_config = base.generation_config
    return merged


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def finetune(cfg: TrainConfig, resume: bool = False, model=None, tokenizer=None, data: PackedData | None = None,
             on_step=None) -> dict:
    """Fine-tune a Liger model with LoRA as ``cfg`` says; see the module docstring for the outputs.

    Args:
        resume: continue from the newest complete checkpoint in ``cfg.output`` (start afresh if there is none).
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
            ``resume``, or a different config on resume.
        DataError, ConfigError: bad data or config.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_scheduler, set_seed

    from ..provenance import provenance

    device, dtype = resolve_device_dtype(cfg)
    accelerator = Accelerator(cpu=device == "cpu", fsdp_plugin=fsdp_plugin(cfg, device, dtype))
    fsdp = accelerator.is_fsdp2
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    t = cfg.train
    if t.batch_size % (world * t.micro_batch_size):
        raise TrainingError(f"train.batch_size={t.batch_size} is not divisible by {world} processes x "
                            f"train.micro_batch_size={t.micro_batch_size}")
    accumulation = t.batch_size // (world * t.micro_batch_size)
    output = Path(cfg.output)
    ckpts = checkpoints(output)
    if not resume and (ckpts or (output / "metrics.jsonl").exists() or (output / "final").exists()):
        raise TrainingError(f"'{output}' already holds a run; pass --resume to continue it or choose another output")
    if resume and ckpts:
        _check_resume_config(output, cfg)
    accelerator.wait_for_everyone()
    set_seed(t.seed)

    if data is None:
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.model.path)
        with accelerator.main_process_first():
            data = build_data(cfg.data, tokenizer)
    if model is None:
        model, _ = load_model(cfg.model.path, cfg.model.liger, dtype)
    elif model.dtype != dtype:
        model = model.to(dtype)
    is_liger = hasattr(model, "teacher_mode")
    if not is_liger and t.loss != "ce":
        raise TrainingError(f"train.loss={t.loss} needs a Liger model (its teacher is the same weights)")
    n_train = data.train_ids.shape[0]
    steps_per_epoch = n_train // t.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(f"{n_train} training chunks of {cfg.data.max_length} tokens are fewer than "
                            f"train.batch_size={t.batch_size}")
    total_steps = t.max_steps or max(1, int(t.epochs * steps_per_epoch))

    model = add_adapters(model, cfg.lora)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.to(accelerator.device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    optimizer = adamw(trainable, cfg.optim)
    scheduler = get_scheduler(cfg.optim.schedule, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                              num_training_steps=total_steps)
    if fsdp:
        layers = set(getattr(model, "_no_split_modules", None) or [])
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = sorted(
            {type(m).__name__ for m in model.modules() if type(m).__name__ in layers})
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]  # FSDP replaces them by sharded ones

    metrics_path = output / "metrics.jsonl"
    start_step = 0
    if resume and ckpts:
        start_step = load_checkpoint(ckpts[-1], model, optimizer, scheduler, accelerator)
        if main:
            _truncate_metrics(metrics_path, start_step)
            logger.info("resumed from %s (step %d of %d)", ckpts[-1], start_step, total_steps)
    elif resume:
        logger.info("no checkpoint in %s: starting from step 0", output)
        if main:
            metrics_path.unlink(missing_ok=True)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        for stale in (output / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (output / "config.yaml").write_text(cfg.to_yaml())
        (output / "environment.json").write_text(json.dumps(
            dict(provenance(accelerator.device), num_processes=world, dtype=str(dtype).replace("torch.", ""),
                 distributed=str(accelerator.distributed_type).split(".")[-1] + ("2" if fsdp else ""),
                 trainable_parameters=n_trainable, parameters=n_total), indent=2))
        logger.info(data.describe())
        logger.info("LoRA r=%d alpha=%g on %s: %s trainable of %s parameters (%.3f%%); %d steps of %d sequences "
                    "(%d processes x %d micro-batches x %d), %d steps per epoch", cfg.lora.r, cfg.lora.alpha,
                    ",".join(cfg.lora.target_modules), f"{n_trainable:,}", f"{n_total:,}",
                    100 * n_trainable / n_total, total_steps, t.batch_size, world, accumulation,
                    t.micro_batch_size, steps_per_epoch)
    metrics_file = open(metrics_path, "a") if main else None

    def log(entry: dict) -> None:
        if main:
            metrics_file.write(json.dumps(entry) + "\n")
            metrics_file.flush()

    summary = dict(main_process=main, output=str(output), steps=total_steps, start_step=start_step, num_processes=world,
                   trainable_parameters=n_trainable, train_chunks=n_train, val_chunks=data.val_ids.shape[0],
                   max_length=cfg.data.max_length, val=[])

    def validate(step: int) -> None:
        result = validation_loss(model, data.val_ids, data.val_labels, t.micro_batch_size, accelerator)
        log(dict(type="val", step=step, val_loss=result["loss"], val_ppl=result["ppl"], val_tokens=result["tokens"]))
        summary["val"].append(dict(step=step, loss=result["loss"], ppl=result["ppl"]))
        if main:
            tqdm.write(f"step {step}: validation loss {result['loss']:.4f}, perplexity {result['ppl']:.2f}")

    if fsdp:
        # FSDP2 fixes a shard group's gradient dtype at its first forward, from the parameters that require a
        # gradient then; the teacher validation below runs with the adapters disabled (peft freezes them), so
        # run one forward with them trainable first (pytorch/pytorch#186998).
        with torch.no_grad():
            model(input_ids=data.train_ids[:1].to(accelerator.device), use_cache=False)
    if start_step == 0 and not is_liger:
        validate(0)
    elif start_step == 0:
        teacher = validation_loss(model, data.val_ids, data.val_labels, t.micro_batch_size, accelerator, teacher=True)
        log(dict(type="val", model="teacher", step=0, val_loss=teacher["loss"], val_ppl=teacher["ppl"],
                 val_tokens=teacher["tokens"]))
        summary["teacher_val"] = dict(loss=teacher["loss"], ppl=teacher["ppl"])
        if main:
            tqdm.write(f"teacher (same weights, original attention): validation loss {teacher['loss']:.4f}, "
                       f"perplexity {teacher['ppl']:.2f}")
        validate(0)

    last_checkpoint = ckpts[-1] if resume and ckpts else None
    tokens_per_step = t.batch_size * cfg.data.max_length
    progress = tqdm(total=total_steps, initial=start_step, disable=not main, desc="finetune", unit="step",
                    dynamic_ncols=True)
    train_seconds, trained_steps = 0.0, 0
    for step in range(start_step, total_steps):
        started = time.perf_counter()
        epoch, position = divmod(step, steps_per_epoch)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(t.seed + epoch))
        batch = order[position * t.batch_size:(position + 1) * t.batch_size][rank::world]
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(accumulation):
            idx = batch[micro * t.micro_batch_size:(micro + 1) * t.micro_batch_size]
            x, y = data.train_ids[idx].to(accelerator.device), data.train_labels[idx].to(accelerator.device)
            with accelerator.no_sync(model) if micro < accumulation - 1 else nullcontext():
                logits = model(input_ids=x, use_cache=False).logits
                s, n = token_losses(logits, y)
                loss = s / n.clamp_min(1)
                if t.loss != "ce":
                    with torch.no_grad(), teacher_context(core):
                        teacher_logits = core(input_ids=x, use_cache=False).logits
                    kl = kl_to_teacher(logits, teacher_logits, y, t.kl_temperature)
                    loss = kl if t.loss == "kl" else loss + t.kl_weight * kl
                accelerator.backward(loss / accumulation)
            step_loss += loss.detach() / accumulation
        step_loss = accelerator.reduce(step_loss, "mean")
        if not torch.isfinite(step_loss):
            progress.close()
            if metrics_file:
                metrics_file.close()
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
            raise TrainingError(f"loss is {step_loss.item()} at step {step + 1}; stopped before updating the weights "
                                f"({where})")
        grad_norm = None
        if cfg.optim.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.optim.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        train_seconds += seconds
        trained_steps += 1
        entry = dict(type="train", step=step + 1, epoch=epoch, loss=step_loss.item(), lr=lr,
                     tokens=(step + 1) * tokens_per_step, tokens_per_s=tokens_per_step / seconds)
        if grad_norm is not None:
            entry["grad_norm"] = grad_norm
        log(entry)
        average_speed = tokens_per_step * trained_steps / train_seconds
        progress.set_postfix(loss=f"{entry['loss']:.4f}", tok_s=f"{average_speed:.0f}")
        progress.update(1)
        done = step + 1 == total_steps
        if (t.eval_every and (step + 1) % t.eval_every == 0) or done:
            validate(step + 1)
        if (t.save_every and (step + 1) % t.save_every == 0) or done:
            last_checkpoint = save_checkpoint(output, step + 1, model, optimizer, scheduler,
                                              dict(epoch=epoch, position=position + 1, seed=t.seed), accelerator,
                                              t.keep_checkpoints)
        if on_step is not None:
            on_step(step + 1, entry)
    progress.close()
    if metrics_file:
        metrics_file.close()

    final = output / "final"
    merged = merged_model(model, accelerator) if t.save_final else None
    if main:
        if t.save_final:
            tmp = output / ".tmp-final"
            shutil.rmtree(tmp, ignore_errors=True)
            merged.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        try:
            plot_metrics(metrics_path, output / "loss_curve.png")
        except ImportError:
            logger.info("note: matplotlib is not installed; no loss curve written")
    accelerator.wait_for_everyone()
    summary.update(final=str(final) if t.save_final else None, trained_steps=trained_steps, train_seconds=train_seconds,
                   tokens_per_s=tokens_per_step * trained_steps / train_seconds if train_seconds else None,
                   peak_rss_bytes=peak_rss_bytes())
    if torch.cuda.is_available() and accelerator.device.type == "cuda":
        summary["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(accelerator.device)
    if main and t.save_final:
        logger.info("final model (LoRA merged): %s", final)
    return summary


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, png: Path) -> None:
    """Training loss per step and validation loss (Liger and, as a line, the teacher) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_metrics(metrics_path)
    train = [e for e in entries if e["type"] == "train"]
    val = [e for e in entries if e["type"] == "val" and "model" not in e]
    teacher = [e for e in entries if e["type"] == "val" and e.get("model") == "teacher"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([e["step"] for e in train], [e["loss"] for e in train], lw=1, alpha=0.8, label="train loss")
    ax.plot([e["step"] for e in val], [e["val_loss"] for e in val], "o-", label="validation loss (Liger)")
    if teacher:
        ax.axhline(teacher[0]["val_loss"], ls="--", color="gray", label="validation loss (teacher)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
