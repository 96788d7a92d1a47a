"""The decoder layers around the fused decode step, in few kernels (``decode_backend="triton"``; with "triton" asked
for explicitly, gradient-free prefills too).

With the attention step fused (:mod:`liger.models.triton_decode`), most of a decode step's kernels were the
decoder layer's own: each RMSNorm is seven PyTorch kernels (cast, square, mean, add, rsqrt, multiply, cast and
weight), the residual adds two more and the MLP's activation two, about 25 launches per layer of a model whose
token is bound by the number of its launches (docs/gpu.md, run H). :func:`decode_layers` runs the same layers
for one token as

    for each layer:   h, x = h + a, in_norm(h + a);  a = attention(x)          (a = 0 before the first layer)
                      h, x = h + a, post_norm(h + a);  a = down(silu(gate(x)) · up(x))
    return final_norm(h + a)

where each residual add and the norm after it run in ``add_rms_norm`` (one kernel), ``linear3`` computes q, k and
v in one launch and ``gate_up_silu`` gate and up with the activation and the product in one: seven launches a
layer (q/k/v, the attention step, ``o_proj``, the gate/up kernel, ``down_proj`` and the two norms). With
``decode_fuse_norms`` the add and the norm run inside the projection kernel that reads the norm's output instead
(``residual=(h, a, norm)``: every program recomputes its rows' statistics — a row is 576 numbers for SmolLM2 — and
the first program of each row block writes ``h + a``), five launches a layer; on an H100 that made the two
kernels 8.4 and 9.0 µs against 3.8 and 6.6 (run O against run M of docs/gpu.md), more than the 2 × 1.6 µs of
norms it saves, so it is off by default. At decode batch sizes a GEMM is bound by its launch, not by its
weights (3.6 µs per cuBLAS call at batch 16 in run H), so fewer, fatter launches are what counts — as long as
each launch stays as short. With ``decode_pdl`` (Hopper) every kernel of the step is launched with programmatic
dependent launch and ``o_proj``/``down_proj`` run on :func:`linear` (run Q: 1.4 % off the step). The projection
kernels take plain
``nn.Linear`` modules and at most :data:`SKINNY_MAX_ROWS` tokens; a peft-wrapped projection (LoRA not merged)
or a larger batch takes ``add_rms_norm`` and the modules' own calls (cuBLAS), with ``silu_mul`` for the
activation. Same arithmetic as the families' decoder layers (the sum rounded to the residual stream's dtype, the
norm in float32 rounded to the input's dtype before its weight, the SiLU rounded before the product), checked
against them by the CPU tests through Triton's interpreter and by the GPU tier.

:func:`unsupported_reason` says when the model's layers are not the pre-norm Llama form this assumes (norms that
are not the families' RMSNorm, an MLP other than gate/up/down with SiLU); the decoder layers' own forward runs
then, as it does for ``decode_backend`` "torch"/"auto".
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .triton_common import has_triton, next_power_of_2, pdl_supported

__all__ = ["add_rms_norm", "decode_layers", "fusable_linears", "gate_up_silu", "linear", "linear3", "silu_mul",
           "unsupported_reason"]

RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
"""The families' RMSNorm classes: ``weight * (x.float() * rsqrt(mean x² + eps)).to(x.dtype)``."""

MAX_ROW = 65536
"""Rows longer than this (hidden sizes) take the PyTorch ops: one program holds a whole row."""


SKINNY_MAX_ROWS = 64
"""Batches of up to this many tokens take the fused projection kernels (``linear3``, ``gate_up_silu``); larger
ones cuBLAS (a GEMM is then no longer bound by its launch)."""


def _kernels():
    # (a `from .module import` line: transformers copies the modules named so into saved checkpoints)
    from ._triton_layer_kernels import add_rms_norm, gate_up_silu, gate_up_silu_tuned, linear3, linear3_tuned, silu_mul

    return SimpleNamespace(add_rms_norm=add_rms_norm, silu_mul=silu_mul, linear3=linear3, gate_up_silu=gate_up_silu,
                           linear3_tuned=linear3_tuned, gate_up_silu_tuned=gate_up_silu_tuned)


def _is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation" or act is F.silu


def unsupported_reason(model, hidden: torch.Tensor) -> str | None:
    """Why :func:`decode_layers` cannot run ``model``'s (a ``LigerModel``) layers on ``hidden`` (None if it can)."""
    if not has_triton():
        return "triton is not installed"
    if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return "the tensors are not on a CUDA device"
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {hidden.dtype}"
    if hidden.shape[-1] > MAX_ROW:
        return f"hidden size {hidden.shape[-1]} > {MAX_ROW}"
    norms = [model.norm]
    for layer in model.layers:
        norms += [getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None)]
        mlp = getattr(layer, "mlp", None)
        if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")) or not _is_silu(
                mlp.act_fn):
            return "a decoder layer's MLP is not down(silu(gate(x)) * up(x))"
    if not all(type(n).__name__ in RMS_NORMS for n in norms):
        return "a norm is not one of the families' RMSNorm"
    # decode_layers calls the layers' parts directly, past the hooks accelerate puts on modules to move inputs
    # between devices or load offloaded weights (device_map): such models keep their layers' own forward
    if any(hasattr(m, "_hf_hook") for m in model.layers.modules()) or hasattr(model.norm, "_hf_hook"):
        return "accelerate hooks (a device map or offloading) on the decoder layers"
    if any(p.device != hidden.device for p in (*model.layers.parameters(), *model.norm.parameters())):
        return "the decoder layers' weights are not all on the input's device"
    return _kernels_fail(hidden.dtype, hidden.device,
                         getattr(model.config, "decode_pdl", False) and pdl_supported(hidden))


_kernel_checks: dict = {}


def _kernels_fail(dtype: torch.dtype, device: torch.device, pdl: bool = False) -> str | None:
    """Run each kernel once on small tensors of this dtype and device (once per process; ``pdl``: also launched
    with programmatic dependent launch): a kernel that does not compile or launch here is found before a decode
    step has written any cache (the layers' own forward runs then, with the reason logged) instead of halfway
    through one."""
    key = (dtype, str(device), pdl)
    if key not in _kernel_checks:
        try:
            norm = SimpleNamespace(weight=torch.ones(32, dtype=dtype, device=device), variance_epsilon=1e-6)
            x = torch.ones(2, 1, 32, dtype=dtype, device=device)
            lin = torch.nn.Linear(32, 16, bias=False).to(device, dtype)
            add_rms_norm(x, x, norm)
            linear3(x, lin, lin, lin)
            gate_up_silu(x, lin, lin)
            for a in (x, None):  # (the norm inside the projections)
                linear3(None, lin, lin, lin, residual=(x, a, norm))
                gate_up_silu(None, lin, lin, residual=(x, a, norm))
            silu_mul(x, x)
            if pdl:
                add_rms_norm(x, x, norm, pdl=True)
                linear3(x, lin, lin, lin, pdl=True)
                gate_up_silu(x, lin, lin, pdl=True)
                linear(x, lin, pdl=True)
            _kernel_checks[key] = None
        except Exception as err:  # a compiler or driver problem on this machine
            text = str(err).strip().splitlines()
            _kernel_checks[key] = f"the layer kernels failed here ({type(err).__name__}: {text[0] if text else ''})"
    return _kernel_checks[key]


def _pdl(pdl: bool) -> dict:
    """The launch arguments of a kernel launched with programmatic dependent launch (``LigerConfig.decode_pdl``;
    the caller checked :func:`~liger.models.triton_common.pdl_supported`): the kernel's GDC branch and Triton's
    launch flag."""
    return dict(GDC=True, launch_pdl=True) if pdl else {}


def add_rms_norm(h: torch.Tensor, a: torch.Tensor | None, norm, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h + a, norm(h + a))`` (``(h, norm(h))`` when ``a`` is None) for ``[..., N]`` tensors, one kernel
    (``pdl``: launched with programmatic dependent launch)."""
    h = h.contiguous()
    a = a.contiguous() if a is not None else None
    if a is not None:
        h_out = torch.empty(h.shape, dtype=torch.promote_types(h.dtype, a.dtype), device=h.device)
    else:
        h_out = h
    N = h.shape[-1]
    x_out = torch.empty(h.shape, dtype=torch.promote_types(norm.weight.dtype, h_out.dtype), device=h.device)
    rows = h.numel() // N
    h2, ho2, x2 = h.view(rows, N), h_out.view(rows, N), x_out.view(rows, N)
    a2 = a.view(rows, N) if a is not None else h2
    _kernels().add_rms_norm[(rows,)](h2, a2, norm.weight, ho2, x2, N, float(norm.variance_epsilon),
                                     h2.stride(0), a2.stride(0), ho2.stride(0), x2.stride(0),
                                     HAS_ADD=a is not None, BN=max(16, next_power_of_2(N)),
                                     num_warps=4 if N <= 4096 else 8, **_pdl(pdl))
    return h_out, x_out


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``silu(g) * u`` in one kernel."""
    g, u = g.contiguous(), u.contiguous()
    out = torch.empty(g.shape, dtype=torch.promote_types(g.dtype, u.dtype), device=g.device)
    n = g.numel()
    BLOCK = 1024
    _kernels().silu_mul[(-(-n // BLOCK),)](g, u, out, n, BLOCK=BLOCK)
    return out


def fusable_linears(x: torch.Tensor, *modules) -> bool:
    """Whether ``modules`` can be computed from ``x`` by the fused projection kernels: plain ``nn.Linear`` (not
    wrapped by peft: a LoRA adapter's delta is not in the kernels) with ``x``'s dtype and contiguous weights, all
    with biases or none, on at most :data:`SKINNY_MAX_ROWS` tokens."""
    return x.numel() // x.shape[-1] <= SKINNY_MAX_ROWS and _plain_linears(x.dtype, *modules)


def _plain_linears(dtype: torch.dtype, *modules) -> bool:
    biases = {m.bias is None for m in modules if type(m) is torch.nn.Linear}
    return len(biases) == 1 and all(type(m) is torch.nn.Linear and m.weight.dtype == dtype
                                    and m.weight.is_contiguous() for m in modules)


def fusable_norm(h: torch.Tensor, a: torch.Tensor | None, norm, *modules) -> bool:
    """Whether ``norm(h + a)`` can be computed inside the projection kernels of ``modules`` (:func:`linear3`,
    :func:`gate_up_silu` with ``residual``): one of the families' RMSNorms over ``h``'s rows, the norm's output
    dtype (its weight's with the residual stream's) that of the modules' weights, and what
    :func:`fusable_linears` asks."""
    stream = torch.promote_types(h.dtype, a.dtype) if a is not None else h.dtype
    return (type(norm).__name__ in RMS_NORMS and norm.weight.shape == h.shape[-1:]
            and h.numel() // h.shape[-1] <= SKINNY_MAX_ROWS
            and _plain_linears(torch.promote_types(norm.weight.dtype, stream), *modules))


def _launch(kernel: str, dtype: torch.dtype, n_total: int, M: int):
    """The projection kernel ``kernel`` and its meta-parameters: on a GPU the autotuned launcher (tile sizes
    timed on the first call of each shape; the row count enters its key in powers of two), in Triton's CPU
    interpreter the plain kernel with 16 token rows and output columns so that about 128 programs share the
    weights' columns."""
    k = _kernels()
    meta = dict(PRECISION="ieee" if dtype == torch.float32 else "tf32", M_KEY=next_power_of_2(max(1, M)))
    if os.environ.get("TRITON_INTERPRET") == "1":
        tiles = dict(BM=16, BN=min(64, max(16, next_power_of_2(max(1, n_total // 128)))), BK=64, num_warps=4)
        return getattr(k, kernel), {**meta, **tiles}
    return getattr(k, kernel + "_tuned"), meta


def _norm_inputs(x, residual):
    """The kernels' input arguments: ``x`` itself, or with ``residual = (h, a, norm)`` (``a`` may be None) the
    rows of ``h`` and ``a``, the norm's weight and epsilon and the new residual stream ``h + a`` to fill (``h``
    itself without ``a``) — ``x = norm(h + a)`` is then computed inside the kernel."""
    if residual is None:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        return x2, dict(H=x2, A=x2, NW=x2, HO=x2, eps=0.0, s_h=0, s_a=0, s_ho=0, NORM=False, HAS_ADD=False), None
    h, a, norm = residual
    h2 = h.reshape(-1, h.shape[-1]).contiguous()
    a2 = a.reshape(-1, a.shape[-1]).contiguous() if a is not None else h2
    ho = torch.empty(h2.shape, dtype=torch.promote_types(h2.dtype, a2.dtype), device=h.device) if a is not None else h2
    args = dict(H=h2, A=a2, NW=norm.weight, HO=ho, eps=float(norm.variance_epsilon), s_h=h2.stride(0),
                s_a=a2.stride(0), s_ho=ho.stride(0), NORM=True, HAS_ADD=a is not None)
    return h2, args, ho.view(h.shape)


def linear3(x: torch.Tensor | None, m0, m1, m2, residual=None, pdl: bool = False):
    """``(m0(x), m1(x), m2(x))`` of three ``nn.Linear`` in one launch (check :func:`fusable_linears` first). With
    ``residual = (h, a, norm)`` (``x`` None; check :func:`fusable_norm`): ``x = norm(h + a)`` computed inside the
    kernel — the residual add, the RMSNorm and the projections in one launch — and ``h + a`` returned fourth.
    ``pdl``: launched with programmatic dependent launch."""
    dtype = m0.weight.dtype
    x2, norm_args, h_new = _norm_inputs(x, residual)
    M, K = x2.shape
    outs = [torch.empty(M, m.out_features, dtype=dtype, device=x2.device) for m in (m0, m1, m2)]
    N = [m.out_features for m in (m0, m1, m2)]
    kernel, meta = _launch("linear3", dtype, sum(N), M)
    has_bias = m0.bias is not None
    bias = [m.bias if has_bias else m.weight for m in (m0, m1, m2)]
    grid = lambda META: (sum(-(-n // META["BN"]) for n in N), -(-M // META["BM"]))  # noqa: E731
    kernel[grid](
        x2, m0.weight, m1.weight, m2.weight, *bias, *outs, M, K, *N, x2.stride(0),
        m0.weight.stride(0), m1.weight.stride(0), m2.weight.stride(0), *(o.stride(0) for o in outs),
        **norm_args, HAS_BIAS=has_bias, **meta, **_pdl(pdl))
    shape = (x if x is not None else residual[0]).shape[:-1]
    outs = tuple(o.view(*shape, o.shape[-1]) for o in outs)
    return outs if residual is None else (*outs, h_new)


def linear(x: torch.Tensor, m, pdl: bool = False) -> torch.Tensor:
    """``m(x)`` of one ``nn.Linear`` on :func:`linear3`'s kernel (its second and third outputs empty; check
    :func:`fusable_linears` first): ``o_proj`` and ``down_proj`` under ``decode_pdl``, where cuBLAS's kernels
    would not take part in the dependent launches."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    M, K = x2.shape
    N = m.out_features
    out = torch.empty(M, N, dtype=m.weight.dtype, device=x2.device)
    kernel, meta = _launch("linear3", m.weight.dtype, N, M)
    _, norm_args, _ = _norm_inputs(x2, None)
    bias = m.bias if m.bias is not None else m.weight
    grid = lambda META: (-(-N // META["BN"]), -(-M // META["BM"]))  # noqa: E731
    kernel[grid](x2, m.weight, m.weight, m.weight, bias, bias, bias, out, out, out, M, K, N, 0, 0, x2.stride(0),
                 m.weight.stride(0), 0, 0, out.stride(0), 0, 0, **norm_args, HAS_BIAS=m.bias is not None, **meta,
                 **_pdl(pdl))
    return out.view(*x.shape[:-1], N)


def gate_up_silu(x: torch.Tensor | None, gate, up, residual=None, pdl: bool = False):
    """``silu(gate(x)) * up(x)`` of two ``nn.Linear`` in one launch (check :func:`fusable_linears` first). With
    ``residual = (h, a, norm)`` (``x`` None; check :func:`fusable_norm`): ``x = norm(h + a)`` computed inside the
    kernel, and ``(out, h + a)`` returned. ``pdl``: launched with programmatic dependent launch."""
    dtype = gate.weight.dtype
    x2, norm_args, h_new = _norm_inputs(x, residual)
    M, K = x2.shape
    N = gate.out_features
    out = torch.empty(M, N, dtype=dtype, device=x2.device)
    kernel, meta = _launch("gate_up_silu", dtype, 2 * N, M)
    has_bias = gate.bias is not None
    grid = lambda META: (-(-N // META["BN"]), -(-M // META["BM"]))  # noqa: E731
    kernel[grid](
        x2, gate.weight, up.weight, gate.bias if has_bias else gate.weight, up.bias if has_bias else up.weight,
        out, M, K, N, x2.stride(0), gate.weight.stride(0), up.weight.stride(0), out.stride(0), **norm_args,
        HAS_BIAS=has_bias, **meta, **_pdl(pdl))
    out = out.view(*(x if x is not None else residual[0]).shape[:-1], N)
    return out if residual is None else (out, h_new)


def decode_layers(model, hidden, position_embeddings, cache, token_mask, decode_step) -> torch.Tensor:
    """``model``'s (a ``LigerModel`` whose layers are all Liger layers) decoder layers and final norm, with the
    norms, residual adds and activations fused (check :func:`unsupported_reason` first): the static decode step
    (``decode_step`` "eager"/"compiled", ``hidden`` ``[B, 1, hidden]``) or a gradient-free multi-token call
    (``decode_step`` None: a prefill or an evaluation; the attention and, beyond :data:`SKINNY_MAX_ROWS` tokens,
    cuBLAS's GEMMs as in the layers' own forward). ``hidden``: the token embeddings; returns the final norm's
    output."""
    layers = model.layers
    fuse_norms = getattr(model.config, "decode_fuse_norms", False)  # (the add and norm inside the projections)
    # (decode_pdl: the decode step's kernels launched with programmatic dependent launch, down_proj on our kernel)
    pdl = decode_step is not None and getattr(model.config, "decode_pdl", False) and pdl_supported(hidden)
    h, a = hidden, None  # the residual stream and what the last sublayer adds to it
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        if fuse_norms and fusable_norm(h, a, layer.input_layernorm, *qkv):  # the add, the norm and q/k/v in one launch
            *projections, h = linear3(None, *qkv, residual=(h, a, layer.input_layernorm), pdl=pdl)
            x = h  # (the attention reads its input's shape only when given the projections)
        else:
            h, x = add_rms_norm(h, a, layer.input_layernorm, pdl=pdl)
            projections = linear3(x, *qkv, pdl=pdl) if fusable_linears(x, *qkv) else None
        a, _ = attn(x, position_embeddings=position_embeddings, past_key_values=cache, token_mask=token_mask,
                    decode_step=decode_step, projections=projections)
        if fuse_norms and fusable_norm(h, a, layer.post_attention_layernorm, mlp.gate_proj, mlp.up_proj):
            act, h = gate_up_silu(None, mlp.gate_proj, mlp.up_proj, residual=(h, a, layer.post_attention_layernorm),
                                  pdl=pdl)
        else:
            h, x = add_rms_norm(h, a, layer.post_attention_layernorm, pdl=pdl)
            if fusable_linears(x, mlp.gate_proj, mlp.up_proj):
                act = gate_up_silu(x, mlp.gate_proj, mlp.up_proj, pdl=pdl)
            else:
                act = silu_mul(mlp.gate_proj(x), mlp.up_proj(x))
        a = linear(act, mlp.down_proj, pdl=True) if pdl and fusable_linears(act, mlp.down_proj) else mlp.down_proj(act)
    return add_rms_norm(h, a, model.norm, pdl=pdl)[1]
