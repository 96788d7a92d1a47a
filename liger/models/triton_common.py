"""What Liger's Triton kernels share: whether they can run here, which tensors they take, launch arithmetic.

Triton is imported lazily by the kernel modules; this one only looks for it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def is_available() -> bool:
    """Triton is importable and a CUDA device exists (or Triton's CPU interpreter is switched on)."""
    return has_triton() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


MAX_ELEMENTS = 2**31 - 1
"""The kernels index memory with 32-bit integers: larger tensors take the fallback ops."""


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""What the compiled kernels take (Triton's interpreter takes float64 too)."""


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels can take these tensors: CUDA tensors of a kernel dtype (any device and dtype
    under Triton's interpreter), head dims up to 256, fewer than 2³¹ elements each. A float64 or CPU model asked
    for ``"triton"`` backends takes the fallback ops instead of a kernel compiled for a type it cannot hold."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return all(x.shape[-1] <= 256 and x.numel() <= MAX_ELEMENTS
               and (interpret or (x.is_cuda and x.dtype in KERNEL_DTYPES)) for x in tensors)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def pdl_supported(x: torch.Tensor) -> bool:
    """Whether kernels launched for ``x`` can use programmatic dependent launch (``LigerConfig.decode_pdl``): a
    CUDA tensor on a GPU of compute capability 9.0 or newer (Hopper: the ``griddepcontrol`` instructions), not
    under the CPU interpreter."""
    return x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1" and _capability(x.device.index) >= (9, 0)


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def auto_takes_kernels(x: torch.Tensor | None) -> bool:
    """Whether a backend left at "auto" takes the fused Triton kernels for ``x``: a CUDA tensor on a GPU of compute
    capability 8.0 or newer (Ampere, Hopper: where the kernels were measured and tested; older GPUs lack bfloat16
    tensor cores, which the kernels' 16-bit products need) with Triton installed, on the current CUDA device (Triton
    launches there: a layer placed on another GPU by a device map keeps the PyTorch ops). Not under the CPU
    interpreter: "auto" never interprets."""
    return (x is not None and x.is_cuda and has_triton() and x.device.index in (None, torch.cuda.current_device())
            and torch.cuda.get_device_capability(x.device) >= (8, 0))
