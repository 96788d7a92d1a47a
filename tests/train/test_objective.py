"""The training objective's pieces against their plain definitions."""

import torch
import torch.nn.functional as F

from liger.train.data import IGNORE_INDEX
from liger.train.objective import kl_to_teacher


def test_kl_to_teacher_is_the_mean_over_labelled_positions():
    """T²·KL(teacher ‖ student) averaged over the positions whose next token is labelled, the ignored ones (prompt
    tokens, padding) left out — computed without indexing by the mask, so the value must equal the indexed form."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 7, 11, generator=g), torch.randn(2, 7, 11, generator=g)
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, :4] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX
    T = 2.0
    keep = (labels[:, 1:] != IGNORE_INDEX).flatten()
    s = (student[:, :-1].flatten(0, 1)[keep] / T).log_softmax(-1)
    t = (teacher[:, :-1].flatten(0, 1)[keep] / T).log_softmax(-1)
    expected = (t.exp() * (t - s)).sum(-1).mean() * T**2
    assert torch.allclose(kl_to_teacher(student, teacher, labels, T), expected, rtol=1e-6, atol=1e-7)
    assert torch.allclose(expected, F.kl_div(s, t, log_target=True, reduction="batchmean") * T**2)
    # nothing labelled: 0, not NaN
    labels[:] = IGNORE_INDEX
    assert kl_to_teacher(student, teacher, labels, T).item() == 0.0
