"""A training micro-batch — forward, loss and backward — captured once in a CUDA graph and replayed every step
(``train.cuda_graph``; ``liger bench --train-modes``).

A 135M-parameter model's training step is bound by the host: a Liger step launches thousands of small kernels
(fla's chunked GLA and its Python wrappers, the window kernels, LoRA's extra matmuls, casts), and the GPU waits
on Python between them (issue 15: the same ~270 ms step at batch 8 and 32). Replaying a captured graph launches
all of them at once. What makes that valid:

* the shapes never change (packed chunks of ``data.max_length`` tokens, ``micro_batch_size`` of them) and the
  forward reads nothing back to the host, so one capture holds the whole computation; the new batch is copied
  into the graph's static input tensors before each replay;
* the backward inside the capture writes each trainable parameter's ``.grad`` into tensors of the graph's
  memory pool (the gradients are ``None`` when it is captured), so a replay overwrites them — it does not add
  to them — and :meth:`GraphedStep.__call__` points every ``.grad`` at them again (the optimizer's
  ``zero_grad(set_to_none=True)`` drops that link after each step); accumulation over micro-batches adds the
  replays' gradients into buffers of its own (:class:`GradientSum`);
* the optimizer step, clipping and the schedule stay outside the graph, eager (a few fused kernels over the
  LoRA tensors), so checkpoints, resumption and the learning-rate schedule are the eager loop's own;
* the captured kernels are the eager step's: autotuning (fla, liger's Triton kernels) happens in the warm-up
  passes before the capture, on a side stream as CUDA requires, with the first batch; their gradients are
  discarded, so warm-up does not train.

It cannot run across processes (DDP's gradient hooks all-reduce inside the backward) and needs CUDA; the
caller checks both. A capture that fails (an operation that syncs with the host or allocates outside the
graph's pool) raises :class:`GraphUnavailable` before any weight changed, and the caller trains eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GradientSum", "GraphUnavailable", "GraphedStep"]


class GraphUnavailable(RuntimeError):
    """The step could not be captured (the eager step runs instead)."""


class GraphedStep:
    """``loss_fn(*inputs)`` and ``(loss * scale).backward()`` for ``params``, captured in one CUDA graph.

    Args:
        loss_fn: the micro-batch's scalar loss from its input tensors (the same shapes at every call).
        params: the trainable parameters; their ``.grad`` after a call are the graph's gradient tensors.
        example: input tensors for the warm-up passes and the capture (the first batch).
        scale: the backward runs on ``loss * scale`` (``1 / micro-batches`` with accumulation); the returned
            loss is unscaled.
        warmup: eager passes before the capture (autotuning, lazy initialisation), gradients discarded.
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], params: list[torch.Tensor],
                 example: tuple[torch.Tensor, ...], scale: float = 1.0, warmup: int = 3):
        if not all(t.is_cuda for t in example):
            raise GraphUnavailable("CUDA graphs need the batch on a CUDA device")
        self.params = list(params)
        self.inputs = tuple(t.detach().clone() for t in example)
        side = torch.cuda.Stream()  # (an error here would be the eager step's own: it propagates)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._drop_grads()
                (loss_fn(*self.inputs) * scale).backward()
        torch.cuda.current_stream().wait_stream(side)
        self._drop_grads()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # (the warm-up's cached blocks: the graph's pool holds its own activations)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.loss = loss_fn(*self.inputs)
                (self.loss * scale).backward()
        except Exception as err:  # (CUDA's capture errors, or a kernel wrapper's own)
            self._drop_grads()
            first = str(err).splitlines()[0] if str(err) else ""
            raise GraphUnavailable(f"{type(err).__name__}: {first}") from err
        self.grads = [p.grad for p in self.params]
        if any(g is None for g in self.grads):
            self._drop_grads()
            raise GraphUnavailable("a trainable parameter got no gradient in the captured backward")

    def _drop_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Replay on ``inputs`` (copied into the static inputs); returns the loss, a tensor the next call
        overwrites (``.detach().clone()`` it, or add it somewhere, before calling again)."""
        for static, new in zip(self.inputs, inputs, strict=True):
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        for p, g in zip(self.params, self.grads):
            p.grad = g
        return self.loss


class GradientSum:
    """Gradients summed over several replays of a :class:`GraphedStep` (each replay overwrites the graph's
    gradient tensors): :meth:`add` after each micro-batch, :meth:`attach` before the optimizer step."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = list(params)
        self.sums: list[torch.Tensor] | None = None
        self.count = 0

    def add(self) -> None:
        grads = [p.grad for p in self.params]
        if self.sums is None:
            self.sums = [g.detach().clone() for g in grads]
        elif self.count == 0:
            torch._foreach_copy_(self.sums, grads)
        else:
            torch._foreach_add_(self.sums, grads)
        self.count += 1

    def attach(self) -> None:
        """Every parameter's ``.grad`` is its sum; the next :meth:`add` starts a new one."""
        for p, s in zip(self.params, self.sums or []):
            p.grad = s
        self.count = 0
