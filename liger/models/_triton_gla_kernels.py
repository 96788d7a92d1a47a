"""The Triton kernel of :mod:`liger.models.triton_gla` (imported only when it is used; set ``TRITON_INTERPRET=1``
before the first import to get Triton's CPU interpreter version).

``chunk_gla_fwd``: the gated recurrence of ``gla_ops.naive_recurrent_gla`` (key-side gate) over a whole sequence,
forward only, one program per (batch row, KV head, block of value columns). The program keeps its ``[K, BV]``
state in registers and walks the sequence in chunks of ``BT`` tokens; each chunk reads the KV head's keys, values
and log-decays once and serves the ``GROUP`` query heads that share them (grouped-query attention without
repeating K/V). Per chunk, with ``b`` the cumulative log-decay inside the chunk (``b_t = Σ_{s ≤ t} g_s``)::

    o_t = scale · (q_t ⊙ exp(b_t)) S  +  Σ_{j ≤ t} scale · (q_t · (k_j ⊙ exp(b_t − b_j))) v_j
    S  ← diag(exp(b_last)) S + Σ_j (k_j ⊙ exp(b_last − b_j))ᵀ v_j

The intra-chunk scores are one tensor-core product ``(q ⊙ exp(b))(k ⊙ exp(−b))ᵀ`` when no channel decays by more
than ``SAFE`` nats within the chunk (``exp(−b_j) ≤ exp(SAFE)``: 60 for float32/bfloat16 products, 8 for float16,
whose range ends at 65504), else pairwise (a loop over the chunk's ``BT`` keys, every exponent ≤ 0): strong
gates underflow to 0 and never overflow.

``LIGER_GLA``: the inputs are Liger-GLA's raw projections and the kernel applies its feature map and gate itself
(softmax(q), softmax(k) rounded to the inputs' dtype, log-decay ``logsigmoid(k) / n`` in float32, padding
zeroed: what ``triton_ops.gla_inputs`` computes); otherwise q/k/v/g are the recurrence's prepared inputs.
Products of 16-bit inputs run on tensor cores in that dtype with float32 accumulation (as fla's kernels do);
float32 inputs multiply exactly (``PRECISION`` "ieee").
"""

try:  # (transformers' trust_remote_code check skips imports in try blocks: CPU machines load checkpoints
    import triton  # without Triton, and never import this module there)
    import triton.language as tl
except ImportError:
    raise

from ._triton_ops_kernels import _softmax_rows


@triton.jit
def _dot(a, b, dt, PRECISION: tl.constexpr):
    """``a @ b`` with float32 accumulation: exact float32 products (PRECISION "ieee", float32 inputs), or the
    operands rounded to ``dt``, the inputs' 16-bit dtype (PRECISION "half")."""
    if PRECISION == "ieee":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(dt), b.to(dt))


@triton.jit
def chunk_gla_fwd(Q, K, V, G, VALID, H0, O, HT, T, HEADS, inv_norm, scale,
                  s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_gb, s_gt, s_gh, s_gd, s_ob, s_ot, s_oh,
                  DK: tl.constexpr, DV: tl.constexpr, GROUP: tl.constexpr, BG: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, LIGER_GLA: tl.constexpr, HAS_VALID: tl.constexpr,
                  HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PRECISION: tl.constexpr, SAFE: tl.constexpr):
    pid_v = tl.program_id(0)
    bh = tl.program_id(1)  # batch row * HEADS + KV head
    b = bh // HEADS
    h = bh % HEADS
    dt = Q.dtype.element_ty
    R: tl.constexpr = BG * BT  # query rows of a chunk: the group's heads stacked, BT tokens each
    rows = tl.arange(0, R)
    head = rows // BT  # query head within the group
    ti = rows % BT  # token within the chunk
    tk = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    ok_k = ck < DK
    cv = pid_v * BV + tl.arange(0, BV)
    ok_v = cv < DV
    q_base = Q + b * s_qb + (h * GROUP + head) * s_qh
    o_base = O + b * s_ob + (h * GROUP + head) * s_oh
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    g_base = G + b * s_gb + h * s_gh
    state_off = (bh * DK + ck)[:, None] * DV + cv[None, :]
    state_ok = ok_k[:, None] & ok_v[None, :]
    causal = ti[:, None] >= tk[None, :]
    S = tl.zeros([BK, BV], tl.float32)
    if HAS_H0:
        S = tl.load(H0 + state_off, mask=state_ok, other=0.0).to(tl.float32)
    for t0 in range(0, T, BT):
        t_r = t0 + ti
        ok_r = (t_r < T) & (head < GROUP)
        t_c = t0 + tk
        ok_t = t_c < T
        q = tl.load(q_base[:, None] + t_r[:, None] * s_qt + ck[None, :], mask=ok_r[:, None] & ok_k[None, :],
                    other=0.0).to(tl.float32)
        kv_mask = ok_t[:, None] & ok_k[None, :]
        k = tl.load(k_base + t_c[:, None] * s_kt + ck[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_base + t_c[:, None] * s_vt + cv[None, :], mask=ok_t[:, None] & ok_v[None, :], other=0.0)
        if LIGER_GLA:
            q = _softmax_rows(q, ok_k).to(dt).to(tl.float32)
            g = (tl.minimum(k, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(k)))) * inv_norm  # logsigmoid(k) / n, stable
            k = _softmax_rows(k, ok_k).to(dt).to(tl.float32)
            real = ok_t
            if HAS_VALID:
                real = real & (tl.load(VALID + b * T + t_c, mask=ok_t, other=0) != 0)
            k = tl.where(real[:, None] & ok_k[None, :], k, 0.0)
            g = tl.where(real[:, None] & ok_k[None, :], g, 0.0)
            v = tl.where(real[:, None], v, 0.0)
        else:
            g = tl.load(g_base + t_c[:, None] * s_gt + ck[None, :] * s_gd, mask=kv_mask, other=0.0).to(tl.float32)
        q = q * scale
        bc = tl.cumsum(g, 0)  # [BT, BK] cumulative log-decay inside the chunk
        b_last = tl.sum(g, 0)  # [BK]
        b_rows = tl.reshape(tl.broadcast_to(bc[None, :, :], (BG, BT, BK)), (R, BK))
        # the state's part: o = (q ⊙ exp(b)) S
        o = _dot(q * tl.exp(b_rows), S, dt, PRECISION)
        # the chunk's part: A[t, j] = q_t · (k_j ⊙ exp(b_t − b_j)) for j ≤ t
        if tl.max(-b_last, 0) <= SAFE:  # factored through exp(−b_j) ≤ exp(SAFE): one product on tensor cores
            A = tl.where(causal, _dot(q * tl.exp(b_rows), tl.trans(k * tl.exp(-bc)), dt, PRECISION), 0.0)
        else:  # a channel decays by more than SAFE nats within the chunk: pairwise, every exponent ≤ 0
            A = tl.zeros([R, BT], tl.float32)
            for j in range(BT):
                pick = (tk == j)[:, None]
                k_j = tl.sum(tl.where(pick, k, 0.0), 0)
                b_j = tl.sum(tl.where(pick, bc, 0.0), 0)
                decay = tl.exp(tl.where((ti >= j)[:, None], b_rows - b_j[None, :], float("-inf")))
                a = tl.sum(q * k_j[None, :] * decay, 1)
                A += tl.where((tk == j)[None, :], a[:, None], 0.0)
        o += _dot(A, v, dt, PRECISION)
        tl.store(o_base[:, None] + t_r[:, None] * s_ot + cv[None, :], o.to(O.dtype.element_ty),
                 mask=ok_r[:, None] & ok_v[None, :])
        # the state after the chunk
        k_dec = k * tl.exp(b_last[None, :] - bc)
        S = S * tl.exp(b_last)[:, None] + _dot(tl.trans(k_dec), v, dt, PRECISION)
    if STORE_HT:
        tl.store(HT + state_off, S, mask=state_ok)


@triton.jit
def _bwd_chunk(k_base, v_base, g_base, do_base, t_c, t_r, ok_t, ok_r, kv_mask, ck, cv, ok_v, s_kt, s_vt, s_gt, s_gd,
               s_dot, BG: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """What both walks of :func:`chunk_gla_bwd` read of a chunk: keys (float32), values, o's gradient, and the
    cumulative log-decays per token, at the chunk's end, and repeated for the group's stacked query rows."""
    k = tl.load(k_base + t_c[:, None] * s_kt + ck[None, :], mask=kv_mask, other=0.0).to(tl.float32)
    v = tl.load(v_base + t_c[:, None] * s_vt + cv[None, :], mask=ok_t[:, None] & ok_v[None, :], other=0.0)
    g = tl.load(g_base + t_c[:, None] * s_gt + ck[None, :] * s_gd, mask=kv_mask, other=0.0).to(tl.float32)
    do = tl.load(do_base[:, None] + t_r[:, None] * s_dot + cv[None, :], mask=ok_r[:, None] & ok_v[None, :], other=0.0)
    bc = tl.cumsum(g, 0)
    b_rows = tl.reshape(tl.broadcast_to(bc[None, :, :], (BG, BT, BK)), (BG * BT, BK))
    return k, v, do, bc, tl.sum(g, 0), b_rows


@triton.jit
def chunk_gla_bwd(Q, K, V, G, H0, DO, DHT, DQ, DK, DV, DH0, HS, DGB, T, HEADS, scale,
                  s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_gb, s_gt, s_gh, s_gd,
                  s_dqv, s_dkv, s_dgv,
                  DK_: tl.constexpr, DV_: tl.constexpr, GROUP: tl.constexpr, BG: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr,
                  STORE_DH0: tl.constexpr, PRECISION: tl.constexpr, SAFE: tl.constexpr):
    """Gradients of :func:`chunk_gla_fwd` (prepared inputs) for one (batch row, KV head, block of value columns):
    a forward walk that rebuilds the states and writes dq (this block's share: summed over the blocks
    afterwards), then a backward walk over the state's gradient dS that writes dk (this block's share), dv and
    dh0. ``DO`` is o's gradient laid out like ``O`` (contiguous ``[B, T, HQ, DV]``), ``DQ``/``DK`` float32
    ``[blocks, B, T, heads, DK]``, ``DV`` like V (contiguous), ``DH0``/``DHT`` ``[B, H, DK, DV]`` float32.

    The log-decays' gradient is assembled outside (``triton_gla``) from dq and dk inside each chunk and, for
    what lies beyond it, the identity ``Σ_{s after the chunk} (q_s ⊙ dq_s − k_s ⊙ dk_s) + Σ_v S_T ⊙ dS_T =
    Σ_v S_c ⊙ dS_c`` (S_c the state after chunk c, dS_c its gradient from the later chunks): the forward walk
    keeps each S_c in ``HS`` (float32 ``[B·H, chunks, DK, DV]``, scratch, int64 offsets), the backward walk
    writes this value block's share of ``Σ_v S_c ⊙ dS_c`` to ``DGB`` (float32 ``[blocks, B, chunks, H, DK]``).
    (A reverse sum over the whole sequence instead cancels large terms: on an H100 in bfloat16 it left dg 2.4e-2
    from the float64 reference at T = 300 and 4.3e-2 at T = 1,000, where fla's kernels, which use the same
    identity, reach 1.7e-3: run P of docs/gpu.md.)"""
    pid_v = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    dt = Q.dtype.element_ty
    R: tl.constexpr = BG * BT
    rows = tl.arange(0, R)
    head = rows // BT
    ti = rows % BT
    tk = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    ok_k = ck < DK_
    cv = pid_v * BV + tl.arange(0, BV)
    ok_v = cv < DV_
    HQ = HEADS * GROUP
    q_base = Q + b * s_qb + (h * GROUP + head) * s_qh
    do_base = DO + (b * T * HQ + h * GROUP + head) * DV_
    dq_base = DQ + pid_v * s_dqv + (b * T * HQ + h * GROUP + head) * DK_
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    g_base = G + b * s_gb + h * s_gh
    dk_base = DK + pid_v * s_dkv + (b * T * HEADS + h) * DK_
    dv_base = DV + (b * T * HEADS + h) * DV_
    state_off = (bh * DK_ + ck)[:, None] * DV_ + cv[None, :]
    state_ok = ok_k[:, None] & ok_v[None, :]
    causal = ti[:, None] >= tk[None, :]
    n_chunks = tl.cdiv(T, BT)
    state_off_c = ck[:, None] * DV_ + cv[None, :]  # within one [DK, DV] state of HS
    S = tl.zeros([BK, BV], tl.float32)
    if HAS_H0:
        S = tl.load(H0 + state_off, mask=state_ok, other=0.0).to(tl.float32)
    # forward walk: dq = scale·[(do Sᵀ) ⊙ exp(b) + Σ_{j ≤ t} (do·v_j) k_j ⊙ exp(b_t − b_j)]
    for t0 in range(0, T, BT):
        t_r = t0 + ti
        ok_r = (t_r < T) & (head < GROUP)
        t_c = t0 + tk
        ok_t = t_c < T
        kv_mask = ok_t[:, None] & ok_k[None, :]
        k, v, do, bc, b_last, b_rows = _bwd_chunk(k_base, v_base, g_base, do_base, t_c, t_r, ok_t, ok_r, kv_mask,
                                                  ck, cv, ok_v, s_kt, s_vt, s_gt, s_gd, HQ * DV_, BG, BT, BK)
        dA = tl.where(causal, _dot(do, tl.trans(v), dt, PRECISION), 0.0)  # [R, BT]: do_t · v_j, j ≤ t
        if tl.max(-b_last, 0) <= SAFE:  # (as in the forward) dq = exp(b) ⊙ (do Sᵀ + dA (k ⊙ exp(−b)))
            dq = (_dot(do, tl.trans(S), dt, PRECISION) + _dot(dA, k * tl.exp(-bc), dt, PRECISION)) * tl.exp(b_rows)
        else:
            dq = _dot(do, tl.trans(S), dt, PRECISION) * tl.exp(b_rows)
            for j in range(BT):
                pick = (tk == j)[:, None]
                k_j = tl.sum(tl.where(pick, k, 0.0), 0)
                b_j = tl.sum(tl.where(pick, bc, 0.0), 0)
                decay = tl.exp(tl.where((ti >= j)[:, None], b_rows - b_j[None, :], float("-inf")))
                dA_j = tl.sum(tl.where((tk == j)[None, :], dA, 0.0), 1)
                dq += dA_j[:, None] * k_j[None, :] * decay
        tl.store(dq_base[:, None] + t_r[:, None] * HQ * DK_ + ck[None, :], dq * scale,
                 mask=ok_r[:, None] & ok_k[None, :])
        k_dec = k * tl.exp(b_last[None, :] - bc)
        S = S * tl.exp(b_last)[:, None] + _dot(tl.trans(k_dec), v, dt, PRECISION)
        tl.store(HS + (bh.to(tl.int64) * n_chunks + t0 // BT) * DK_ * DV_ + state_off_c, S, mask=state_ok)
    # backward walk over dS (the gradient of the state after each chunk)
    dS = tl.zeros([BK, BV], tl.float32)
    if HAS_DHT:
        dS = tl.load(DHT + state_off, mask=state_ok, other=0.0).to(tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        t0 = c * BT
        # this block's share of Σ_v S_c ⊙ dS_c: the log-decays' gradient from everything after chunk c
        S_c = tl.load(HS + (bh.to(tl.int64) * n_chunks + c) * DK_ * DV_ + state_off_c, mask=state_ok, other=0.0)
        tl.store(DGB + pid_v * s_dgv + ((b * n_chunks + c) * HEADS + h) * DK_ + ck, tl.sum(S_c * dS, 1), mask=ok_k)
        t_r = t0 + ti
        ok_r = (t_r < T) & (head < GROUP)
        t_c = t0 + tk
        ok_t = t_c < T
        kv_mask = ok_t[:, None] & ok_k[None, :]
        q = tl.load(q_base[:, None] + t_r[:, None] * s_qt + ck[None, :], mask=ok_r[:, None] & ok_k[None, :],
                    other=0.0).to(tl.float32) * scale
        k, v, do, bc, b_last, b_rows = _bwd_chunk(k_base, v_base, g_base, do_base, t_c, t_r, ok_t, ok_r, kv_mask,
                                                  ck, cv, ok_v, s_kt, s_vt, s_gt, s_gd, HQ * DV_, BG, BT, BK)
        dA = tl.where(causal, _dot(do, tl.trans(v), dt, PRECISION), 0.0)
        if tl.max(-b_last, 0) <= SAFE:  # A = (q ⊙ exp(b))(k ⊙ exp(−b))ᵀ, dk = exp(−b) ⊙ dAᵀ (q ⊙ exp(b))
            q_dec = q * tl.exp(b_rows)
            k_inc = tl.exp(-bc)
            A = tl.where(causal, _dot(q_dec, tl.trans(k * k_inc), dt, PRECISION), 0.0)
            dk = _dot(tl.trans(dA), q_dec, dt, PRECISION) * k_inc
        else:
            A = tl.zeros([R, BT], tl.float32)
            dk = tl.zeros([BT, BK], tl.float32)
            for j in range(BT):
                pick = (tk == j)[:, None]
                k_j = tl.sum(tl.where(pick, k, 0.0), 0)
                b_j = tl.sum(tl.where(pick, bc, 0.0), 0)
                decay = tl.exp(tl.where((ti >= j)[:, None], b_rows - b_j[None, :], float("-inf")))
                A += tl.where((tk == j)[None, :], tl.sum(q * k_j[None, :] * decay, 1)[:, None], 0.0)
                dA_j = tl.sum(tl.where((tk == j)[None, :], dA, 0.0), 1)
                dk += tl.where(pick, tl.sum(dA_j[:, None] * q * decay, 0)[None, :], 0.0)
        to_end = tl.exp(b_last[None, :] - bc)  # [BT, BK]
        dk += _dot(v, tl.trans(dS), dt, PRECISION) * to_end
        dv = _dot(tl.trans(A), do, dt, PRECISION) + _dot(k * to_end, dS, dt, PRECISION)
        tl.store(dk_base + t_c[:, None] * HEADS * DK_ + ck[None, :], dk, mask=kv_mask)
        tl.store(dv_base + t_c[:, None] * HEADS * DV_ + cv[None, :], dv.to(DV.dtype.element_ty),
                 mask=ok_t[:, None] & ok_v[None, :])
        dS = dS * tl.exp(b_last)[:, None] + _dot(tl.trans(q * tl.exp(b_rows)), do, dt, PRECISION)
    if STORE_DH0:
        tl.store(DH0 + state_off, dS, mask=state_ok)
