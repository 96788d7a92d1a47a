"""The Triton kernels of :mod:`liger.models.triton_layer` (imported only when they are used; set
``TRITON_INTERPRET=1`` before the first import to get Triton's CPU interpreter versions).

``add_rms_norm``: one program per row: the residual add ``h + a`` (rounded to the residual stream's dtype, as the
decoder layer's ``residual + hidden_states``) and the RMSNorm of the sum (``weight * (x·rsqrt(mean x² + eps))``,
computed in float32 and rounded to the input's dtype before the weight, as the families' RMSNorm modules do).
``silu_mul``: the MLP's ``silu(gate) * up``, the SiLU rounded to the model's dtype before the product (as
``act_fn(gate_proj(x)) * up_proj(x)`` rounds it).
"""

try:  # (transformers' trust_remote_code check skips imports in try blocks: CPU machines load checkpoints
    import triton  # without Triton, and never import this module there)
    import triton.language as tl
except ImportError:
    raise


@triton.jit
def add_rms_norm(H, A, W, H_OUT, X_OUT, N, eps, s_h, s_a, s_ho, s_xo, HAS_ADD: tl.constexpr, BN: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BN)
    ok = offs < N
    h = tl.load(H + row * s_h + offs, mask=ok, other=0.0)
    if HAS_ADD:
        a = tl.load(A + row * s_a + offs, mask=ok, other=0.0)
        h = (h.to(tl.float32) + a.to(tl.float32)).to(H_OUT.dtype.element_ty)
        tl.store(H_OUT + row * s_ho + offs, h, mask=ok)
    x = h.to(tl.float32)
    var = tl.sum(x * x, 0) / N
    y = (x * tl.rsqrt(var + eps)).to(h.dtype).to(tl.float32)
    w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(X_OUT + row * s_xo + offs, (w * y).to(X_OUT.dtype.element_ty), mask=ok)


@triton.jit
def silu_mul(G, U, OUT, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + offs, (s * u).to(OUT.dtype.element_ty), mask=ok)
