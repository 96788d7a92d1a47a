"""Gated linear attention in pure PyTorch: the recurrent reference and a chunked form for speed.

One op covers every Liger recurrence. Per KV head, with state ``S`` of shape ``[K, V]``::

    S_t = diag(exp(gk_t)) · S_{t-1} · diag(exp(gv_t)) + k_tᵀ v_t
    o_t = scale · q_t S_t

``gk`` is a log-decay per key channel ``[B, T, H, K]`` or per head ``[B, T, H]`` (a scalar gate);
``gv`` is a log-decay per value channel ``[B, T, H, V]`` (used by GSA's first pass). Queries may have
more heads than keys (grouped-query attention): query head ``h * G + j`` reads the state of KV head ``h``,
so the state is kept once per KV head.

Layout is time-first: ``[B, T, H, D]``; states are ``[B, H, K, V]`` in float32 (float64 if the inputs are).
``naive_recurrent_gla`` is the specification; ``chunk_gla`` must match it (tests compare outputs, final
states and gradients in float64).
"""

from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_shapes(q, k, v, gk, gv):
    B, T, HQ, K = q.shape
    H = k.shape[2]
    if k.shape != (B, T, H, K) or v.shape[:3] != (B, T, H):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if HQ % H:
        raise ValueError(f"query heads ({HQ}) must be a multiple of key heads ({H})")
    if gk is not None and gk.shape not in ((B, T, H, K), (B, T, H)):
        raise ValueError(f"gk must be [B, T, H, K] or [B, T, H], got {tuple(gk.shape)}")
    if gv is not None and gv.shape != v.shape:
        raise ValueError(f"gv must have the shape of v {tuple(v.shape)}, got {tuple(gv.shape)}")
    return B, T, HQ, H, K, v.shape[-1]


def naive_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token reference of the gated recurrence (the specification of every fast form).

    Args:
        q: queries ``[B, T, HQ, K]``; ``HQ`` a multiple of ``H``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        gk: log-decay on the key side, ``[B, T, H, K]`` or ``[B, T, H]``. Default: no decay.
        gv: log-decay on the value side, ``[B, T, H, V]``. Default: no decay.
        scale: readout scale. Default: 1.0 (the Liger value).
        initial_state: ``[B, H, K, V]``. Default: zeros.
        output_final_state: also return the state after the last token.

    Returns:
        ``o`` of shape ``[B, T, HQ, V]`` in the compute dtype (float32 or float64), and the final state
        ``[B, H, K, V]`` (or None).
    """
    B, T, HQ, H, K, V = _check_shapes(q, k, v, gk, gv)
    G = HQ // H
    dtype = _compute_dtype(q, k, v, gk, gv, initial_state)
    q = q.to(dtype).view(B, T, H, G, K) * scale
    k, v = k.to(dtype), v.to(dtype)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    outs = []
    for t in range(T):
        if gk is not None:
            decay = gk[:, t].to(dtype).exp()
            S = S * (decay[..., None] if decay.dim() == 3 else decay[..., None, None])
        if gv is not None:
            S = S * gv[:, t].to(dtype).exp()[:, :, None, :]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhgk,bhkv->bhgv", q[:, t], S))
    o = torch.stack(outs, dim=1).reshape(B, T, HQ, V)
    return o, (S if output_final_state else None)


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    sub_chunk_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked form of :func:`naive_recurrent_gla`: same arguments, same results, parallel over time.

    The sequence is cut into chunks of ``chunk_size``. Inside a chunk the output is an attention-like
    matrix product; across chunks only the ``[K, V]`` state is carried (a short sequential scan).
    Decays are only ever evaluated as ``exp(x)`` with ``x <= 0``: the intra-chunk matrix is split into
    sub-chunks of ``sub_chunk_size``, whose off-diagonal blocks factor the decay through the boundary
    between them and whose diagonal blocks use the exact pairwise decay. Strong gates therefore
    underflow to zero instead of overflowing, whatever their magnitude.

    Supports ``gk`` (per key channel or per head) or ``gv``, not both at once (no Liger variant needs both;
    the recurrent reference accepts both).
    """
    B, T, HQ, H, K, V = _check_shapes(q, k, v, gk, gv)
    if gk is not None and gv is not None:
        raise ValueError("chunk_gla supports a key-side or a value-side gate, not both; use naive_recurrent_gla")
    G = HQ // H
    dtype = _compute_dtype(q, k, v, gk, gv, initial_state)
    c = sub_chunk_size
    C = min(chunk_size, -(-T // c) * c)
    if C % c:
        raise ValueError(f"chunk_size ({chunk_size}) must be a multiple of sub_chunk_size ({c})")
    N = -(-T // C)
    pad = N * C - T

    def blocks(x, heads):
        # [B, T, heads, D] -> [B, heads, N, C, D]; padded steps have zero key/value and zero log-decay
        x = x.to(dtype)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        return x.reshape(B, N, C, heads, *x.shape[3:]).movedim(3, 1)

    qc = blocks(q.reshape(B, T, H, G * K), H).reshape(B, H, N, C, G, K).movedim(4, 3) * scale  # [B,H,N,G,C,K]
    kc, vc = blocks(k, H), blocks(v, H)  # [B,H,N,C,K], [B,H,N,C,V]
    S0 = q.new_zeros(B, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if gk is not None and gk.dim() == 3:
        o, S = _chunk_scalar_gate(qc, kc, vc, blocks(gk[..., None], H)[..., 0], S0, causal)
    elif gk is not None:
        o, S = _chunk_key_gate(qc, kc, vc, blocks(gk, H), S0, c)
    elif gv is not None:
        o, S = _chunk_value_gate(qc, kc, vc, blocks(gv, H), S0, c, causal)
    else:
        o, S = _chunk_scalar_gate(qc, kc, vc, torch.zeros_like(kc[..., 0]), S0, causal)
    # [B,H,N,G,C,V] -> [B,T,HQ,V]
    o = o.movedim(3, 4).reshape(B, H, N * C, G, V).movedim(1, 2).reshape(B, N * C, HQ, V)[:, :T]
    return o, (S if output_final_state else None)


def _scan_states(S0, decay_k, decay_v, U):
    """States entering each chunk: S_{n+1} = decay_k[n] ⊙ S_n ⊙ decay_v[n] + U[n].

    decay_k: [B,H,N,K,1] or [B,H,N,1,1]; decay_v: [B,H,N,1,V] or None; U: [B,H,N,K,V].
    Returns (states before each chunk [B,H,N,K,V], final state).
    """
    states = []
    S = S0
    for n in range(U.shape[2]):
        states.append(S)
        S = S * decay_k[:, :, n]
        if decay_v is not None:
            S = S * decay_v[:, :, n]
        S = S + U[:, :, n]
    return torch.stack(states, dim=2), S


def _chunk_scalar_gate(qc, kc, vc, g, S0, causal):
    # g: [B,H,N,C] log-decay per head; cumulative within the chunk
    Gc = g.cumsum(-1)
    G_last = Gc[..., -1:]
    # inter-chunk
    U = torch.einsum("bhnck,bhncv->bhnkv", kc * (G_last - Gc).exp()[..., None], vc)
    states, S = _scan_states(S0, G_last.exp()[..., None], None, U)
    o = torch.einsum("bhngck,bhnkv->bhngcv", qc * Gc.exp()[:, :, :, None, :, None], states)
    # intra-chunk: A[t, i] = (q_t · k_i) exp(G_t - G_i) for i <= t
    decay = torch.where(causal, Gc[..., :, None] - Gc[..., None, :], float("-inf")).exp()  # [B,H,N,C,C]
    A = torch.einsum("bhngck,bhnik->bhngci", qc, kc) * decay[:, :, :, None]
    return o + torch.einsum("bhngci,bhniv->bhngcv", A, vc), S


def _sub_chunk_refs(Gc, c):
    """Cumulative log-decay at the end of the previous sub-chunk, for each sub-chunk: [B,H,N,C//c,D].

    The first sub-chunk has no predecessor inside the chunk; its reference is 0 (it has no
    off-diagonal block, and exp(G_t - 0) <= 1 keeps its query factor bounded).
    """
    ends = Gc[..., c - 1 : -1 : c, :]
    return torch.cat([torch.zeros_like(Gc[..., :1, :]), ends], dim=-2)


def _chunk_key_gate(qc, kc, vc, g, S0, c):
    # g: [B,H,N,C,K] log-decay per key channel
    B, H, N, G, C, K = qc.shape
    ns = C // c
    Gc = g.cumsum(-2)
    G_last = Gc[..., -1:, :]  # [B,H,N,1,K]
    U = torch.einsum("bhnck,bhncv->bhnkv", kc * (G_last - Gc).exp(), vc)
    states, S = _scan_states(S0, G_last.exp().transpose(-1, -2), None, U)
    o = torch.einsum("bhngck,bhnkv->bhngcv", qc * Gc.exp()[:, :, :, None], states)

    # off-diagonal sub-blocks: exp(G_t - G_i) = exp(G_t - R_a) * exp(R_a - G_i), R_a = G at the end of sub-chunk a-1
    R = _sub_chunk_refs(Gc, c)  # [B,H,N,ns,K]
    Gs = Gc.reshape(B, H, N, ns, c, K)
    q_off = qc.reshape(B, H, N, G, ns, c, K) * (Gs - R[..., None, :]).exp()[:, :, :, None]
    k_off = kc[:, :, :, None] * (R[..., None, :] - Gc[:, :, :, None]).clamp(max=0).exp()  # [B,H,N,ns,C,K]
    A = torch.einsum("bhngack,bhnaik->bhngaci", q_off, k_off)  # [B,H,N,G,ns,c,C]
    pos = torch.arange(C, device=qc.device)
    before = pos[None, None, :] < (torch.arange(ns, device=qc.device) * c)[:, None, None]  # [ns,1,C]
    A = A * before

    # diagonal sub-blocks: exact pairwise decay, masked to i <= t
    ks = kc.reshape(B, H, N, ns, c, K)
    tril = torch.ones(c, c, dtype=torch.bool, device=qc.device).tril()[..., None]
    decay = torch.where(tril, Gs[..., :, None, :] - Gs[..., None, :, :], float("-inf")).exp()  # [B,H,N,ns,c,c,K]
    A_diag = torch.einsum("bhngatk,bhnatik->bhngati", qc.reshape(B, H, N, G, ns, c, K), ks[..., None, :, :] * decay)
    eye = torch.eye(ns, dtype=A.dtype, device=qc.device)
    A = A + torch.einsum("bhngati,ay->bhngatyi", A_diag, eye).reshape(B, H, N, G, ns, c, C)
    return o + torch.einsum("bhngci,bhniv->bhngcv", A.reshape(B, H, N, G, C, C), vc), S


def _chunk_value_gate(qc, kc, vc, g, S0, c, causal):
    # g: [B,H,N,C,V] log-decay per value channel
    B, H, N, G, C, K = qc.shape
    V = vc.shape[-1]
    ns = C // c
    Gc = g.cumsum(-2)
    G_last = Gc[..., -1:, :]  # [B,H,N,1,V]
    U = torch.einsum("bhnck,bhncv->bhnkv", kc, vc * (G_last - Gc).exp())
    states, S = _scan_states(S0, torch.ones_like(G_last[..., :1]), G_last.exp(), U)
    o = torch.einsum("bhngck,bhnkv->bhngcv", qc, states) * Gc.exp()[:, :, :, None]

    A = torch.einsum("bhngck,bhnik->bhngci", qc, kc) * causal  # undecayed scores, [B,H,N,G,C,C]
    As = A.reshape(B, H, N, G, ns, c, C)
    # off-diagonal sub-blocks, factored through the sub-chunk boundary R_a
    R = _sub_chunk_refs(Gc, c)  # [B,H,N,ns,V]
    v_off = vc[:, :, :, None] * (R[..., None, :] - Gc[:, :, :, None]).clamp(max=0).exp()  # [B,H,N,ns,C,V]
    pos = torch.arange(C, device=qc.device)
    before = pos[None, None, :] < (torch.arange(ns, device=qc.device) * c)[:, None, None]  # [ns,1,C]
    Gs = Gc.reshape(B, H, N, ns, c, V)
    o_off = torch.einsum("bhngaci,bhnaiv->bhngacv", As * before, v_off) * (Gs - R[..., None, :]).exp()[:, :, :, None]
    # diagonal sub-blocks: exact pairwise decay on the value channels
    idx = torch.arange(ns, device=qc.device)
    A_diag = As.reshape(B, H, N, G, ns, c, ns, c)[:, :, :, :, idx, :, idx].movedim(0, 4)  # [B,H,N,G,ns,c,c]
    tril = torch.ones(c, c, dtype=torch.bool, device=qc.device).tril()[..., None]
    decay = torch.where(tril, Gs[..., :, None, :] - Gs[..., None, :, :], float("-inf")).exp()  # [B,H,N,ns,c,c,V]
    vs = vc.reshape(B, H, N, ns, c, V)
    o_diag = torch.einsum("bhngati,bhnativ->bhngatv", A_diag, vs[..., None, :, :] * decay)
    return o + (o_off + o_diag).reshape(B, H, N, G, C, V), S


def recurrent_gla_step_(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """One token of :func:`naive_recurrent_gla`, updating ``state`` in place (the static decode step).

    Args:
        state: ``[B, H, K, V]``, float32 (or float64); written in place.
        q: ``[B, 1, HQ, K]``; k ``[B, 1, H, K]``; v ``[B, 1, H, V]``; gk ``[B, 1, H, K]`` or ``[B, 1, H]``;
            gv ``[B, 1, H, V]``.

    Returns:
        ``o`` ``[B, 1, HQ, V]`` in the state's dtype. The query heads of a group read their KV head's state
        directly (no repeat).
    """
    B, _, HQ, K = q.shape
    H, V = k.shape[2], v.shape[-1]
    dtype = state.dtype
    if gk is not None:
        decay = gk[:, 0].to(dtype).exp()
        state.mul_(decay[..., None] if decay.dim() == 3 else decay[..., None, None])
    if gv is not None:
        state.mul_(gv[:, 0].to(dtype).exp()[:, :, None, :])
    state.add_(k[:, 0, :, :, None].to(dtype) * v[:, 0, :, None, :].to(dtype))
    o = torch.einsum("bhgk,bhkv->bhgv", q[:, 0].to(dtype).view(B, H, HQ // H, K) * scale, state)
    return o.reshape(B, 1, HQ, V)
