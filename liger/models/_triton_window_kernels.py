"""The Triton kernels of :mod:`liger.models.triton_window` (imported only when they are used, so that
``import liger`` does not import Triton; set ``TRITON_INTERPRET=1`` before the first import to get Triton's CPU
interpreter versions)."""

try:  # (transformers' trust_remote_code check skips imports in try blocks: CPU machines load checkpoints
    import triton  # without Triton, and never import this module there)
    import triton.language as tl
except ImportError:
    raise


@triton.jit
def _scores_mask(offs_m, offs_n, L, Tq, Tk, valid_ptr, W: tl.constexpr, HAS_VALID: tl.constexpr):
    # [BM, BN] visibility: window band, keys in range, valid keys (a query always sees its own key)
    pos = L + offs_m
    diff = pos[:, None] - offs_n[None, :]
    in_range = (offs_n >= 0) & (offs_n < Tk)
    vis = (diff >= 0) & (diff < W) & in_range[None, :] & (offs_m < Tq)[:, None]
    if HAS_VALID:
        kv = tl.load(valid_ptr + offs_n, mask=in_range, other=0) != 0
        vis = vis & (kv[None, :] | (diff == 0))
    return vis

@triton.jit
def _window_fwd(
    Q, K, V, VALID, O, LSE,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, s_valid_b,
    Tq, Tk, HQ, G, scale,
    W: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    N_ITERS: tl.constexpr, HAS_VALID: tl.constexpr,
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
    qmask = (offs_m < Tq)[:, None] & dmask[None, :]
    q = tl.load(Q + b * sqb + offs_m[:, None] * sqt + hq * sqh + offs_d[None, :], mask=qmask, other=0.0)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    start = L + pid_m * BM - (W - 1)
    for it in range(N_ITERS):
        offs_n = start + it * BN + tl.arange(0, BN)
        nmask = ((offs_n >= 0) & (offs_n < Tk))[:, None] & dmask[None, :]
        k = tl.load(K + b * skb + offs_n[:, None] * skt + h * skh + offs_d[None, :], mask=nmask, other=0.0)
        v = tl.load(V + b * svb + offs_n[:, None] * svt + h * svh + offs_d[None, :], mask=nmask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        vis = _scores_mask(offs_m, offs_n, L, Tq, Tk, VALID + b * s_valid_b, W, HAS_VALID)
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
             mask=qmask)
    lse = tl.where(l_i > 0, m_i + tl.log(l_safe), 0.0)
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=offs_m < Tq)

@triton.jit
def _window_bwd_dq(
    Q, K, V, VALID, O, DO, LSE, DLSE, DELTA, DQ,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, s_valid_b,
    Tq, Tk, HQ, G, scale,
    W: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    N_ITERS: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DLSE: tl.constexpr,
):
    # q, dq share q's strides; o, do share o's strides (both are made contiguous [B, Tq, HQ, D])
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    hq = pid_bh % HQ
    h = hq // G
    L = Tk - Tq
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    qmask = (offs_m < Tq)[:, None] & dmask[None, :]
    q = tl.load(Q + b * sqb + offs_m[:, None] * sqt + hq * sqh + offs_d[None, :], mask=qmask, other=0.0)
    o_off = b * sob + offs_m[:, None] * sot + hq * soh + offs_d[None, :]
    do = tl.load(DO + o_off, mask=qmask, other=0.0)
    o = tl.load(O + o_off, mask=qmask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    if HAS_DLSE:  # the log-sum-exp is an output too: d lse / d s = p, so its gradient joins delta with a minus
        delta -= tl.load(DLSE + pid_bh * Tq + offs_m, mask=offs_m < Tq, other=0.0)
    tl.store(DELTA + pid_bh * Tq + offs_m, delta, mask=offs_m < Tq)
    lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=offs_m < Tq, other=0.0)
    dq = tl.zeros([BM, BD], tl.float32)
    start = L + pid_m * BM - (W - 1)
    for it in range(N_ITERS):
        offs_n = start + it * BN + tl.arange(0, BN)
        nmask = ((offs_n >= 0) & (offs_n < Tk))[:, None] & dmask[None, :]
        k = tl.load(K + b * skb + offs_n[:, None] * skt + h * skh + offs_d[None, :], mask=nmask, other=0.0)
        v = tl.load(V + b * svb + offs_n[:, None] * svt + h * svh + offs_d[None, :], mask=nmask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        vis = _scores_mask(offs_m, offs_n, L, Tq, Tk, VALID + b * s_valid_b, W, HAS_VALID)
        p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + b * sqb + offs_m[:, None] * sqt + hq * sqh + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=qmask)

@triton.jit
def _window_bwd_dkdv(
    Q, K, V, VALID, DO, LSE, DELTA, DK, DV,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, s_valid_b,
    Tq, Tk, HQ, G, scale,
    W: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    N_ITERS: tl.constexpr, HAS_VALID: tl.constexpr,
):
    # one program per (key block, batch, KV head): loops over the G query heads of the group and the query
    # blocks whose windows reach this key block; dk/dv share k's/v's strides
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    H = HQ // G
    b = pid_bh // H
    h = pid_bh % H
    L = Tk - Tq
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    nmask = (offs_n < Tk)[:, None] & dmask[None, :]
    k_off = b * skb + offs_n[:, None] * skt + h * skh + offs_d[None, :]
    v_off = b * svb + offs_n[:, None] * svt + h * svh + offs_d[None, :]
    k = tl.load(K + k_off, mask=nmask, other=0.0)
    v = tl.load(V + v_off, mask=nmask, other=0.0)
    dk = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BD], tl.float32)
    start = pid_n * BN - L  # query index of the first query that can see key pid_n * BN
    for g in range(G):
        hq = h * G + g
        row = (b * HQ + hq) * Tq
        for it in range(N_ITERS):
            offs_m = start + it * BM + tl.arange(0, BM)
            m_ok = (offs_m >= 0) & (offs_m < Tq)
            qmask = m_ok[:, None] & dmask[None, :]
            q = tl.load(Q + b * sqb + offs_m[:, None] * sqt + hq * sqh + offs_d[None, :], mask=qmask, other=0.0)
            do = tl.load(DO + b * sob + offs_m[:, None] * sot + hq * soh + offs_d[None, :], mask=qmask,
                         other=0.0)
            lse = tl.load(LSE + row + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + row + offs_m, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            vis = _scores_mask(offs_m, offs_n, L, Tq, Tk, VALID + b * s_valid_b, W, HAS_VALID)
            vis = vis & (offs_m >= 0)[:, None]
            p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + k_off, (dk * scale).to(DK.dtype.element_ty), mask=nmask)
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=nmask)
