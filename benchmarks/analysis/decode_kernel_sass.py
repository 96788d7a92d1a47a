"""The fused decode step's kernel compiled for a GPU that is not here: registers, shared memory, SASS instructions
and how many programs of the launch one SM holds at once — for reasoning about a step before a lease measures it.

The launcher (``liger/models/triton_decode.py``) is run on CPU tensors of a model's decode-step shapes with the
split a GPU would take (``--split``, ``--window-split``), its launch recorded instead of made; the recorded
arguments give the kernel's signature and constexprs, which Triton compiles for ``--arch`` (its own compiler and
ptxas, no GPU), and ``cuobjdump`` / ``nvdisasm`` (shipped with Triton) read the cubin.

    python benchmarks/analysis/decode_kernel_sass.py --recipe memory --split 4 --window-split 8
    python benchmarks/analysis/decode_kernel_sass.py --recipe none --split 4

Occupancy: programs an SM holds by registers (65,536 per SM), threads (2,048) and shared memory (``--smem-kib``,
228 on Hopper), and with ``--sms`` (132 on an H100 SXM) the launch's waves. The Triton here may not be the GPU
machine's (3.9 here, 3.6 there in December 2026): counts, not times.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}
_OPTIONS = ("num_warps", "num_stages", "launch_pdl")


class _Recorded(Exception):
    pass


def record_launch(recipe: str | None, batch: int, split: int, window_split: int | None, options: dict):
    """(args, kwargs, grid) of the fused step's launch for one layer of random SmolLM2 converted with ``recipe``
    (decode-step buffers after a short CPU prefill), with ``SPLIT``/``WINDOW_SPLIT`` set as given."""
    import liger
    from liger.loading import load_pretrained
    from liger.models import triton_decode
    from liger.models.cache import LigerCache

    base = load_pretrained("random:smollm2", torch.bfloat16, attn_implementation="sdpa")
    base.model.layers = base.model.layers[:1]
    base.config.num_hidden_layers = 1
    model = liger.convert(base, recipe=recipe, **{"decode_backend": "torch", **options}).eval()
    attn = model.model.layers[0].self_attn
    cache = LigerCache(model.config)
    ids = torch.randint(0, model.config.vocab_size, (batch, 24))
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    buffers = cache.layers[0].buffers
    HQ, H, D = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    q, q_lin = (torch.randn(batch, 1, HQ, D, dtype=torch.bfloat16) for _ in range(2))
    k, v, k_lin = (torch.randn(batch, 1, H, D, dtype=torch.bfloat16) for _ in range(3))
    cos, sin = (torch.ones(batch, 1, D, dtype=torch.bfloat16) for _ in range(2))
    valid = torch.ones(batch, dtype=torch.bool)
    seen = {}

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.update(args=args, kwargs=kwargs, grid=grid)
                raise _Recorded
            return launch

    saved = triton_decode.SPLIT, triton_decode.WINDOW_SPLIT, triton_decode._kernels
    triton_decode.SPLIT, triton_decode.WINDOW_SPLIT = split, window_split
    triton_decode._kernels = lambda: SimpleNamespace(decode_step=Recorder())
    try:
        triton_decode.fused_decode_step(attn.decode_spec, q, k, v, q_lin, k_lin, cos, sin, valid, buffers)
    except _Recorded:
        pass
    finally:
        triton_decode.SPLIT, triton_decode.WINDOW_SPLIT, triton_decode._kernels = saved
    if not seen:
        raise RuntimeError("the fused step did not launch")
    return seen["args"], seen["kwargs"], seen["grid"]


def compile_for(kernel, args, kwargs, arch: int):
    """The compiled kernel (Triton's CompiledKernel) for ``arch`` from a recorded launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature, constexprs = {}, {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i64" if abs(value) >= 2**31 else "i32"
        else:
            signature[name] = "fp32"
    for name in names[len(args):]:
        if name in kwargs:
            signature[name], constexprs[name] = "constexpr", kwargs[name]
        else:  # (a constexpr left at its default)
            signature[name], constexprs[name] = "constexpr", kernel.params[names.index(name)].default
    options = {key: kwargs[key] for key in _OPTIONS if key in kwargs}
    return triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def resources(cubin: bytes) -> dict:
    """Registers per thread, shared memory per program (bytes) and SASS instructions, from the cubin."""
    tools = Path(__import__("triton").__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tools / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([str(tools / "nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    shared = int(re.search(r"SHARED:(\d+)", usage).group(1))
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, re.M))
    return dict(registers=regs, shared_bytes=shared, instructions=instructions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="decode_kernel_sass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="memory", help="a liger recipe or 'none' (Liger-GLA)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--split", type=int, default=4, help="SPLIT: state programs (and the window's base)")
    parser.add_argument("--window-split", type=int, default=None, help="WINDOW_SPLIT: window programs")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="more LigerConfig fields")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--smem-kib", type=int, default=228)
    args = parser.parse_args(argv)
    from liger.models import _triton_decode_kernels as kernels
    from liger.typed_config import apply_override

    recipe = None if args.recipe == "none" else args.recipe
    try:
        options = {}
        for item in args.option:
            apply_override(options, item)  # (ConfigError, a ValueError, for one that is not KEY=VALUE)
        launch_args, kwargs, grid = record_launch(recipe, args.batch_size, args.split, args.window_split, options)
        compiled = compile_for(kernels.decode_step, launch_args, kwargs, args.arch)
        use = resources(compiled.asm["cubin"])
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as err:
        print(f"decode_kernel_sass: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    threads = 32 * kwargs.get("num_warps", 4)
    per_sm = min(65536 // (use["registers"] * threads), 2048 // threads,
                 (args.smem_kib * 1024) // max(use["shared_bytes"], 1), 32)
    programs = grid[0] * grid[1]
    waves = programs / (per_sm * args.sms)
    print(f"{args.recipe} batch {args.batch_size}: grid {grid} = {programs} programs (NA {kwargs['NA']}, NR "
          f"{kwargs['NR']}, NPART {kwargs['NPART']}, BK {kwargs['BK']}); sm_{args.arch}: {use['registers']} registers "
          f"a thread x {threads} threads, {use['shared_bytes']} B shared, {use['instructions']} SASS instructions; "
          f"{per_sm} programs an SM -> {waves:.2f} waves on {args.sms} SMs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
