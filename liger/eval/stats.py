"""Standard errors of the long-context measures: binomial accuracies (with Wilson intervals) and means."""

from __future__ import annotations

import math


def binomial(correct: int, trials: int, z: float = 1.96) -> dict:
    """Accuracy of ``correct`` successes in ``trials``, its binomial standard error ``sqrt(p(1-p)/n)`` and the
    Wilson score interval (95 % by default), which stays informative at 0/n and n/n where the binomial
    standard error is 0.

    Returns:
        ``{"accuracy": p, "stderr": float, "wilson95": [low, high], "correct": int, "trials": int}``.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not 0 <= correct <= trials:
        raise ValueError(f"correct must be in [0, {trials}], got {correct}")
    p = correct / trials
    denom = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return {"accuracy": p, "stderr": math.sqrt(p * (1 - p) / trials),
            "wilson95": [max(0.0, center - half), min(1.0, center + half)], "correct": correct, "trials": trials}


def mean_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); None for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
