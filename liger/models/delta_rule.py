"""The gated delta rule (Gated DeltaNet, arXiv 2412.06464) in pure PyTorch: the recurrent reference, a chunked
form for speed and the single-token step of the static decode path.

Per KV head, with state ``S`` of shape ``[K, V]`` (keys as columns, ``k_t ∈ R^K``, ``v_t ∈ R^V``)::

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ        α_t = exp(g_t)
    o_t = scale · S_tᵀ q_t

computed as fla's ``naive_recurrent_gated_delta_rule`` does: decay first, then the delta update,

    S' = α_t S_{t-1};   u_t = β_t (v_t − S'ᵀ k_t);   S_t = S' + k_t u_tᵀ.

``g`` is a log-decay per head ``[B, T, H]`` (≤ 0), ``beta`` the write strength per head ``[B, T, H]``. Keys are
expected L2-normalised (the caller normalises; with ``|k_t| = 1`` and ``0 ≤ β_t ≤ 1`` each step is a
contraction). Queries may have more heads than keys (grouped-query attention): query head ``h * G + j`` reads
the state of KV head ``h``, so the state is kept once per KV head. A position with ``β = 0`` and ``g = 0``
leaves the state unchanged (padding).

Layout is time-first: ``[B, T, H, D]``; states are ``[B, H, K, V]`` in float32 (float64 if the inputs are).
``naive_recurrent_gated_delta_rule`` is the specification; ``chunk_gated_delta_rule`` and
``gated_delta_rule_step_`` must match it (tests compare outputs, final states and gradients in float64).
Unlike fla, whose default scale is ``1/sqrt(K)``, the default here is Liger's ``scale = 1``.
"""

from __future__ import annotations

import torch

from .gla_ops import _check_shapes, _compute_dtype


def _check_delta_shapes(q, k, v, g, beta):
    B, T, HQ, H, K, V = _check_shapes(q, k, v, None, None)
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {tuple(x.shape)}")
    return B, T, HQ, H, K, V


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token reference of the gated delta rule (the specification of every fast form).

    Args:
        q: queries ``[B, T, HQ, K]``; ``HQ`` a multiple of ``H``.
        k: keys ``[B, T, H, K]`` (L2-normalised by the caller).
        v: values ``[B, T, H, V]``.
        g: log-decay per head ``[B, T, H]``: α_t = exp(g_t).
        beta: write strength per head ``[B, T, H]``.
        scale: readout scale. Default: 1.0 (the Liger value).
        initial_state: ``[B, H, K, V]``. Default: zeros.
        output_final_state: also return the state after the last token.

    Returns:
        ``o`` of shape ``[B, T, HQ, V]`` in the compute dtype (float32 or float64), and the final state
        ``[B, H, K, V]`` (or None).
    """
    B, T, HQ, H, K, V = _check_delta_shapes(q, k, v, g, beta)
    G = HQ // H
    dtype = _compute_dtype(q, k, v, g, beta, initial_state)
    q = q.to(dtype).view(B, T, H, G, K) * scale
    k, v, g, beta = k.to(dtype), v.to(dtype), g.to(dtype), beta.to(dtype)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)  # [B, H, K, V]
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]  # S' = α_t S_{t-1}
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S))  # u_t = β_t (v_t − S'ᵀk_t)
        S = S + k[:, t, :, :, None] * u[:, :, None, :]  # S_t = S' + k_t u_tᵀ
        outs.append(torch.einsum("bhgk,bhkv->bhgv", q[:, t], S))  # o_t = scale · S_tᵀ q_t
    o = torch.stack(outs, dim=1).reshape(B, T, HQ, V)
    return o, (S if output_final_state else None)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked form of :func:`naive_recurrent_gated_delta_rule`: same arguments, same results, parallel over time
    within chunks of ``chunk_size`` (any ``T``: the last chunk is padded with positions that leave the state
    unchanged).

    Within a chunk entered with state ``S_0``, with Γ_t = Σ_{i≤t} g_i (cumulative log-decay, non-increasing),
    unrolling the recurrence gives ``S_t = e^{Γ_t} S_0 + Σ_{i≤t} e^{Γ_t−Γ_i} k_i u_iᵀ`` and

        u_t + β_t Σ_{i<t} e^{Γ_t−Γ_i} (k_tᵀk_i) u_i = β_t v_t − β_t e^{Γ_t} S_0ᵀ k_t,

    a unit lower-triangular system (I + A) U = diag(β) V − diag(β e^Γ) K S_0 with
    A_ti = β_t e^{Γ_t−Γ_i} k_tᵀk_i (i < t). Its solution in the WY/UT form of the Gated DeltaNet paper is
    ``U = U_0 − W S_0`` with ``U_0 = (I + A)⁻¹ diag(β) V`` and ``W = (I + A)⁻¹ diag(β e^Γ) K``, both independent
    of ``S_0`` (one triangular solve for all chunks at once). Then only the ``[K, V]`` state is carried across
    chunks (a short sequential scan), and

        o_t = scale · (e^{Γ_t} q_tᵀ S_0 + Σ_{i≤t} e^{Γ_t−Γ_i} (q_tᵀk_i) u_i)
        S_C = e^{Γ_C} S_0 + Σ_i e^{Γ_C−Γ_i} k_i u_iᵀ.

    Decays are only ever evaluated as ``exp(x)`` with ``x ≤ 0`` (Γ_t − Γ_i for i ≤ t, Γ_t, Γ_C − Γ_i), so strong
    gates underflow to zero instead of overflowing.
    """
    B, T, HQ, H, K, V = _check_delta_shapes(q, k, v, g, beta)
    G = HQ // H
    dtype = _compute_dtype(q, k, v, g, beta, initial_state)
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T

    def blocks(x):
        # [B, T, H, ...] -> [B, H, N, C, ...]; padded steps have zero key, value, β and log-decay (no update)
        x = x.to(dtype)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        return x.reshape(B, N, C, H, *x.shape[3:]).movedim(3, 1)

    qc = blocks(q.reshape(B, T, H, G * K)).reshape(B, H, N, C, G, K).movedim(4, 3) * scale  # [B,H,N,G,C,K]
    kc, vc = blocks(k), blocks(v)  # [B,H,N,C,K], [B,H,N,C,V]
    gc, bc = blocks(g[..., None])[..., 0], blocks(beta[..., None])[..., 0]  # [B,H,N,C]
    S = q.new_zeros(B, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)

    Gam = gc.cumsum(-1)  # Γ_t, [B,H,N,C]
    G_last = Gam[..., -1:]  # Γ_C, [B,H,N,1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = Gam[..., :, None] - Gam[..., None, :]  # Γ_t − Γ_i, [B,H,N,C,C]
    decay = torch.where(causal, diff, float("-inf")).exp()  # e^{Γ_t−Γ_i} for i ≤ t, else 0

    # (I + A) [U_0 | W] = [diag(β) V | diag(β e^Γ) K]: A is the strictly lower part of this matrix, the solver
    # reads it as unit lower triangular (its diagonal is neither read nor differentiated)
    A = bc[..., None] * torch.einsum("bhntk,bhnik->bhnti", kc, kc) * decay  # [B,H,N,C,C]
    rhs = torch.cat([bc[..., None] * vc, (bc * Gam.exp())[..., None] * kc], dim=-1)  # [B,H,N,C,V+K]
    X = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    U0, W = X[..., :V], X[..., V:]  # [B,H,N,C,V], [B,H,N,C,K]

    # across chunks: U_n = U_0,n − W_n S_n, S_{n+1} = e^{Γ_C} S_n + (e^{Γ_C−Γ} ⊙ K_n)ᵀ U_n
    k_end = kc * (G_last - Gam).exp()[..., None]  # [B,H,N,C,K]
    states, us = [], []
    for n in range(N):
        states.append(S)
        u = U0[:, :, n] - W[:, :, n] @ S  # [B,H,C,V]
        us.append(u)
        S = S * G_last[:, :, n, :, None].exp() + k_end[:, :, n].transpose(-1, -2) @ u
    states, U = torch.stack(states, dim=2), torch.stack(us, dim=2)  # [B,H,N,K,V], [B,H,N,C,V]

    o = torch.einsum("bhngck,bhnkv->bhngcv", qc * Gam.exp()[:, :, :, None, :, None], states)
    Aqk = torch.einsum("bhngck,bhnik->bhngci", qc, kc) * decay[:, :, :, None]  # [B,H,N,G,C,C]
    o = o + torch.einsum("bhngci,bhniv->bhngcv", Aqk, U)
    # [B,H,N,G,C,V] -> [B,T,HQ,V]
    o = o.movedim(3, 4).reshape(B, H, N * C, G, V).movedim(1, 2).reshape(B, N * C, HQ, V)[:, :T]
    return o, (S if output_final_state else None)


def gated_delta_rule_step_(
    state: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """One token of :func:`naive_recurrent_gated_delta_rule`, updating ``state`` in place (the static decode step:
    fixed shapes, no host synchronisation).

    Args:
        state: ``[B, H, K, V]``, float32 (or float64); written in place.
        q: ``[B, 1, HQ, K]``; k ``[B, 1, H, K]``; v ``[B, 1, H, V]``; g and beta ``[B, 1, H]``.

    Returns:
        ``o`` ``[B, 1, HQ, V]`` in the state's dtype. The query heads of a group read their KV head's state
        directly (no repeat).
    """
    B, _, HQ, K = q.shape
    H, V = k.shape[2], v.shape[-1]
    dtype = state.dtype
    kt = k[:, 0].to(dtype)  # [B,H,K]
    state.mul_(g[:, 0].to(dtype).exp()[..., None, None])  # S' = α_t S_{t-1}
    u = beta[:, 0].to(dtype)[..., None] * (v[:, 0].to(dtype) - torch.einsum("bhk,bhkv->bhv", kt, state))
    state.add_(kt[..., None] * u[:, :, None, :])  # S_t = S' + k_t u_tᵀ
    o = torch.einsum("bhgk,bhkv->bhgv", q[:, 0].to(dtype).view(B, H, HQ // H, K) * scale, state)
    return o.reshape(B, 1, HQ, V)
