"""The training objective: next-token cross-entropy over the labelled positions, the KL term against the teacher
(the same weights with the original attention and no adapters) and the validation loss."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of next-token CE over labelled positions, number of them)``; logits ``[B, T, V]``, labels ``[B, T]``."""
    targets = labels[:, 1:]
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, (targets != IGNORE_INDEX).sum()


def kl_to_teacher(logits, teacher_logits, labels, temperature: float) -> torch.Tensor:
    """Mean over labelled positions of T²·KL(softmax(teacher/T) ‖ softmax(student/T))."""
    # (weighted by the mask rather than indexed by it: no shape that depends on the labels, so the step can be
    # captured in a CUDA graph, train.cuda_graph)
    mask = (labels[:, 1:] != IGNORE_INDEX).flatten()
    student = (logits[:, :-1].flatten(0, 1).float() / temperature).log_softmax(-1)
    teacher = (teacher_logits[:, :-1].flatten(0, 1).float() / temperature).log_softmax(-1)
    per_token = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    kl = (per_token * mask).sum() / mask.sum().clamp_min(1)
    return kl * temperature**2


def attention_transfer_loss(model, core, ids: torch.Tensor) -> torch.Tensor:
    """The attention-transfer loss of one micro-batch: the mean over Liger layers of each layer's MSE to the
    teacher attention (``LigerForCausalLM.attention_transfer``). ``model`` is the (possibly DDP/FSDP-wrapped)
    model the forward runs through, ``core`` the unwrapped peft model; only the last position's logits are
    computed."""
    with core.get_base_model().attention_transfer() as layer_losses:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    if not layer_losses:
        raise ValueError("attention transfer needs at least one Liger layer (all layers keep full attention)")
    return torch.stack(layer_losses).mean()


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




@torch.no_grad()
def heldout_loss(model, ids: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict:
    """Token-weighted mean CE (and perplexity) of a plain model (no accelerate, one process) over packed chunks,
    as :func:`validation_loss` computes it."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, ids.shape[0], batch_size):
        x, y = ids[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        s, n = token_losses(model(input_ids=x, use_cache=False).logits, y)
        total += s.double()
        count += n.double()
    loss = (total / count).item()
    return dict(loss=loss, ppl=math.exp(min(loss, 50.0)), tokens=int(count.item()))
