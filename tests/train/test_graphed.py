"""``train.cuda_graph``'s bookkeeping that needs no GPU: the gradient sum over a step's micro-batches. The captured
step itself (liger/train/graphed.py's GraphedStep) is checked against the eager step on the GPU tier
(tests/gpu/test_train_graph_gpu.py)."""

import pytest
import torch

from liger.train.graphed import GradientSum, GraphedStep, GraphUnavailable


def test_gradient_sum_adds_each_replays_gradients_and_starts_again_after_attach():
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
    total = GradientSum(params)
    steps = [[torch.randn(3), torch.randn(2, 2)] for _ in range(5)]
    static = [torch.empty(3), torch.empty(2, 2)]  # a graph's gradient tensors: every replay overwrites them

    def replay(grads):
        for s, g, p in zip(static, grads, params):
            s.copy_(g)
            p.grad = s

    for micro in steps[:3]:
        replay(micro)
        total.add()
    total.attach()
    sums = [p.grad for p in params]
    for p, expected in zip(params, (sum(m[i] for m in steps[:3]) for i in range(2))):
        assert torch.allclose(p.grad, expected)
    for p in params:  # the optimizer's zero_grad(set_to_none=True)
        p.grad = None
    for micro in steps[3:]:  # the next step: a new sum, in the same buffers
        replay(micro)
        total.add()
    total.attach()
    for p, s, expected in zip(params, sums, (steps[3][i] + steps[4][i] for i in range(2))):
        assert p.grad is s and torch.allclose(p.grad, expected)


def test_a_batch_off_cuda_cannot_be_captured():
    with pytest.raises(GraphUnavailable, match="CUDA graphs need the batch on a CUDA device"):
        GraphedStep(lambda x: x.sum(), [], (torch.zeros(2),))
