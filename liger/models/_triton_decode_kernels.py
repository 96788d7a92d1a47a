"""The Triton kernels of :mod:`liger.models.triton_decode` (imported only when they are used; set
``TRITON_INTERPRET=1`` before the first import to get Triton's CPU interpreter versions).

``decode_step``: per (sequence, KV head), ``NA`` window programs — each its share of the window's key blocks —
and ``NR`` state programs — each its share of the state's columns —, the last to finish combining them, do the
whole attention step of the ``G`` query heads of its group — RoPE of q and k, the window's scores over the ring,
the sinks, the new token and the global cache's members, the recurrent state's update (generic gated form or
gated delta rule) and readout, the mix, the global cache's merge of the token leaving the window (with
``global_cache_pool``: of the pending token it decides, and the shift of the pending tokens and recent errors) —
and writes the new token's key/value into its ring slot (and its sink slot).
The last program of the launch to finish (an atomic count) then writes what every program reads (the ring's valid
flags, the sinks' positions and flags) and the token counts.
Everything is computed in float32; bool tensors are passed as ``uint8`` views.
"""

try:  # (transformers' trust_remote_code check skips imports in try blocks: CPU machines load checkpoints
    import triton  # without Triton, and never import this module there)
    import triton.language as tl
except ImportError:
    raise


@triton.jit
def dependent_launch(GDC: tl.constexpr):
    """GDC (a kernel launched with programmatic dependent launch, ``LigerConfig.decode_pdl``): wait until the
    kernel before has finished and its writes are visible, then let the next kernel launch (as the layer kernels'
    twin in ``_triton_layer_kernels``: each kernel module stands alone in a saved checkpoint)."""
    if GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _feature_map(x, ok, FMAP: tl.constexpr):
    """The variant's feature map over the head dim of a ``[BD]`` vector (0 on the masked lanes): 0 softmax,
    1 relu, 2 elu + 1, 3 identity, 4 L2 normalisation ``x / sqrt(Σx² + 1e-6)`` (the gated delta rule's q̂, k̂)."""
    if FMAP == 0:
        x = tl.where(ok, x, float("-inf"))
        e = tl.exp(x - tl.max(x, 0))
        y = e / tl.sum(e, 0)
    elif FMAP == 1:
        y = tl.maximum(x, 0.0)
    elif FMAP == 2:
        y = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif FMAP == 3:
        y = x
    else:
        x = tl.where(ok, x, 0.0)
        y = x / tl.sqrt(tl.sum(x * x, 0) + 1e-6)
    return tl.where(ok, y, 0.0)


@triton.jit
def _rope(X, offs_d, partner, sign, dmask, cos, sin):
    """``x·cos + rotate_half(x)·sin`` of the ``[BD]`` row at ``X`` (rotate_half pairs channel d with d ± D/2)."""
    x = tl.load(X + offs_d, mask=dmask, other=0.0).to(tl.float32)
    xp = tl.load(X + partner, mask=dmask, other=0.0).to(tl.float32)
    return x * cos + sign * xp * sin


@triton.jit
def _attend(q, KP, VP, s_kn, s_vn, rows, load, ok, offs_d, dmask, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One block of keys/values — rows ``rows`` of ``KP``/``VP`` (row strides ``s_kn``/``s_vn``; ``load``: the rows
    to read, ``ok``: the visible ones) — into the online softmax (running max ``m_i``, sum ``l_i``, output ``acc``)
    of the scaled queries ``q`` ``[BGP, BD]`` (float32, or the keys' 16-bit dtype with PRECISION "lowp"); a row that
    sees no key yet keeps ``m_i`` = −inf and adds nothing."""
    mask = load[:, None] & dmask[None, :]
    kb = tl.load(KP + rows[:, None] * s_kn + offs_d[None, :], mask=mask, other=0.0)
    vb = tl.load(VP + rows[:, None] * s_vn + offs_d[None, :], mask=mask, other=0.0)
    if PRECISION == "lowp":  # 16-bit keys/values: products on 16-bit operands (q and p rounded), float32 sums
        s = tl.dot(q, tl.trans(kb.to(q.dtype)))
    else:
        s = tl.dot(q, tl.trans(kb.to(tl.float32)), input_precision=PRECISION)
    s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if PRECISION == "lowp":
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), vb.to(q.dtype))
    else:
        acc = acc * alpha[:, None] + tl.dot(p, vb.to(tl.float32), input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _group_queries(Q, KEYS, b, h, sqb, sqh, offs_d, partner, sign, dmask, cos, sin, offs_gp, scale, G: tl.constexpr,
                   BGP: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr):
    """The ``G`` query heads of KV head ``h`` after RoPE, scaled, as the rows of a ``[BGP, BD]`` float32 tile (rows
    >= G zero), and the same tile as the window's products take it: in the keys' (``KEYS``) 16-bit dtype with
    PRECISION "lowp", as SDPA takes its operands."""
    q_all = tl.zeros([BGP, BD], tl.float32)
    for g in range(G):
        q_rot = _rope(Q + b * sqb + (h * G + g) * sqh, offs_d, partner, sign, dmask, cos, sin)
        q_all = tl.where((offs_gp == g)[:, None], q_rot[None, :], q_all)
    q_all = q_all * scale
    if PRECISION == "lowp":
        q_mma = q_all.to(KEYS.dtype.element_ty)
    else:
        q_mma = q_all
    return q_all, q_mma


@triton.jit
def _sinks_and_token(q_all, q_mma, k_rot, V, SINK_K, SINK_V, SINK_POS, SINK_VALID, b, h, svb, svh, sskb, sskn, sskh,
                     ssvb, ssvn, ssvh, s_spos_b, s_svalid_b, seen, real, L, S, offs_s, offs_d, dmask, m_i, l_i, acc,
                     HAS_SINKS: tl.constexpr, PRECISION: tl.constexpr):
    """The visible sinks (a sink still inside the window counts once, as a window key) and the new token (padding
    sees no key and gets zeros) into the online softmax ``m_i, l_i, acc``."""
    if HAS_SINKS:
        smask = offs_s < S
        spos = tl.load(SINK_POS + b * s_spos_b + offs_s, mask=smask, other=0)
        sink_ok = smask & (tl.load(SINK_VALID + b * s_svalid_b + offs_s, mask=smask, other=0) != 0)
        sink_ok = sink_ok & (spos < seen - L)
        m_i, l_i, acc = _attend(q_mma, SINK_K + b * sskb + h * sskh, SINK_V + b * ssvb + h * ssvh, sskn, ssvn,
                                offs_s, smask, sink_ok, offs_d, dmask, m_i, l_i, acc, PRECISION)
    v_tok = tl.load(V + b * svb + h * svh + offs_d, mask=dmask, other=0.0).to(tl.float32)
    s_new = tl.where(real, tl.sum(q_all * k_rot[None, :], 1), float("-inf"))
    m_new = tl.maximum(m_i, s_new)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    e_new = tl.exp(s_new - m_safe)
    return m_new, l_i * alpha + e_new, acc * alpha[:, None] + e_new[:, None] * v_tok[None, :]


@triton.jit
def _store_part(PART_M, PART_L, PART_ACC, part, offs_gp, offs_d, m_i, l_i, acc, BGP: tl.constexpr, BD: tl.constexpr):
    """A program's part of the window's softmax, combined by the last program of its (sequence, KV head)."""
    tl.store(PART_M + part * BGP + offs_gp, m_i)
    tl.store(PART_L + part * BGP + offs_gp, l_i)
    tl.store(PART_ACC + (part * BGP + offs_gp)[:, None] * BD + offs_d[None, :], acc)


@triton.jit
def decode_step(
    Q, K, V, QL, KL, COS, SIN, VALID, STATE, RING_K, RING_V, RING_VALID, SEEN,
    SINK_K, SINK_V, SINK_POS, SINK_VALID, REAL_SEEN, OUT,
    RING_KL, GLOB_K, GLOB_V, GLOB_SCORE, GLOB_INDEX, PEND_K, PEND_V, RECENT,
    PART_M, PART_L, PART_ACC, REC, ERRP, ZBUF, WORST_S, WORST_I, COUNT,
    sqb, sqh, skb, skh, svb, svh, sqlb, sqlh, sklb, sklh, scb,
    srkb, srkl, srkh, srvb, srvl, srvh, s_rvalid_b,
    sskb, sskn, sskh, ssvb, ssvn, ssvh, s_spos_b, s_svalid_b,
    srklb, srkll, srklh, sgkb, sgkn, sgkh, sgvb, sgvn, sgvh, sgsb, sgsn, sgsh, sgib, sgin, sgih,
    spkb, spkn, spkh, spvb, spvn, spvh, srcb, srcn, srch,
    B, H, L, L_MOD, S, NGLOB, scale, lin_scale, inv_norm, gamma, beta_const, linear_weight, window_weight,
    D: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, G: tl.constexpr, BG: tl.constexpr,
    BS: tl.constexpr, BGL: tl.constexpr, BGP: tl.constexpr, BK: tl.constexpr,
    VS: tl.constexpr, PRECISION: tl.constexpr, FMAP: tl.constexpr, GATE: tl.constexpr,
    KEY_IS_GATE: tl.constexpr, DELTA: tl.constexpr, BETA_CONST: tl.constexpr, HAS_Z: tl.constexpr,
    READOUT: tl.constexpr, HAS_REC: tl.constexpr, REC_OUT: tl.constexpr, HAS_WIN: tl.constexpr,
    HAS_SINKS: tl.constexpr, HAS_GLOBAL: tl.constexpr, HAS_RING: tl.constexpr,
    POOL: tl.constexpr, BP: tl.constexpr, B2P: tl.constexpr, NA: tl.constexpr, NR: tl.constexpr,
    NPART: tl.constexpr, BVS: tl.constexpr,
    BB: tl.constexpr, GDC: tl.constexpr = False,
):
    """Log-decay GATE: 0 logsigmoid(k)/n per channel (GLA; HGRN2 with γ = 0), 1 log(γ + (1−γ)σ(k))/n per channel
    (HGRN2), 2 −exp(min(k, 10))/n per channel (RWKV6), 3 −softplus(mean k)/n (Mamba2), 4 logsigmoid(mean k)/n
    (gated retention, mLSTM, Gated DeltaNet). KEY_IS_GATE: the state's key is 1 − α (HGRN2) instead of φ(k).
    DELTA: the gated delta rule (Gated DeltaNet, with FMAP 4: L2-normalised q̂/k̂) — ``S' = α S``,
    ``u = β (v − k̂ S')``, ``S ← S' + k̂ᵀ u`` — with β = σ(mean k), or ``beta_const`` when BETA_CONST.
    HAS_Z: the state carries the normaliser z as column D (VS = D + 1, else VS = D). READOUT: 0 none, 1 "sum"
    (divided by the normaliser, floored at 1e-12), 2 mLSTM (by max(|·|, 1)). HAS_REC: the state is stepped;
    REC_OUT: its readout enters the output (linear_weight != 0). HAS_GLOBAL: the window also attends the NGLOB
    global-cache members of the KV head (visible where their score > −inf), and the token leaving the window
    (the ring's slot ``seen % L``; the new token itself without a ring) is scored by its self-recall error
    against the state after this step and merged into the cache (``merge_leaver_``). POOL (``global_cache_pool``
    P, 0 = off): the leaver instead joins the P pending tokens (PEND_K/PEND_V ``[B, P, H, D]``, oldest first) and
    its error the 2P recent ones (RECENT ``[B, 2P, H]`` float32, −inf = none); the oldest pending token (position
    ``seen − L − P``) is merged, scored by the largest of the 2P + 1 errors, or −inf when its own (recent[P]) is
    −inf (``pooled_scores``). GDC: launched with programmatic dependent launch (``decode_pdl``): wait for the
    kernel before first (:func:`dependent_launch`)."""
    dependent_launch(GDC)
    pid = tl.program_id(0)
    # this program's role: j < NA the window's key blocks j, j + NA, ...; j >= NA the state's columns
    # [(j − NA)·BVS, (j − NA + 1)·BVS) (NA = 0 without a window, NR = 0 without a stepped state)
    j = tl.program_id(1)
    NPROG: tl.constexpr = NA + NR
    b = pid // H
    h = pid % H
    offs_d = tl.arange(0, BD)
    dmask = offs_d < D
    D2: tl.constexpr = D // 2
    partner = tl.where(offs_d < D2, offs_d + D2, offs_d - D2)
    sign = tl.where(offs_d < D2, -1.0, 1.0)
    offs_g = tl.arange(0, BG)
    offs_gp = tl.arange(0, BGP)
    seen = tl.load(SEEN)
    real = tl.load(VALID + b) != 0
    cos = tl.load(COS + b * scb + offs_d, mask=dmask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + b * scb + offs_d, mask=dmask, other=0.0).to(tl.float32)
    k_rot = _rope(K + b * skb + h * skh, offs_d, partner, sign, dmask, cos, sin)
    slot = seen % L_MOD
    offs_s = tl.arange(0, BS)
    sink_at = tl.load(REAL_SEEN + b)  # the sink slot the new token takes (when < S and the token is real)
    # ---- the window's output for each query head of the group, this program's blocks of the ring and the global
    # cache's members (BK keys a block, online softmax); the sinks and the new token by window program 0, or in a
    # part of their own by the last state program (NPART = NA + 1: the launcher's choice when the window programs'
    # path is the longer one); [BGP, BD] products on tensor cores (rows >= G unused)
    if HAS_WIN:
        if j < NA:
            q_all, q_mma = _group_queries(Q, RING_K, b, h, sqb, sqh, offs_d, partner, sign, dmask, cos, sin, offs_gp,
                                          scale, G, BGP, BD, PRECISION)
            m_i = tl.full([BGP], float("-inf"), tl.float32)
            l_i = tl.zeros([BGP], tl.float32)
            acc = tl.zeros([BGP, BD], tl.float32)
            offs_k = tl.arange(0, BK)
            for k0 in range(j * BK, L, NA * BK):
                rows = k0 + offs_k
                rmask = rows < L
                ok = rmask & (tl.load(RING_VALID + b * s_rvalid_b + rows, mask=rmask, other=0) != 0)
                m_i, l_i, acc = _attend(q_mma, RING_K + b * srkb + h * srkh, RING_V + b * srvb + h * srvh, srkl, srvl,
                                        rows, rmask, ok, offs_d, dmask, m_i, l_i, acc, PRECISION)
            if HAS_GLOBAL:
                for k0 in range(j * BK, NGLOB, NA * BK):
                    rows = k0 + offs_k
                    rmask = rows < NGLOB
                    ok = rmask & (tl.load(GLOB_SCORE + b * sgsb + rows * sgsn + h * sgsh, mask=rmask,
                                          other=float("-inf")) > float("-inf"))
                    m_i, l_i, acc = _attend(q_mma, GLOB_K + b * sgkb + h * sgkh, GLOB_V + b * sgvb + h * sgvh, sgkn,
                                            sgvn, rows, rmask, ok, offs_d, dmask, m_i, l_i, acc, PRECISION)
            if NPART == NA:  # window program 0 takes the sinks and the new token
                if j == 0:
                    m_i, l_i, acc = _sinks_and_token(
                        q_all, q_mma, k_rot, V, SINK_K, SINK_V, SINK_POS, SINK_VALID, b, h, svb, svh, sskb, sskn,
                        sskh, ssvb, ssvn, ssvh, s_spos_b, s_svalid_b, seen, real, L, S, offs_s, offs_d, dmask, m_i,
                        l_i, acc, HAS_SINKS, PRECISION)
            _store_part(PART_M, PART_L, PART_ACC, pid * NPART + j, offs_gp, offs_d, m_i, l_i, acc, BGP, BD)

    # ---- the recurrence: feature-mapped queries of the group, key, gate, the normaliser; then this program's
    # state columns, BV at a time: update, readout (into REC, float32), the leaver's recall error
    if HAS_REC:
        if j >= NA:
            jr = j - NA
            if NPART > NA:  # the sinks and the new token, the window's last part
                if jr == NR - 1:
                    q_all, q_mma = _group_queries(Q, RING_K, b, h, sqb, sqh, offs_d, partner, sign, dmask, cos, sin,
                                                  offs_gp, scale, G, BGP, BD, PRECISION)
                    m_i, l_i, acc = _sinks_and_token(
                        q_all, q_mma, k_rot, V, SINK_K, SINK_V, SINK_POS, SINK_VALID, b, h, svb, svh, sskb, sskn,
                        sskh, ssvb, ssvn, ssvh, s_spos_b, s_svalid_b, seen, real, L, S, offs_s, offs_d, dmask,
                        tl.full([BGP], float("-inf"), tl.float32), tl.zeros([BGP], tl.float32),
                        tl.zeros([BGP, BD], tl.float32), HAS_SINKS, PRECISION)
                    _store_part(PART_M, PART_L, PART_ACC, pid * NPART + NA, offs_gp, offs_d, m_i, l_i, acc, BGP, BD)
            state = STATE + pid * D * VS
            kl = tl.load(KL + b * sklb + h * sklh + offs_d, mask=dmask, other=0.0).to(tl.float32)
            if GATE >= 3:
                x = tl.sum(kl, 0) / D
                if GATE == 3:
                    gate = -(tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))) * inv_norm
                else:
                    gate = _logsigmoid(x) * inv_norm
                decay = tl.zeros([BD], tl.float32) + tl.exp(tl.where(real, gate, 0.0))
                if DELTA:  # the write strength β (0 for padding: no write)
                    if BETA_CONST:
                        beta = tl.where(real, beta_const, 0.0)
                    else:
                        beta = tl.where(real, 1.0 / (1.0 + tl.exp(-x)), 0.0)
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
            if REC_OUT:
                qf = tl.zeros([BG, BD], tl.float32)
                for g in range(G):
                    ql = tl.load(QL + b * sqlb + (h * G + g) * sqlh + offs_d, mask=dmask, other=0.0).to(tl.float32)
                    qf = tl.where((offs_g == g)[:, None], _feature_map(ql, dmask, FMAP)[None, :], qf)
            if HAS_Z:  # the normaliser z rides as column D: z ← α z + φ(k) (written by the last program to arrive)
                z = tl.load(state + offs_d * VS + D, mask=dmask, other=0.0)
                z = z * decay + kf
                if REC_OUT:
                    if READOUT != 0:
                        norm = tl.sum(qf * z[None, :], 1) * lin_scale  # [BG]
                        if READOUT == 1:
                            norm = tl.maximum(norm, 1e-12)
                        else:
                            norm = tl.maximum(tl.abs(norm), 1.0)
            if HAS_GLOBAL:  # the leaver's recall query φ(k) (k̂ for the delta rule), and its normaliser φ(k)·z
                if HAS_RING:
                    lk_lin = tl.load(RING_KL + b * srklb + slot * srkll + h * srklh + offs_d, mask=dmask,
                                     other=0.0).to(tl.float32)
                else:  # a window of 1: the new token leaves at once
                    lk_lin = kl
                lf = _feature_map(lk_lin, dmask, FMAP)
                if HAS_Z:
                    l_den = tl.maximum(tl.sum(lf * z, 0) * lin_scale, 1e-12)
                err2 = tl.sum(tl.zeros([BD], tl.float32), 0)
            for c in range(jr * BVS, jr * BVS + BVS, BV):
                cols = c + tl.arange(0, BV)
                cmask = cols < D
                v_new = tl.load(V + b * svb + h * svh + cols, mask=cmask, other=0.0).to(tl.float32)
                s_off = offs_d[:, None] * VS + cols[None, :]
                s_mask = dmask[:, None] & cmask[None, :]
                st = tl.load(state + s_off, mask=s_mask, other=0.0)
                v_in = tl.where(real, v_new, 0.0)
                if DELTA:  # S' = α S;  u = β (v − k̂ S');  S = S' + k̂ᵀ u
                    st = st * decay[:, None]
                    u = beta * (v_in - tl.sum(kf[:, None] * st, 0))
                    st = st + kf[:, None] * u[None, :]
                else:
                    st = st * decay[:, None] + kf[:, None] * v_in[None, :]
                tl.store(state + s_off, st, mask=s_mask)
                if HAS_GLOBAL:  # the leaver's self-recall error against the updated state, these columns of it
                    if HAS_RING:
                        lv = tl.load(RING_V + b * srvb + slot * srvl + h * srvh + cols, mask=cmask,
                                     other=0.0).to(tl.float32)
                    else:
                        lv = v_new
                    read = tl.sum(lf[:, None] * st, 0) * lin_scale
                    if HAS_Z:
                        read = read / l_den
                    err2 += tl.sum(tl.where(cmask, (lv - read) * (lv - read), 0.0), 0)
                if REC_OUT:
                    for g in range(G):
                        row = offs_g == g
                        qg = tl.sum(tl.where(row[:, None], qf, 0.0), 0)
                        o_rec = tl.sum(qg[:, None] * st, 0) * lin_scale
                        if READOUT != 0:
                            o_rec = o_rec / tl.sum(tl.where(row, norm, 0.0), 0)
                        tl.store(REC + (pid * BGP + g) * BD + cols, o_rec, mask=cmask)
            if HAS_GLOBAL:  # this program's share of the leaver's squared error
                tl.store(ERRP + pid * NR + jr, err2)
                # and (the first state program) the member a merge would replace, found here, beside the window
                # programs, rather than by the last program after them: the lowest score; among equal scores the
                # latest token, then the first slot (merge_leaver_'s order; the scores change only in the merge)
                if jr == 0:
                    offs_gl = tl.arange(0, BGL)
                    glmask = offs_gl < NGLOB
                    g_score = tl.load(GLOB_SCORE + b * sgsb + offs_gl * sgsn + h * sgsh, mask=glmask,
                                      other=float("-inf"))
                    g_index = tl.load(GLOB_INDEX + b * sgib + offs_gl * sgin + h * sgih, mask=glmask, other=0)
                    worst_score = tl.min(tl.where(glmask, g_score, float("inf")), 0)
                    is_min = glmask & (g_score == worst_score)
                    latest = tl.max(tl.where(is_min, g_index, -(2 ** 62)), 0)
                    tl.store(WORST_S + pid, worst_score)
                    tl.store(WORST_I + pid, tl.min(tl.where(is_min & (g_index == latest), offs_gl, BGL), 0))
            if HAS_Z:  # the new normaliser (every state program computed it from the old one; the last one writes it)
                if jr == 0:
                    tl.store(ZBUF + pid * BD + offs_d, z, mask=dmask)

    # ---- every thread of every program of this (sequence, KV head) has read the ring, the sinks, the global
    # members and z: the last program to arrive combines the parts, mixes, merges and writes
    tl.debug_barrier()
    if NPROG > 1:
        last = tl.atomic_add(COUNT + pid, 1) == NPROG - 1  # (acq_rel: the others' parts are visible to it)
        tl.debug_barrier()
    else:
        last = pid >= 0
    if last:
        if NPROG > 1:
            tl.store(COUNT + pid, 0)  # (for the next call)
        # every read of this section first, so that they overlap: the new normaliser, the global cache's scores and
        # indices, the leaver and the pending tokens, the window's parts
        v_row = tl.load(V + b * svb + h * svh + offs_d, mask=dmask, other=0.0)
        if HAS_Z:
            z_new = tl.load(ZBUF + pid * BD + offs_d, mask=dmask, other=0.0, cache_modifier=".cg")
        if HAS_GLOBAL:
            kl_row = tl.load(KL + b * sklb + h * sklh + offs_d, mask=dmask, other=0.0)
            err2 = tl.sum(tl.zeros([BD], tl.float32), 0)
            for jj in tl.static_range(NR):
                err2 += tl.load(ERRP + pid * NR + jj, cache_modifier=".cg")
            worst_score = tl.load(WORST_S + pid, cache_modifier=".cg")
            worst = tl.load(WORST_I + pid, cache_modifier=".cg")
            # the leaver: its post-RoPE key and value (for the cache) and whether it competes
            if HAS_RING:
                lk_row = tl.load(RING_K + b * srkb + slot * srkl + h * srkh + offs_d, mask=dmask, other=0.0)
                lv_row = tl.load(RING_V + b * srvb + slot * srvl + h * srvh + offs_d, mask=dmask, other=0.0)
                l_ok = tl.load(RING_VALID + b * s_rvalid_b + slot) != 0
            else:  # a window of 1: the new token leaves at once
                lk_row = k_rot
                lv_row = v_row
                l_ok = real
                if HAS_SINKS:  # nor when it becomes a sink on this step
                    l_ok = l_ok & (sink_at >= S)
            l_index = seen - L
            if HAS_SINKS:  # a sink never competes
                smask_l = offs_s < S
                spos_l = tl.load(SINK_POS + b * s_spos_b + offs_s, mask=smask_l, other=0)
                sval_l = tl.load(SINK_VALID + b * s_svalid_b + offs_s, mask=smask_l, other=0) != 0
                is_sink = tl.sum((smask_l & sval_l & (spos_l == l_index)).to(tl.int32), 0) > 0
                l_ok = l_ok & (is_sink == 0)
            l_score = tl.where(l_ok, tl.sqrt(err2), float("-inf"))
            # merge_leaver_: the worst member (lowest score; among equal scores the latest token, then the first
            # slot) is replaced when the candidate's score beats it (strictly: on a tie the member stays); the
            # candidate is the leaver, or with a pool the oldest pending token scored by pooled_scores
            if POOL > 0:  # the pending token decided now (row 0), the rows and errors that move down one place
                offs_p = tl.arange(0, BP)
                nxt_p = (offs_p + 1 < POOL)[:, None] & dmask[None, :]
                c_k = tl.load(PEND_K + b * spkb + h * spkh + offs_d, mask=dmask, other=0.0)
                c_v = tl.load(PEND_V + b * spvb + h * spvh + offs_d, mask=dmask, other=0.0)
                pk_next = tl.load(PEND_K + b * spkb + (offs_p + 1)[:, None] * spkn + h * spkh + offs_d[None, :],
                                  mask=nxt_p, other=0.0)
                pv_next = tl.load(PEND_V + b * spvb + (offs_p + 1)[:, None] * spvn + h * spvh + offs_d[None, :],
                                  mask=nxt_p, other=0.0)
                offs_r = tl.arange(0, B2P)
                recent = tl.load(RECENT + b * srcb + offs_r * srcn + h * srch, mask=offs_r < 2 * POOL,
                                 other=float("-inf"))
                r_next = tl.load(RECENT + b * srcb + (offs_r + 1) * srcn + h * srch, mask=offs_r + 1 < 2 * POOL,
                                 other=float("-inf"))
                c_own = tl.load(RECENT + b * srcb + POOL * srcn + h * srch)  # the decided token's own error
                r_max = tl.max(recent, 0)
                c_score = tl.where(c_own > float("-inf"), tl.maximum(r_max, l_score), float("-inf"))
                c_index = l_index - POOL
            else:
                c_k, c_v, c_score, c_index = lk_row, lv_row, l_score, l_index
        out_rows = OUT + (b * G * H + h * G + offs_gp)[:, None] * D + offs_d[None, :]
        out_mask = (offs_gp < G)[:, None] & dmask[None, :]
        o = tl.zeros([BGP, BD], tl.float32)
        if HAS_WIN:
            m_all = tl.full([BGP], float("-inf"), tl.float32)
            for jj in tl.static_range(NPART):
                m_all = tl.maximum(m_all, tl.load(PART_M + (pid * NPART + jj) * BGP + offs_gp, cache_modifier=".cg"))
            m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
            l_all = tl.zeros([BGP], tl.float32)
            acc_all = tl.zeros([BGP, BD], tl.float32)
            for jj in tl.static_range(NPART):
                part = pid * NPART + jj
                w = tl.exp(tl.load(PART_M + part * BGP + offs_gp, cache_modifier=".cg") - m_all)
                l_all += w * tl.load(PART_L + part * BGP + offs_gp, cache_modifier=".cg")
                acc_all += w[:, None] * tl.load(PART_ACC + (part * BGP + offs_gp)[:, None] * BD + offs_d[None, :],
                                                cache_modifier=".cg")
            # the window's output in the model's dtype, as the PyTorch step returns it
            o_win = (acc_all / tl.where(l_all > 0, l_all, 1.0)[:, None]).to(OUT.dtype.element_ty)
            o += window_weight * o_win.to(tl.float32)
        if REC_OUT:
            o += linear_weight * tl.load(REC + (pid * BGP + offs_gp)[:, None] * BD + offs_d[None, :],
                                         mask=out_mask, other=0.0, cache_modifier=".cg")
        tl.store(out_rows, o.to(OUT.dtype.element_ty), mask=out_mask)
        if HAS_Z:
            tl.store(STATE + pid * D * VS + offs_d * VS + D, z_new, mask=dmask)

        if HAS_GLOBAL:  # the merge (its reads, above, came first: one round trip with the parts')
            tl.debug_barrier()  # (the pending rows are read before they move)
            take = (c_score > worst_score) & (worst < NGLOB)
            take_row = dmask & ((tl.zeros([BD], tl.float32) + c_score) > worst_score) & ((offs_d * 0 + worst) < NGLOB)
            tl.store(GLOB_K + b * sgkb + worst * sgkn + h * sgkh + offs_d, c_k.to(GLOB_K.dtype.element_ty),
                     mask=take_row)
            tl.store(GLOB_V + b * sgvb + worst * sgvn + h * sgvh + offs_d, c_v.to(GLOB_V.dtype.element_ty),
                     mask=take_row)
            tl.store(GLOB_SCORE + b * sgsb + worst * sgsn + h * sgsh, c_score, mask=take)
            tl.store(GLOB_INDEX + b * sgib + worst * sgin + h * sgih, c_index.to(tl.int64), mask=take)
            if POOL > 0:  # the pending tokens and recent errors move down one place; the leaver and its error last
                last_p = (offs_p == POOL - 1)[:, None]
                p_mask = (offs_p < POOL)[:, None] & dmask[None, :]
                tl.store(PEND_K + b * spkb + offs_p[:, None] * spkn + h * spkh + offs_d[None, :],
                         tl.where(last_p, lk_row.to(tl.float32)[None, :], pk_next.to(tl.float32)).to(
                             PEND_K.dtype.element_ty), mask=p_mask)
                tl.store(PEND_V + b * spvb + offs_p[:, None] * spvn + h * spvh + offs_d[None, :],
                         tl.where(last_p, lv_row.to(tl.float32)[None, :], pv_next.to(tl.float32)).to(
                             PEND_V.dtype.element_ty), mask=p_mask)
                tl.store(RECENT + b * srcb + offs_r * srcn + h * srch,
                         tl.where(offs_r == 2 * POOL - 1, l_score, r_next), mask=offs_r < 2 * POOL)
        tl.debug_barrier()  # (the leaver's ring slot is read before the new token takes it)
        # the new token into its ring slot and, while the sequence has fewer than S real tokens, a sink slot
        if HAS_RING:
            tl.store(RING_K + b * srkb + slot * srkl + h * srkh + offs_d, k_rot.to(RING_K.dtype.element_ty),
                     mask=dmask)
            tl.store(RING_V + b * srvb + slot * srvl + h * srvh + offs_d, v_row.to(RING_V.dtype.element_ty),
                     mask=dmask)
            if HAS_GLOBAL:  # and its raw key, the recall query when it leaves
                tl.store(RING_KL + b * srklb + slot * srkll + h * srklh + offs_d,
                         kl_row.to(RING_KL.dtype.element_ty), mask=dmask)
        if HAS_SINKS:
            take_sink = dmask & ((offs_d * 0 + sink_at) < S) & ((tl.zeros([BD], tl.int32) + real.to(tl.int32)) != 0)
            tl.store(SINK_K + b * sskb + sink_at * sskn + h * sskh + offs_d, k_rot.to(SINK_K.dtype.element_ty),
                     mask=take_sink)
            tl.store(SINK_V + b * ssvb + sink_at * ssvn + h * ssvh + offs_d, v_row.to(SINK_V.dtype.element_ty),
                     mask=take_sink)
        # the last (sequence, KV head) of the launch to finish writes what every program read: the flags, counts
        tl.debug_barrier()
        if tl.atomic_add(COUNT + B * H, 1) == B * H - 1:
            tl.debug_barrier()
            tl.store(COUNT + B * H, 0)  # (for the next call)
            _bookkeeping(VALID, RING_VALID, SEEN, SINK_POS, SINK_VALID, REAL_SEEN, B, L, L_MOD, S, s_rvalid_b,
                         s_spos_b, s_svalid_b, BB, BS, HAS_SINKS)


@triton.jit
def _bookkeeping(VALID, RING_VALID, SEEN, SINK_POS, SINK_VALID, REAL_SEEN, B, L, L_MOD, S, s_rvalid_b, s_spos_b,
                 s_svalid_b, BB: tl.constexpr, BS: tl.constexpr, HAS_SINKS: tl.constexpr):
    """After every program of :func:`decode_step` has read them: the new token's valid flag in its ring slot, the
    sink it becomes (position and flag), the real-token counts and the token count (``write_decoded_token``'s
    bookkeeping), by the last program of the launch."""
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
