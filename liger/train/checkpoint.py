"""Checkpoints of a run and its final model, written through ``torch.distributed.checkpoint``'s full state dicts
(the same code for one process, DDP and FSDP).

``OUTPUT/checkpoints/step-NNNNNN/`` holds ``adapter/`` (peft ``save_pretrained``), ``state.pt`` (the trainable
weights, optimizer, scheduler, step and data position) and ``rng-R.pt`` per process. A checkpoint is written to
``.tmp-step-NNNNNN/`` and renamed when complete, so one that exists is complete. ``OUTPUT/final/`` is the LoRA
merged into the weights: a Liger checkpoint with its tokenizer.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .errors import TrainingError

CHECKPOINT_PREFIX = "step-"
RESUMABLE_KEYS = {"train.max_steps", "train.epochs", "train.eval_every", "train.save_every", "train.keep_checkpoints"}
"""Config keys a run may change when it is resumed."""


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


_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _frozen_names(model) -> set[str]:
    """The state-dict names of every frozen parameter, tied aliases included. ``get_state_dict``'s
    ``ignore_frozen_params`` walks ``named_parameters()``, which lists a tied parameter once, so the alias it does
    not list stays in the state dict: with tied embeddings the whole frozen ``lm_head.weight`` (57 MB for
    SmolLM2, against 8 MB of LoRA weights and optimizer state) would be written into every checkpoint."""
    frozen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            for part in _WRAPPER_PARTS:
                name = name.replace(part, "")
            frozen.add(name)
    return frozen


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
        frozen = _frozen_names(unwrapped)
        weights = {name: value for name, value in weights.items() if name not in frozen}
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


def check_resume_config(output: Path, cfg: TrainConfig) -> None:
    """Refuse to resume the run in ``output`` with a config that differs beyond :data:`RESUMABLE_KEYS`."""
    import yaml

    saved_path = output / "config.yaml"
    if not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text())
    now = cfg.to_dict()

    def diff(a, b, prefix=""):
        for key in sorted(set(a) | set(b)):
            name = prefix + key
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict) and name != "model.liger":
                diff(a[key], b[key], name + ".")
            elif a.get(key) != b.get(key) and name not in RESUMABLE_KEYS:
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




def save_final(merged, tokenizer, output: Path) -> Path:
    """Write ``OUTPUT/final`` (the merged model and its tokenizer) atomically; main process only."""
    final = output / "final"
    tmp = output / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
