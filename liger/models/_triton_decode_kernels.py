"""The Triton kernels of :mod:`liger.models.triton_decode` (imported only when they are used; set
``TRITON_INTERPRET=1`` before the first import to get Triton's CPU interpreter versions).

``decode_step``: one program per (sequence, KV head) does the whole attention step of the ``G`` query heads of
its group — RoPE of q and k, the window's scores over the ring, the sinks and the new token, the recurrent state's
update and readout, the mix — and writes the new token's key/value into its ring slot (and its sink slot).
``decode_bookkeeping``: one program writes what every head of a sequence reads in ``decode_step`` (the ring's
valid flags, the sinks' positions and flags) and the token counts, after it.
Everything is computed in float32; bool tensors are passed as ``uint8`` views.
"""

try:  # (transformers' trust_remote_code check skips imports in try blocks: CPU machines load checkpoints
    import triton  # without Triton, and never import this module there)
    import triton.language as tl
except ImportError:
    raise


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _feature_map(x, ok, FMAP: tl.constexpr):
    """The variant's feature map over the head dim of a ``[BD]`` vector (0 on the masked lanes): 0 softmax,
    1 relu, 2 elu + 1, 3 identity."""
    if FMAP == 0:
        x = tl.where(ok, x, float("-inf"))
        e = tl.exp(x - tl.max(x, 0))
        y = e / tl.sum(e, 0)
    elif FMAP == 1:
        y = tl.maximum(x, 0.0)
    elif FMAP == 2:
        y = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    else:
        y = x
    return tl.where(ok, y, 0.0)


@triton.jit
def _rope(X, offs_d, partner, sign, dmask, cos, sin):
    """``x·cos + rotate_half(x)·sin`` of the ``[BD]`` row at ``X`` (rotate_half pairs channel d with d ± D/2)."""
    x = tl.load(X + offs_d, mask=dmask, other=0.0).to(tl.float32)
    xp = tl.load(X + partner, mask=dmask, other=0.0).to(tl.float32)
    return x * cos + sign * xp * sin


@triton.jit
def decode_step(
    Q, K, V, QL, KL, COS, SIN, VALID, STATE, RING_K, RING_V, RING_VALID, SEEN,
    SINK_K, SINK_V, SINK_POS, SINK_VALID, REAL_SEEN, OUT,
    sqb, sqh, skb, skh, svb, svh, sqlb, sqlh, sklb, sklh, scb,
    srkb, srkl, srkh, srvb, srvl, srvh, s_rvalid_b,
    sskb, sskn, sskh, ssvb, ssvn, ssvh, s_spos_b, s_svalid_b,
    H, L, L_MOD, S, scale, lin_scale, inv_norm, gamma, linear_weight, window_weight,
    D: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, G: tl.constexpr, BG: tl.constexpr, BL: tl.constexpr,
    BS: tl.constexpr, VS: tl.constexpr, FMAP: tl.constexpr, GATE: tl.constexpr, KEY_IS_GATE: tl.constexpr,
    READOUT: tl.constexpr, HAS_REC: tl.constexpr, HAS_WIN: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """Log-decay GATE: 0 logsigmoid(k)/n per channel (GLA; HGRN2 with γ = 0), 1 log(γ + (1−γ)σ(k))/n per channel
    (HGRN2), 2 −exp(min(k, 10))/n per channel (RWKV6), 3 −softplus(mean k)/n (Mamba2), 4 logsigmoid(mean k)/n
    (gated retention, mLSTM). KEY_IS_GATE: the state's key is 1 − α (HGRN2) instead of φ(k). READOUT: 0 none,
    1 "sum" (divided by the normaliser column, floored at 1e-12), 2 mLSTM (by max(|·|, 1)); with a normaliser the
    state has VS = D + 1 columns, else VS = D."""
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    D2: tl.constexpr = D // 2
    partner = tl.where(offs_d < D2, offs_d + D2, offs_d - D2)
    sign = tl.where(offs_d < D2, -1.0, 1.0)
    offs_g = tl.arange(0, BG)
    seen = tl.load(SEEN)
    real = tl.load(VALID + b) != 0
    cos = tl.load(COS + b * scb + offs_d, mask=dmask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + b * scb + offs_d, mask=dmask, other=0.0).to(tl.float32)
    k_rot = _rope(K + b * skb + h * skh, offs_d, partner, sign, dmask, cos, sin)
    slot = seen % L_MOD
    offs_s = tl.arange(0, BS)
    sink_at = tl.load(REAL_SEEN + b)  # the sink slot the new token takes (when < S and the token is real)

    # ---- the window's probabilities (ring, new token, sinks) for each query head of the group
    if HAS_WIN:
        offs_l = tl.arange(0, BL)
        lmask = offs_l < L
        rk = tl.load(RING_K + b * srkb + offs_l[:, None] * srkl + h * srkh + offs_d[None, :],
                     mask=lmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        ring_ok = lmask & (tl.load(RING_VALID + b * s_rvalid_b + offs_l, mask=lmask, other=0) != 0)
        p_ring = tl.zeros([BG, BL], tl.float32)
        p_new = tl.zeros([BG], tl.float32)
        p_sink = tl.zeros([BG, BS], tl.float32)
        if HAS_SINKS:
            smask = offs_s < S
            sk = tl.load(SINK_K + b * sskb + offs_s[:, None] * sskn + h * sskh + offs_d[None, :],
                         mask=smask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            spos = tl.load(SINK_POS + b * s_spos_b + offs_s, mask=smask, other=0)
            sink_ok = smask & (tl.load(SINK_VALID + b * s_svalid_b + offs_s, mask=smask, other=0) != 0)
            sink_ok = sink_ok & (spos < seen - L)  # a sink inside the window is counted once, as a window key
        for g in range(G):
            q_rot = _rope(Q + b * sqb + (h * G + g) * sqh, offs_d, partner, sign, dmask, cos, sin)
            s_ring = tl.where(ring_ok, tl.sum(rk * q_rot[None, :], 1) * scale, float("-inf"))
            s_new = tl.where(real, tl.sum(k_rot * q_rot, 0) * scale, float("-inf"))
            m = tl.maximum(tl.max(s_ring, 0), s_new)
            if HAS_SINKS:
                s_sink = tl.where(sink_ok, tl.sum(sk * q_rot[None, :], 1) * scale, float("-inf"))
                m = tl.maximum(m, tl.max(s_sink, 0))
            m = tl.where(m == float("-inf"), 0.0, m)
            e_ring = tl.exp(s_ring - m)
            e_new = tl.exp(s_new - m)
            den = tl.sum(e_ring, 0) + e_new
            if HAS_SINKS:
                e_sink = tl.exp(s_sink - m)
                den += tl.sum(e_sink, 0)
            den = tl.where(den > 0, den, 1.0)  # no visible key (a padding query): zeros
            row = offs_g == g
            p_ring = tl.where(row[:, None], (e_ring / den)[None, :], p_ring)
            p_new = tl.where(row, e_new / den, p_new)
            if HAS_SINKS:
                p_sink = tl.where(row[:, None], (e_sink / den)[None, :], p_sink)

    # ---- the recurrence's inputs: feature-mapped queries of the group, key, gate, the normaliser's readout
    if HAS_REC:
        state = STATE + (b * H + h) * D * VS
        kl = tl.load(KL + b * sklb + h * sklh + offs_d, mask=dmask, other=0.0).to(tl.float32)
        if GATE >= 3:
            x = tl.sum(kl, 0) / D
            if GATE == 3:
                gate = -(tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))) * inv_norm
            else:
                gate = _logsigmoid(x) * inv_norm
            decay = tl.zeros([BD], tl.float32) + tl.exp(tl.where(real, gate, 0.0))
        else:
            if GATE == 0:
                gate = _logsigmoid(kl) * inv_norm
            elif GATE == 1:
                gate = tl.log(gamma + (1 - gamma) / (1.0 + tl.exp(-kl))) * inv_norm
            else:
                gate = -tl.exp(tl.minimum(kl, 10.0)) * inv_norm
            decay = tl.where(real & dmask, tl.exp(gate), 1.0)
        if KEY_IS_GATE:  # HGRN2: the key is 1 − α
            kf = tl.where(dmask, 1.0 - tl.exp(gate), 0.0)
        else:
            kf = _feature_map(kl, dmask, FMAP)
        kf = tl.where(real, kf, 0.0)
        qf = tl.zeros([BG, BD], tl.float32)
        for g in range(G):
            ql = tl.load(QL + b * sqlb + (h * G + g) * sqlh + offs_d, mask=dmask, other=0.0).to(tl.float32)
            qf = tl.where((offs_g == g)[:, None], _feature_map(ql, dmask, FMAP)[None, :], qf)
        if READOUT != 0:  # the normaliser z rides as column D: z ← α z + φ(k)
            z = tl.load(state + offs_d * VS + D, mask=dmask, other=0.0)
            z = z * decay + kf
            tl.store(state + offs_d * VS + D, z, mask=dmask)
            norm = tl.sum(qf * z[None, :], 1) * lin_scale  # [BG]
            if READOUT == 1:
                norm = tl.maximum(norm, 1e-12)
            else:
                norm = tl.maximum(tl.abs(norm), 1.0)

    # ---- value side, BV columns at a time: window output, state update and readout, the mix
    for c in range(0, D, BV):
        cols = c + tl.arange(0, BV)
        cmask = cols < D
        v_new = tl.load(V + b * svb + h * svh + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_WIN:
            rv = tl.load(RING_V + b * srvb + offs_l[:, None] * srvl + h * srvh + cols[None, :],
                         mask=lmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            if HAS_SINKS:
                sv = tl.load(SINK_V + b * ssvb + offs_s[:, None] * ssvn + h * ssvh + cols[None, :],
                             mask=smask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        if HAS_REC:
            s_off = offs_d[:, None] * VS + cols[None, :]
            s_mask = dmask[:, None] & cmask[None, :]
            st = tl.load(state + s_off, mask=s_mask, other=0.0)
            st = st * decay[:, None] + kf[:, None] * tl.where(real, v_new, 0.0)[None, :]
            tl.store(state + s_off, st, mask=s_mask)
        for g in range(G):
            row = offs_g == g
            o = tl.zeros([BV], tl.float32)
            if HAS_WIN:
                pr = tl.sum(tl.where(row[:, None], p_ring, 0.0), 0)
                o_win = tl.sum(pr[:, None] * rv, 0) + tl.sum(tl.where(row, p_new, 0.0), 0) * v_new
                if HAS_SINKS:
                    ps = tl.sum(tl.where(row[:, None], p_sink, 0.0), 0)
                    o_win += tl.sum(ps[:, None] * sv, 0)
                # the window's output in the model's dtype, as the PyTorch step returns it
                o += window_weight * o_win.to(OUT.dtype.element_ty).to(tl.float32)
            if HAS_REC:
                qg = tl.sum(tl.where(row[:, None], qf, 0.0), 0)
                o_rec = tl.sum(qg[:, None] * st, 0) * lin_scale
                if READOUT != 0:
                    o_rec = o_rec / tl.sum(tl.where(row, norm, 0.0), 0)
                o += linear_weight * o_rec
            tl.store(OUT + (b * G * H + h * G + g) * D + cols, o.to(OUT.dtype.element_ty), mask=cmask)

    # ---- the new token into its ring slot and, while the sequence has fewer than S real tokens, a sink slot
    tl.debug_barrier()  # every thread of the program has read the ring and the sinks
    v_row = tl.load(V + b * svb + h * svh + offs_d, mask=dmask, other=0.0)
    if L > 0:
        tl.store(RING_K + b * srkb + slot * srkl + h * srkh + offs_d, k_rot.to(RING_K.dtype.element_ty), mask=dmask)
        tl.store(RING_V + b * srvb + slot * srvl + h * srvh + offs_d, v_row.to(RING_V.dtype.element_ty), mask=dmask)
    if HAS_SINKS:
        take = dmask & ((offs_d * 0 + sink_at) < S) & ((tl.zeros([BD], tl.int32) + real.to(tl.int32)) != 0)
        tl.store(SINK_K + b * sskb + sink_at * sskn + h * sskh + offs_d, k_rot.to(SINK_K.dtype.element_ty),
                 mask=take)
        tl.store(SINK_V + b * ssvb + sink_at * ssvn + h * ssvh + offs_d, v_row.to(SINK_V.dtype.element_ty),
                 mask=take)


@triton.jit
def decode_bookkeeping(VALID, RING_VALID, SEEN, SINK_POS, SINK_VALID, REAL_SEEN,
                       B, L, L_MOD, S, s_rvalid_b, s_spos_b, s_svalid_b,
                       BB: tl.constexpr, BS: tl.constexpr, HAS_SINKS: tl.constexpr):
    """After :func:`decode_step`: the new token's valid flag in its ring slot, the sink it becomes (position and
    flag), the real-token counts and the token count (``write_decoded_token``'s bookkeeping), in one program."""
    offs_b = tl.arange(0, BB)
    bmask = offs_b < B
    seen = tl.load(SEEN)
    real = tl.load(VALID + offs_b, mask=bmask, other=0)
    real_seen = tl.load(REAL_SEEN + offs_b, mask=bmask, other=0)
    if L > 0:
        tl.store(RING_VALID + offs_b * s_rvalid_b + seen % L_MOD, real, mask=bmask)
    if HAS_SINKS:
        offs_s = tl.arange(0, BS)
        m2 = bmask[:, None] & (offs_s < S)[None, :]
        take = (offs_s[None, :] == real_seen[:, None]) & (real != 0)[:, None] & m2
        pos_ptr = SINK_POS + offs_b[:, None] * s_spos_b + offs_s[None, :]
        tl.store(pos_ptr, tl.zeros([BB, BS], tl.int64) + seen, mask=take)
        tl.store(SINK_VALID + offs_b[:, None] * s_svalid_b + offs_s[None, :],
                 tl.full([BB, BS], 1, tl.uint8), mask=take)
    tl.store(REAL_SEEN + offs_b, real_seen + (real != 0).to(tl.int64), mask=bmask)
    tl.store(SEEN, seen + 1)
