"""Bounding Triton's autotuning (fla's kernels), for runs that must fit a time limit.

fla autotunes each Triton kernel on its first call by compiling and timing every config in its list, one
after the other: about 120 configs for ``chunk_gla``'s forward and 150 for its backward on an H100, i.e.
minutes before the first step. ``restrict_triton_autotuning("fast")`` keeps, for every autotuned kernel,
the configs with 4 warps and 2 or 3 pipeline stages (every tile size is kept), which cuts that by about 5x;
``"single"`` keeps one config (enough for correctness tests: every config computes the same function).
It patches ``triton.runtime.autotuner.Autotuner.prune_configs`` for the whole process, so it is for
benchmark and test processes only; the library never calls it. Inductor's kernels (FlexAttention,
``torch.compile``) have their own tuner and are not affected.
"""

from __future__ import annotations

MODES = ("full", "fast", "single")


def _preferred(configs, num_warps: int = 4, num_stages: tuple[int, ...] = (2, 3)):
    keep = [c for c in configs if c.num_warps == num_warps and c.num_stages in num_stages]
    if not keep:
        keep = [c for c in configs if c.num_warps == num_warps]
    return keep or list(configs)


def restrict_triton_autotuning(mode: str) -> str | None:
    """Install the config filter for ``mode`` ("full" leaves Triton alone). Returns the mode installed, or
    None when Triton is not importable. Calling it again with another mode replaces the filter."""
    if mode not in MODES:
        raise ValueError(f"autotune mode must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return None
    original = getattr(Autotuner, "_liger_original_prune_configs", None)
    if original is None:
        original = Autotuner.prune_configs
        Autotuner._liger_original_prune_configs = original
    if mode == "full":
        Autotuner.prune_configs = original
    else:
        def prune_configs(self, kwargs):
            configs = _preferred(original(self, kwargs))
            return configs[:1] if mode == "single" else configs

        Autotuner.prune_configs = prune_configs
    return mode
