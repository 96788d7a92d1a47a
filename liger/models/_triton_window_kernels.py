"""The Triton kernels of :mod:`liger.models.triton_window` (imported only when they are used, so that
``import liger`` does not import Triton; set ``TRITON_INTERPRET=1`` before the first import to get Triton's CPU
interpreter versions).

Tiles are ``[rows, BD]`` with ``BD`` the head dim rounded up to a power of two (masked). With ``ROPE`` the
kernels read pre-RoPE queries and keys and rotate them on the fly (``x·cos + rotate_half(x)·sin``, the
Llama/Mistral/Qwen form, ``rotate_half(x) = [−x₂, x₁]``): ``rotate_half`` is a second load of the same rows
with the two halves of the columns swapped (``perm``) and a sign. Keys before index ``L = Tk − Tq`` (a cache's
window, stored after RoPE) are read as they are. Gradients go back through the rotation: for ``y = R x``,
``dx = dy·cos − sign·swap(dy)·swap(sin)``, where ``swap(dy)`` is computed as a second product with the
column-swapped rotated operand (registers cannot be permuted).
"""

import triton
import triton.language as tl


@triton.jit
def _rows(ptr, offs_t, st, cols, tmask, dmask):
    return tl.load(ptr + offs_t[:, None] * st + cols[None, :], mask=tmask[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _rotated(X, offs_t, sxt, COS, SIN, rot_t, sct, tmask, rmask, offs_d, perm, sign, dmask, SWAPPED: tl.constexpr):
    """Rows ``offs_t`` of X after RoPE with the cos/sin rows ``rot_t`` (float32); rows outside ``rmask`` are
    returned as loaded. SWAPPED: the rotated rows with their column halves swapped."""
    x = _rows(X, offs_t, sxt, offs_d, tmask, dmask).to(tl.float32)
    xs = _rows(X, offs_t, sxt, perm, tmask, dmask).to(tl.float32)
    cm = tmask & rmask
    if SWAPPED:
        c = _rows(COS, rot_t, sct, perm, cm, dmask).to(tl.float32)
        s = _rows(SIN, rot_t, sct, perm, cm, dmask).to(tl.float32)
        return tl.where(rmask[:, None], xs * c - sign[None, :] * x * s, xs)
    c = _rows(COS, rot_t, sct, offs_d, cm, dmask).to(tl.float32)
    s = _rows(SIN, rot_t, sct, offs_d, cm, dmask).to(tl.float32)
    return tl.where(rmask[:, None], x * c + sign[None, :] * xs * s, x)


@triton.jit
def _unrotate(dy, dy_swapped, COS, SIN, rot_t, sct, tmask, rmask, offs_d, perm, sign, dmask):
    """Gradient through RoPE: ``dy·cos − sign·swap(dy)·swap(sin)`` on rows in ``rmask`` (float32)."""
    cm = tmask & rmask
    c = _rows(COS, rot_t, sct, offs_d, cm, dmask).to(tl.float32)
    s_sw = _rows(SIN, rot_t, sct, perm, cm, dmask).to(tl.float32)
    return tl.where(rmask[:, None], dy * c - sign[None, :] * dy_swapped * s_sw, dy)


@triton.jit
def _visible(offs_m, offs_n, L, Tq, Tk, valid_ptr, W: tl.constexpr, HAS_VALID: tl.constexpr):
    # [BM, BN] visibility: window band, keys and queries in range, valid keys (a query always sees its own key)
    diff = (L + offs_m)[:, None] - offs_n[None, :]
    in_range = (offs_n >= 0) & (offs_n < Tk)
    vis = (diff >= 0) & (diff < W) & in_range[None, :] & ((offs_m >= 0) & (offs_m < Tq))[:, None]
    if HAS_VALID:
        kv = tl.load(valid_ptr + offs_n, mask=in_range, other=0) != 0
        vis = vis & (kv[None, :] | (diff == 0))
    return vis


@triton.jit
def _window_fwd(
    Q, K, V, VALID, COS, SIN, O, LSE,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, s_valid_b, scb, sct,
    Tq, Tk, HQ, G, scale,
    W: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    N_ITERS: tl.constexpr, HAS_VALID: tl.constexpr, ROPE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    hq = pid_bh % HQ
    h = hq // G
    L = Tk - Tq
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    perm = (offs_d + D // 2) % D
    sign = tl.where(offs_d < D // 2, -1.0, 1.0)
    m_ok = offs_m < Tq
    Qb, Kb, Vb = Q + b * sqb + hq * sqh, K + b * skb + h * skh, V + b * svb + h * svh
    COSb, SINb = COS + b * scb, SIN + b * scb
    if ROPE:
        q = _rotated(Qb, offs_m, sqt, COSb, SINb, offs_m, sct, m_ok, m_ok, offs_d, perm, sign, dmask, False)
        q = q.to(Q.dtype.element_ty)
    else:
        q = _rows(Qb, offs_m, sqt, offs_d, m_ok, dmask)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    start = L + pid_m * BM - (W - 1)
    for it in range(N_ITERS):
        offs_n = start + it * BN + tl.arange(0, BN)
        n_ok = (offs_n >= 0) & (offs_n < Tk)
        if ROPE:
            k = _rotated(Kb, offs_n, skt, COSb, SINb, offs_n - L, sct, n_ok, offs_n >= L, offs_d, perm, sign, dmask,
                         False).to(K.dtype.element_ty)
        else:
            k = _rows(Kb, offs_n, skt, offs_d, n_ok, dmask)
        v = _rows(Vb, offs_n, svt, offs_d, n_ok, dmask)
        s = tl.dot(q, tl.trans(k)) * scale
        vis = _visible(offs_m, offs_n, L, Tq, Tk, VALID + b * s_valid_b, W, HAS_VALID)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    tl.store(O + b * sob + offs_m[:, None] * sot + hq * soh + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=m_ok[:, None] & dmask[None, :])
    lse = tl.where(l_i > 0, m_i + tl.log(l_safe), 0.0)
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=m_ok)


@triton.jit
def _window_bwd_dq(
    Q, K, V, VALID, COS, SIN, O, DO, LSE, DELTA, DQ,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, s_valid_b, scb, sct,
    Tq, Tk, HQ, G, scale,
    W: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    N_ITERS: tl.constexpr, HAS_VALID: tl.constexpr, ROPE: tl.constexpr,
):
    # q and dq share q's strides; o and do share o's strides (all contiguous [B, T, heads, D])
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    hq = pid_bh % HQ
    h = hq // G
    L = Tk - Tq
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    perm = (offs_d + D // 2) % D
    sign = tl.where(offs_d < D // 2, -1.0, 1.0)
    m_ok = offs_m < Tq
    Qb, Kb, Vb = Q + b * sqb + hq * sqh, K + b * skb + h * skh, V + b * svb + h * svh
    COSb, SINb = COS + b * scb, SIN + b * scb
    if ROPE:
        q = _rotated(Qb, offs_m, sqt, COSb, SINb, offs_m, sct, m_ok, m_ok, offs_d, perm, sign, dmask, False)
        q = q.to(Q.dtype.element_ty)
    else:
        q = _rows(Qb, offs_m, sqt, offs_d, m_ok, dmask)
    Ob = b * sob + hq * soh
    do = _rows(DO + Ob, offs_m, sot, offs_d, m_ok, dmask)
    o = _rows(O + Ob, offs_m, sot, offs_d, m_ok, dmask)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * Tq + offs_m, delta, mask=m_ok)
    lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BM, BD], tl.float32)
    dq_sw = tl.zeros([BM, BD], tl.float32)
    start = L + pid_m * BM - (W - 1)
    for it in range(N_ITERS):
        offs_n = start + it * BN + tl.arange(0, BN)
        n_ok = (offs_n >= 0) & (offs_n < Tk)
        if ROPE:
            is_new = offs_n >= L
            k = _rotated(Kb, offs_n, skt, COSb, SINb, offs_n - L, sct, n_ok, is_new, offs_d, perm, sign, dmask,
                         False).to(K.dtype.element_ty)
            k_sw = _rotated(Kb, offs_n, skt, COSb, SINb, offs_n - L, sct, n_ok, is_new, offs_d, perm, sign, dmask,
                            True).to(K.dtype.element_ty)
        else:
            k = _rows(Kb, offs_n, skt, offs_d, n_ok, dmask)
        v = _rows(Vb, offs_n, svt, offs_d, n_ok, dmask)
        s = tl.dot(q, tl.trans(k)) * scale
        vis = _visible(offs_m, offs_n, L, Tq, Tk, VALID + b * s_valid_b, W, HAS_VALID)
        p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = (p * (dp - delta[:, None])).to(k.dtype)
        dq += tl.dot(ds, k)
        if ROPE:
            dq_sw += tl.dot(ds, k_sw)
    if ROPE:
        dq = _unrotate(dq, dq_sw, COSb, SINb, offs_m, sct, m_ok, m_ok, offs_d, perm, sign, dmask)
    tl.store(DQ + b * sqb + offs_m[:, None] * sqt + hq * sqh + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & dmask[None, :])


@triton.jit
def _window_bwd_dkdv(
    Q, K, V, VALID, COS, SIN, DO, LSE, DELTA, DK, DV,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, s_valid_b, scb, sct,
    Tq, Tk, HQ, G, scale,
    W: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    N_ITERS: tl.constexpr, HAS_VALID: tl.constexpr, ROPE: tl.constexpr,
):
    # one program per (key block, batch, KV head): loops over the G query heads of the group and the query
    # blocks whose windows reach this key block, so dk/dv are summed without atomics; dk/dv share k's/v's strides
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    H = HQ // G
    b = pid_bh // H
    h = pid_bh % H
    L = Tk - Tq
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    perm = (offs_d + D // 2) % D
    sign = tl.where(offs_d < D // 2, -1.0, 1.0)
    n_ok = offs_n < Tk
    is_new = offs_n >= L
    Kb, Vb = K + b * skb + h * skh, V + b * svb + h * svh
    COSb, SINb = COS + b * scb, SIN + b * scb
    if ROPE:
        k = _rotated(Kb, offs_n, skt, COSb, SINb, offs_n - L, sct, n_ok, is_new, offs_d, perm, sign, dmask,
                     False).to(K.dtype.element_ty)
    else:
        k = _rows(Kb, offs_n, skt, offs_d, n_ok, dmask)
    v = _rows(Vb, offs_n, svt, offs_d, n_ok, dmask)
    dk = tl.zeros([BN, BD], tl.float32)
    dk_sw = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BD], tl.float32)
    start = pid_n * BN - L  # index of the first query that can see key pid_n * BN
    for g in range(G):
        hq = h * G + g
        row = (b * HQ + hq) * Tq
        Qb = Q + b * sqb + hq * sqh
        for it in range(N_ITERS):
            offs_m = start + it * BM + tl.arange(0, BM)
            m_ok = (offs_m >= 0) & (offs_m < Tq)
            if ROPE:
                q = _rotated(Qb, offs_m, sqt, COSb, SINb, offs_m, sct, m_ok, m_ok, offs_d, perm, sign, dmask,
                             False).to(Q.dtype.element_ty)
            else:
                q = _rows(Qb, offs_m, sqt, offs_d, m_ok, dmask)
            do = _rows(DO + b * sob + hq * soh, offs_m, sot, offs_d, m_ok, dmask)
            lse = tl.load(LSE + row + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + row + offs_m, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            vis = _visible(offs_m, offs_n, L, Tq, Tk, VALID + b * s_valid_b, W, HAS_VALID)
            p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dp = tl.dot(do, tl.trans(v))
            ds = tl.trans((p * (dp - delta[:, None])).to(q.dtype))
            dk += tl.dot(ds, q)
            if ROPE:
                q_sw = _rotated(Qb, offs_m, sqt, COSb, SINb, offs_m, sct, m_ok, m_ok, offs_d, perm, sign, dmask,
                                True).to(Q.dtype.element_ty)
                dk_sw += tl.dot(ds, q_sw)
    if ROPE:
        dk = _unrotate(dk, dk_sw, COSb, SINb, offs_n - L, sct, n_ok, is_new, offs_d, perm, sign, dmask)
    nmask = n_ok[:, None] & dmask[None, :]
    tl.store(DK + b * skb + offs_n[:, None] * skt + h * skh + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=nmask)
    tl.store(DV + b * svb + offs_n[:, None] * svt + h * svh + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=nmask)
