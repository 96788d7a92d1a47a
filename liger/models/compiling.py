"""``torch.compile`` for the CUDA fast paths, with the eager function as a fallback.

The GPU path compiles a few small pure functions (FlexAttention, the elementwise work around the fla kernels,
RoPE, the static decode step); each is a :class:`CompiledOrEager`. The sequence-level ones are compiled with
dynamic shapes (one compilation serves every batch size and length); the decode step specialises on its
batch size. If compilation fails on the machine at
hand (toolchain, unsupported construct), a warning is logged once and the eager function — the same math —
is used from then on; :func:`fallbacks` reports which ones did.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("liger")

_registry: dict[str, CompiledOrEager] = {}


class CompiledOrEager:
    """``fn`` through ``torch.compile`` (created on first use), or ``fn`` itself after a compile failure."""

    def __init__(self, fn, name: str, fallback=None, **compile_options):
        self.fn = fn
        self.fallback = fallback or fn
        """What runs once compilation failed (default: ``fn``)."""
        self.name = name
        self.compile_options = compile_options
        self.compiled = None
        self.static = compile_options.get("dynamic") is False
        self.failed = False
        _registry[name] = self

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, **self.compile_options)
                return self.compiled(*args, **kwargs)
            except Exception as err:  # a compiler/toolchain problem: the eager function computes the same
                if not self.static:
                    # dynamic-shape compilation is the less travelled road: retry with shapes specialised
                    self.static = True
                    self._warn(err, "retrying with static shapes")
                    self.compiled = torch.compile(self.fn, **dict(self.compile_options, dynamic=False))
                    return self(*args, **kwargs)
                self.failed = True
                self._warn(err, "using the eager version")
        return self.fallback(*args, **kwargs)

    def _warn(self, err: Exception, action: str) -> None:
        text = str(err).strip()
        logger.warning("liger: torch.compile of %s failed (%s: %s); %s", self.name, type(err).__name__,
                       text.splitlines()[0] if text else "", action)


def fallbacks() -> dict[str, bool]:
    """``{name: True}`` for every compiled path that fell back to eager in this process."""
    return {name: entry.failed for name, entry in _registry.items()}
