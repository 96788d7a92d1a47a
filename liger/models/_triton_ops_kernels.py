"""The Triton kernels of :mod:`liger.models.triton_ops` (imported only when they are used; set
``TRITON_INTERPRET=1`` before the first import to get Triton's CPU interpreter versions).

Rows are ``[rows, half]`` tiles of contiguous ``[B, T, heads, D]`` tensors, split into their two column halves
(RoPE's ``rotate_half`` pairs column ``d`` with ``d + D/2``), each half a contiguous run of memory, so loads and
stores are vectorised. Everything is computed in float32 and rounded once.
"""

try:  # (transformers' trust_remote_code check skips imports in try blocks: CPU machines load checkpoints
    import triton  # without Triton, and never import this module there)
    import triton.language as tl
except ImportError:
    raise


@triton.jit
def _rope_rows(X, Y, COS, SIN, pid, n_rows, NH, T, scb, sct,
               D: tl.constexpr, BH: tl.constexpr, BR: tl.constexpr, BACKWARD: tl.constexpr):
    rows = pid * BR + tl.arange(0, BR)
    cols = tl.arange(0, BH)
    D2: tl.constexpr = D // 2
    mask = (rows < n_rows)[:, None] & (cols < D2)[None, :]
    bt = rows // NH
    crow = (bt // T) * scb + (bt % T) * sct
    x1 = tl.load(X + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(X + rows[:, None] * D + D2 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(COS + crow[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(COS + crow[:, None] + D2 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + crow[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + crow[:, None] + D2 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose of the rotation
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:  # x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁]
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(Y + rows[:, None] * D + cols[None, :], y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + rows[:, None] * D + D2 + cols[None, :], y2.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def rope_pair(Q, K, QO, KO, COS, SIN, n_q_rows, n_k_rows, HQ, H, T, scb, sct,
              D: tl.constexpr, BH: tl.constexpr, BR: tl.constexpr, BACKWARD: tl.constexpr):
    """RoPE (or its transpose) of q ``[B, T, HQ, D]`` and k ``[B, T, H, D]`` in one launch: the first programs
    take q's rows, the others k's."""
    pid = tl.program_id(0)
    q_programs = tl.cdiv(n_q_rows, BR)
    if pid < q_programs:
        _rope_rows(Q, QO, COS, SIN, pid, n_q_rows, HQ, T, scb, sct, D, BH, BR, BACKWARD)
    else:
        _rope_rows(K, KO, COS, SIN, pid - q_programs, n_k_rows, H, T, scb, sct, D, BH, BR, BACKWARD)


@triton.jit
def _softmax_rows(x, cols_ok):
    x = tl.where(cols_ok[None, :], x, float("-inf"))
    e = tl.exp(x - tl.max(x, 1)[:, None])
    return e / tl.sum(e, 1)[:, None]


@triton.jit
def gla_inputs_fwd(Q, K, V, VALID, QF, KF, VE, GE, n_tok, HQ, G, inv_norm,
                   D: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, HAS_VALID: tl.constexpr,
                   REPEAT: tl.constexpr):
    """Liger-GLA's recurrence inputs for one KV head and ``BT`` tokens: softmax(q) for the ``G`` query heads of
    the group, and softmax(k), v and the log-decay logsigmoid(k)/n repeated to them (REPEAT) or once per KV head,
    zero at padding."""
    pid_t = tl.program_id(0)
    h = tl.program_id(1)
    H = HQ // G
    tok = pid_t * BT + tl.arange(0, BT)
    cols = tl.arange(0, BD)
    cols_ok = cols < D
    mask = (tok < n_tok)[:, None] & cols_ok[None, :]
    kv_off = (tok * H + h)[:, None] * D + cols[None, :]
    k = tl.load(K + kv_off, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + kv_off, mask=mask, other=0.0)
    kf = _softmax_rows(k, cols_ok)
    g = (tl.minimum(k, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(k)))) * inv_norm  # logsigmoid(k) / n, stable
    if HAS_VALID:
        real = (tl.load(VALID + tok, mask=tok < n_tok, other=0) != 0)[:, None]
        kf = tl.where(real, kf, 0.0)
        g = tl.where(real, g, 0.0)
        v = tl.where(real, v, 0.0)
    for gi in range(G):
        hq = h * G + gi
        out_off = (tok * HQ + hq)[:, None] * D + cols[None, :]
        q = tl.load(Q + out_off, mask=mask, other=0.0).to(tl.float32)
        tl.store(QF + out_off, _softmax_rows(q, cols_ok).to(QF.dtype.element_ty), mask=mask)
        if REPEAT:
            tl.store(KF + out_off, kf.to(KF.dtype.element_ty), mask=mask)
            tl.store(VE + out_off, v.to(VE.dtype.element_ty), mask=mask)
            tl.store(GE + out_off, g, mask=mask)
    if not REPEAT:
        tl.store(KF + kv_off, kf.to(KF.dtype.element_ty), mask=mask)
        tl.store(VE + kv_off, v.to(VE.dtype.element_ty), mask=mask)
        tl.store(GE + kv_off, g, mask=mask)


@triton.jit
def gla_inputs_bwd(Q, K, VALID, DQF, DKF, DVE, DGE, DQ, DK, DV, n_tok, HQ, G, inv_norm,
                   D: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, HAS_VALID: tl.constexpr,
                   REPEAT: tl.constexpr):
    """Gradients of :func:`gla_inputs_fwd`: the repeated outputs' gradients are summed over the group."""
    pid_t = tl.program_id(0)
    h = tl.program_id(1)
    H = HQ // G
    tok = pid_t * BT + tl.arange(0, BT)
    cols = tl.arange(0, BD)
    cols_ok = cols < D
    mask = (tok < n_tok)[:, None] & cols_ok[None, :]
    dkf = tl.zeros([BT, BD], tl.float32)
    dg = tl.zeros([BT, BD], tl.float32)
    dv = tl.zeros([BT, BD], tl.float32)
    kv_off = (tok * H + h)[:, None] * D + cols[None, :]
    if not REPEAT:
        dkf += tl.load(DKF + kv_off, mask=mask, other=0.0).to(tl.float32)
        dg += tl.load(DGE + kv_off, mask=mask, other=0.0).to(tl.float32)
        dv += tl.load(DVE + kv_off, mask=mask, other=0.0).to(tl.float32)
    for gi in range(G):
        hq = h * G + gi
        off = (tok * HQ + hq)[:, None] * D + cols[None, :]
        if REPEAT:
            dkf += tl.load(DKF + off, mask=mask, other=0.0).to(tl.float32)
            dg += tl.load(DGE + off, mask=mask, other=0.0).to(tl.float32)
            dv += tl.load(DVE + off, mask=mask, other=0.0).to(tl.float32)
        q = tl.load(Q + off, mask=mask, other=0.0).to(tl.float32)
        qf = _softmax_rows(q, cols_ok)
        dqf = tl.load(DQF + off, mask=mask, other=0.0).to(tl.float32)
        dq = qf * (dqf - tl.sum(dqf * qf, 1)[:, None])
        tl.store(DQ + off, dq.to(DQ.dtype.element_ty), mask=mask)
    k = tl.load(K + kv_off, mask=mask, other=0.0).to(tl.float32)
    kf = _softmax_rows(k, cols_ok)
    sig_neg = 1.0 / (1.0 + tl.exp(k))  # d logsigmoid(k) / dk = sigmoid(-k)
    dk = kf * (dkf - tl.sum(dkf * kf, 1)[:, None]) + dg * sig_neg * inv_norm
    if HAS_VALID:
        real = (tl.load(VALID + tok, mask=tok < n_tok, other=0) != 0)[:, None]
        dk = tl.where(real, dk, 0.0)
        dv = tl.where(real, dv, 0.0)
    tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=mask)
