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
def dependent_launch(GDC: tl.constexpr):
    """GDC (a kernel launched with programmatic dependent launch, ``LigerConfig.decode_pdl``): wait until the
    kernel before has finished and its writes are visible, then let the next kernel launch (it waits in turn).
    Called first in a kernel, before any global memory access: nothing is read early, so any chain of such kernels
    (and kernels launched without it) keeps stream order."""
    if GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def add_rms_norm(H, A, W, H_OUT, X_OUT, N, eps, s_h, s_a, s_ho, s_xo, HAS_ADD: tl.constexpr, BN: tl.constexpr,
                 GDC: tl.constexpr = False):
    dependent_launch(GDC)
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
def _silu_times(g, u, dt):
    """``silu(g) * u`` in ``dt`` from float32 ``g``, ``u`` already rounded to ``dt``: the SiLU rounded to ``dt``
    before the product, the product rounded once (as ``F.silu(gate) * up`` in ``dt``)."""
    s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    return (s * u).to(dt)


@triton.jit
def silu_mul(G, U, OUT, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + offs, _silu_times(g, u, OUT.dtype.element_ty), mask=ok)


@triton.jit
def _residual(H, A, HO, offs_m, kk, M, K, s_h, s_a, HAS_ADD: tl.constexpr):
    """Rows ``offs_m``, columns ``kk`` of the residual stream ``h + a`` rounded to its dtype (``HO``'s; ``h``
    without ``a``), as float32."""
    mask = (offs_m[:, None] < M) & (kk[None, :] < K)
    r = tl.load(H + offs_m[:, None] * s_h + kk[None, :], mask=mask, other=0.0)
    if HAS_ADD:
        a = tl.load(A + offs_m[:, None] * s_a + kk[None, :], mask=mask, other=0.0)
        r = (r.to(tl.float32) + a.to(tl.float32)).to(HO.dtype.element_ty)
    return r.to(tl.float32)


@triton.jit
def _tile(X, W, BIAS, M, N, K, s_xm, s_wn, pid_m, pid_n, H, A, NW, HO, eps, s_h, s_a, s_ho, M_WRITE,
          NORM: tl.constexpr, HAS_ADD: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, W2=None, BIAS2=None, s_wn2=0,
          TWO: tl.constexpr = False):
    """``x @ W.T (+ bias)`` for a ``[BM, BN]`` tile, float32 (rows pid_m·BM.., output columns pid_n·BN..); TWO: and
    ``x @ W2.T (+ bias2)`` from the same ``x`` tiles (the MLP's gate and up; else the second is zeros). NORM:
    ``x`` is not read but computed, ``norm(h + a)`` (``add_rms_norm``'s arithmetic: the sum rounded to the
    residual stream's dtype, the RMSNorm in float32 rounded to it before the weight ``NW``, the product rounded to
    ``W``'s dtype), the row statistics from a first pass over the row, which also stores the rows of ``h + a``
    below ``M_WRITE`` into ``HO`` (M in one program per row block, 0 in the others)."""
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    acc2 = tl.zeros([BM, BN], tl.float32)
    if NORM:
        ss = tl.zeros([BM], tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + offs_k
            r = _residual(H, A, HO, offs_m, kk, M, K, s_h, s_a, HAS_ADD)
            if HAS_ADD:
                tl.store(HO + offs_m[:, None] * s_ho + kk[None, :], r.to(HO.dtype.element_ty),
                         mask=(offs_m[:, None] < M_WRITE) & (kk[None, :] < K))
            ss += tl.sum(r * r, 1)
        rstd = tl.rsqrt(ss / K + eps)
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        if NORM:
            r = _residual(H, A, HO, offs_m, kk, M, K, s_h, s_a, HAS_ADD)
            y = (r * rstd[:, None]).to(HO.dtype.element_ty).to(tl.float32)
            wn = tl.load(NW + kk, mask=kk < K, other=0.0).to(tl.float32)
            x = (wn[None, :] * y).to(W.dtype.element_ty)
        else:
            x = tl.load(X + offs_m[:, None] * s_xm + kk[None, :], mask=(offs_m[:, None] < M) & (kk[None, :] < K),
                        other=0.0)
        w_mask = (offs_n[None, :] < N) & (kk[:, None] < K)
        w = tl.load(W + offs_n[None, :] * s_wn + kk[:, None], mask=w_mask, other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        if TWO:
            w2 = tl.load(W2 + offs_n[None, :] * s_wn2 + kk[:, None], mask=w_mask, other=0.0)
            acc2 = tl.dot(x, w2, acc2, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if TWO:
            acc2 += tl.load(BIAS2 + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    return acc, acc2, offs_m, offs_n


@triton.jit
def linear3(X, W0, W1, W2, B0, B1, B2, O0, O1, O2, M, K, N0, N1, N2, s_xm, s_w0, s_w1, s_w2, s_o0, s_o1, s_o2,
            H, A, NW, HO, eps, s_h, s_a, s_ho, M_KEY, NORM: tl.constexpr, HAS_ADD: tl.constexpr,
            HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
            GDC: tl.constexpr = False):
    """Three linears of one input (q/k/v), one launch: programs ``[0, P0)`` compute ``x @ W0.T``, ``[P0, P0+P1)``
    ``x @ W1.T``, the rest ``x @ W2.T`` (``Pi = ⌈Ni / BN⌉``), each rounded once to its output's dtype (as
    ``F.linear``). NORM: ``x = norm(h + a)`` computed in the tiles (see ``_tile``), the first program of each row
    block writing ``h + a``. ``M_KEY``: the row count's bucket, for the autotuner's key only. With N1 = N2 = 0 it is
    one linear (``o_proj``, ``down_proj`` under ``decode_pdl``)."""
    dependent_launch(GDC)
    pid = tl.program_id(0)
    pid_m = tl.program_id(1)
    P0 = tl.cdiv(N0, BN)
    P1 = tl.cdiv(N1, BN)
    m_write = tl.where(pid == 0, M, 0)  # (the program that writes the new residual stream, with NORM and HAS_ADD)
    if pid < P0:
        acc, _, offs_m, offs_n = _tile(X, W0, B0, M, N0, K, s_xm, s_w0, pid_m, pid, H, A, NW, HO, eps, s_h, s_a, s_ho,
                                       m_write, NORM, HAS_ADD, HAS_BIAS, PRECISION, BM, BN, BK)
        tl.store(O0 + offs_m[:, None] * s_o0 + offs_n[None, :], acc.to(O0.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N0))
    elif pid < P0 + P1:
        acc, _, offs_m, offs_n = _tile(X, W1, B1, M, N1, K, s_xm, s_w1, pid_m, pid - P0, H, A, NW, HO, eps, s_h, s_a,
                                       s_ho, m_write, NORM, HAS_ADD, HAS_BIAS, PRECISION, BM, BN, BK)
        tl.store(O1 + offs_m[:, None] * s_o1 + offs_n[None, :], acc.to(O1.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N1))
    else:
        acc, _, offs_m, offs_n = _tile(X, W2, B2, M, N2, K, s_xm, s_w2, pid_m, pid - P0 - P1, H, A, NW, HO, eps, s_h,
                                       s_a, s_ho, m_write, NORM, HAS_ADD, HAS_BIAS, PRECISION, BM, BN, BK)
        tl.store(O2 + offs_m[:, None] * s_o2 + offs_n[None, :], acc.to(O2.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N2))


@triton.jit
def gate_up_silu(X, WG, WU, BG, BU, OUT, M, K, N, s_xm, s_wg, s_wu, s_o, H, A, NW, HO, eps, s_h, s_a, s_ho, M_KEY,
                 NORM: tl.constexpr, HAS_ADD: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GDC: tl.constexpr = False):
    """The MLP's ``silu(x @ Wg.T) * (x @ Wu.T)``, one launch: both products rounded to the output's dtype, the SiLU
    rounded before the product (as ``act_fn(gate_proj(x)) * up_proj(x)``). NORM: ``x = norm(h + a)`` computed in
    the tiles (see ``_tile``), the first column block writing ``h + a``."""
    dependent_launch(GDC)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    m_write = tl.where(pid_n == 0, M, 0)  # (the column block that writes the new residual stream, with NORM)
    g, u, offs_m, offs_n = _tile(X, WG, BG, M, N, K, s_xm, s_wg, pid_m, pid_n, H, A, NW, HO, eps, s_h, s_a, s_ho,
                                 m_write, NORM, HAS_ADD, HAS_BIAS, PRECISION, BM, BN, BK, WU, BU, s_wu, True)
    dt = OUT.dtype.element_ty
    tl.store(OUT + offs_m[:, None] * s_o + offs_n[None, :],
             _silu_times(g.to(dt).to(tl.float32), u.to(dt).to(tl.float32), dt),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _tile_configs():
    """The projection kernels' tile sizes and schedules, timed by Triton's autotuner on the first call of each
    shape (outside any CUDA graph: the decoders warm up first): 16 token rows (``tl.dot``'s least), 16 to 64
    output columns a program, 64 or 128 of the reduction a step — at decode batch sizes the kernels are bound by
    reading the weights once, so the best split of the columns over the GPU's SMs depends on the GPU."""
    return [triton.Config(dict(BM=16, BN=bn, BK=bk), num_warps=w, num_stages=st)
            for bn in (16, 32, 64) for bk in (64, 128) for w, st in ((4, 3), (4, 4), (2, 4))]


# the autotuned launchers (on a GPU; Triton's CPU interpreter takes the plain kernels with one tile size)
linear3_tuned = triton.autotune(_tile_configs(), key=["M_KEY", "N0", "N1", "N2", "K"])(linear3)
gate_up_silu_tuned = triton.autotune(_tile_configs(), key=["M_KEY", "N", "K"])(gate_up_silu)
