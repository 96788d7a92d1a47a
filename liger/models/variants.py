"""The parameter-free gated recurrences of Liger's linear branch (paper Table 1), one class each.

Every variant reads the pretrained projections: ``q`` ``[B, T, HQ, D]`` and ``k``, ``v`` ``[B, T, H, D]``
(pre-RoPE; ``H`` KV heads shared by the ``HQ / H`` query heads of a group). Its forget gate α_t comes from
the key ``k_t`` of the same KV head with no new parameters, as a log-decay ``log α_t = f(Pool(k_t)) / n``
with ``n = gate_normalizer``. ``Pool`` is the mean over adjacent channels within a head (the identity at
the default pool size, as in the official code); scalar gates pool the whole head. ``φ`` is the feature
map (softmax over the head dimension by default), ``s`` is ``linear_scale``. Unless a variant says
otherwise, the recurrence is the generic gated form, per KV head:

    S_t = diag(α_t) S_{t-1} + φ(k_t)ᵀ v_t        o_t = s · φ(q_t) S_t

Padding positions add nothing to the state and do not decay it.
The state of each variant is a tuple of float32 tensors kept once per KV head.

A variant is called on whole sequences (``__call__``: chunked/recurrent forms, torch or fla kernels) and on
single decode tokens (``step``: in-place state update with a grouped readout, the static decode step).
Variants hold no per-layer data, so layers with the same options share one instance (:func:`get_recurrence`).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from .compiling import CompiledOrEager
from .delta_rule import chunk_gated_delta_rule, gated_delta_rule_step_, naive_recurrent_gated_delta_rule
from .fla_backend import delta_kernel_inputs as fla_delta_kernel_inputs
from .fla_backend import gated_delta_rule_backward_refused as fla_delta_backward_refused
from .fla_backend import gated_delta_rule_kernels as fla_delta_kernels
from .fla_backend import gla as fla_gla
from .fla_backend import gla_kernels as fla_gla_kernels
from .fla_backend import gsa as fla_gsa
from .fla_backend import is_available as fla_is_available
from .fla_backend import kernel_dtype as fla_kernel_dtype
from .fla_backend import kernel_inputs as fla_kernel_inputs
from .gla_ops import chunk_gla, naive_recurrent_gla, recurrent_gla_step_
from .triton_common import supports as triton_supports
from .triton_gla import chunk_gla as triton_chunk_gla
from .triton_gla import chunk_gla_fwd as triton_chunk_gla_fwd
from .triton_gla import supports as triton_gla_supports
from .triton_gla import worth_it as triton_gla_worth_it
from .triton_ops import gla_inputs as triton_gla_inputs
from .triton_ops import is_available as triton_available

logger = logging.getLogger("liger")

FEATURE_MAPS = {
    "softmax": lambda x: x.softmax(-1),
    "relu": torch.relu,
    "elu_plus_one": lambda x: F.elu(x) + 1,
    "identity": lambda x: x,
}

# exp() input bound for RWKV6's double exponential: exp(10)/16 ≈ 1.4e3 is already a decay to exactly 0
_RWKV6_MAX_EXPONENT = 10.0


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" -> "fla" on CUDA when fla is installed, else "torch". An explicit "fla" off CUDA is an error."""
    if backend == "auto":
        backend = "fla" if device.type == "cuda" and fla_is_available() else "torch"
        _log_backend_once(backend, device.type)
    elif backend == "fla" and (device.type != "cuda" or not fla_is_available()):
        raise RuntimeError(
            "linear_backend='fla' needs a CUDA device and fla installed (pip install 'liger-linearize[gpu]')"
        )
    return backend


_logged: set = set()


def _log_backend_once(backend: str, device: str) -> None:
    if (backend, device) not in _logged:
        _logged.add((backend, device))
        logger.info("liger: recurrence backend '%s' on %s", backend, device)


def gated_linear_attention(q, k, v, gk=None, gv=None, scale=1.0, state=None, mode="chunk", backend="torch",
                           need_state=True):
    """Dispatch to the torch (chunked or recurrent) or fla implementation; returns (o, final state or None).

    ``o`` is float32 from the torch ops (float64 for float64 inputs); the fla kernels return it in their input
    dtype (the model's dtype for bf16/fp16 models, float32 otherwise; see ``fla_backend.gla``)."""
    if backend == "fla":
        return fla_gla(q, k, v, gk, gv, scale, state, need_state, mode)
    fn = naive_recurrent_gla if mode == "recurrent" else chunk_gla
    return fn(q, k, v, gk, gv, scale, state, need_state)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Gates and the recurrence run in float32 (float64 inputs stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pool_channels(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over groups of adjacent channels within each head: ``[..., D] -> [..., size]``."""
    D = x.shape[-1]
    if size == D:
        return x
    return x.reshape(*x.shape[:-1], size, D // size).mean(-1)


class Recurrence:
    """Base class: the generic gated form with a per-key-channel gate."""

    scalar_gate = False

    readout = "none"
    """How the readout is divided by the normaliser column z (see :meth:`_readout`): "none", "sum" (the
    ``linear_normalizer`` option) or "mlstm" (mLSTM's own normaliser)."""

    def __init__(self, config):
        self.feature_map = FEATURE_MAPS[config.feature_map]
        self.normalizer = float(config.gate_normalizer)
        self.scale = float(config.linear_scale)
        self.pool_size = config.gate_pool_size
        self.lower_bound = float(config.hgrn2_lower_bound)
        self.num_slots = config.gsa_num_slots
        if config.linear_normalizer != "none":
            self.readout = config.linear_normalizer
        self.chunk_backend = getattr(config, "chunk_backend", "auto")
        self.recall_reads = bool(config.global_cache_size)
        """The global cache scores tokens by how well the state recalls them (:meth:`recall`), which needs the
        normaliser column even when the readout does not use it."""

    @property
    def normaliser_column(self) -> bool:
        """Whether the state carries the normaliser z_t = Σ decayed φ(k) as one extra value column (a column of
        ones appended to v: the same recurrence computes φ(q)·z_t beside φ(q)S_t)."""
        return self.readout != "none" or self.recall_reads

    def gate_input(self, k: torch.Tensor) -> torch.Tensor:
        """Pool(k): ``[B,T,H]`` for scalar gates, else ``[B,T,H,D]`` (pooled channels repeated back)."""
        if self.scalar_gate:
            return k.mean(-1)
        D = k.shape[-1]
        size = self.pool_size or D
        if size == D:
            return k
        return pool_channels(k, size).repeat_interleave(D // size, dim=-1)

    def log_gate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inputs(self, q, k, v):
        """(query, key, value, log-decay) fed to the recurrence."""
        return self.feature_map(q), self.feature_map(k), v, self.log_gate(at_least_fp32(self.gate_input(k)))

    def prepare(self, q, k, v, valid):
        """(query, key, value, log-decay) of the recurrence, with padding zeroed."""
        q, k, v, g = self.inputs(q, k, v)
        k, v, g = _mask_padding(valid, k, v, g)
        return q, k, v, g

    def __call__(self, q, k, v, valid, state, mode, backend, need_state=True):
        """Whole-sequence form: ``q`` ``[B,T,HQ,D]``, ``k``/``v`` ``[B,T,H,D]``, ``valid`` ``[B,T]`` bool or
        None (no padding), ``state`` the previous state tuple or None. Returns ``(o, state tuple or None)``."""
        o, S = self._run(q, k, _with_column(v, self.normaliser_column), valid, state, mode, backend, need_state)
        return self._readout(o), S

    def recall(self, q, k, v, valid, state, mode, backend, need_state=False):
        """The normalised readout ``φ(q)S_t / φ(q)·z_t`` at every position (no gradient needed): with the keys
        of earlier tokens as ``q`` (``[B,T,H,D]``, one query per KV head), what the state recalls for them — the
        global cache's self-recall error. Returns ``([B,T,H,V]`` float32, the final state or None); the state is
        the one :meth:`__call__` returns (this variant carries the normaliser column whenever it recalls)."""
        o, S = self._run(q, k, _with_column(v, True), valid, state, mode, backend, need_state)
        return _sum_normalise(o), S

    def read(self, state, q):
        """The normalised readout of ``state`` (after this step's update) for one query per KV head, ``q``
        ``[B,1,H,D]`` raw: the decode-step form of :meth:`recall`. Returns ``[B,1,H,V]`` float32."""
        S = state[0]
        qf = self.feature_map(q[:, 0]).to(S.dtype) * self.scale
        return _sum_normalise(torch.einsum("bhk,bhkv->bhv", qf, S))[:, None]

    def _run(self, q, k, v, valid, state, mode, backend, need_state):
        """The recurrence itself, on ``v`` as given (with the normaliser column when there is one)."""
        prev = state[0] if state else None
        if backend == "fla" and mode == "chunk" and self.chunk_backend == "triton":
            out = self.triton_chunk(q, k, v, valid, prev, need_state)
            if out is not None:
                return out
        if backend == "fla":
            # feature maps, gates, padding, casts and head expansion: one Triton kernel (Liger-GLA with the softmax
            # feature map) or one compiled function, feeding fla's kernels
            if mode == "chunk" and self.triton_inputs(q, k, v):
                inputs = (*triton_gla_inputs(q, k, v, valid, self.normalizer, fla_kernel_dtype(q)), None)  # gv None
            else:
                inputs = (_fla_inputs_compiled if mode == "chunk" else _fla_inputs)(self, q, k, v, valid)
            o, S = fla_gla_kernels(*inputs, self.scale, prev, need_state, mode, q.shape[2] // k.shape[2])
        else:
            q, k, v, g = self.prepare(q, k, v, valid)
            o, S = gated_linear_attention(q, k, v, gk=g, scale=self.scale, state=prev, mode=mode, backend=backend,
                                          need_state=need_state)
        return o, ((S,) if S is not None else None)

    def triton_chunk(self, q, k, v, valid, prev, need_state):
        """``chunk_backend="triton"``: the recurrence of a multi-token call on :mod:`liger.models.triton_gla`'s
        grouped-query kernels — without gradients, Liger-GLA's feature map and gate inside the kernel (other
        variants' prepared inputs); with gradients, the differentiable :func:`~liger.models.triton_gla.chunk_gla`
        on the prepared inputs (Liger-GLA's from ``triton_ops.gla_inputs``, once per KV head). Returns ``(o,
        state tuple or None)``, or None where it does not apply (gate pooling, too few programs to fill the GPU,
        inputs the kernel does not take)."""
        if (self.pool_size or k.shape[-1]) != k.shape[-1] or triton_gla_supports(q, k, v) is not None:
            return None
        B, _, H, _ = k.shape
        if not triton_gla_worth_it(B, H, v.shape[-1]):
            return None
        dtype = fla_kernel_dtype(q)
        grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, prev))
        if self.triton_inputs(q, k, v):
            if not grad:
                o, S = triton_chunk_gla_fwd(q.to(dtype), k.to(dtype), v.to(dtype), scale=self.scale,
                                            initial_state=prev, output_final_state=need_state, liger_gla=True,
                                            valid=valid, normalizer=self.normalizer)
                return o, ((S,) if S is not None else None)
            q, k, v, g = triton_gla_inputs(q, k, v, valid, self.normalizer, dtype, repeat=False)
        else:
            q, k, v, g = self.prepare(q, k, v, valid)
            q, k, v, g = q.to(dtype), k.to(dtype), v.to(dtype), g.float()
            if g.dim() == 3:  # a scalar gate: the same log-decay on every key channel (the kernels copy it)
                g = g[..., None].expand(*k.shape)
        if grad:
            o, S = triton_chunk_gla(q, k, v, g, self.scale, prev, need_state)
        else:
            o, S = triton_chunk_gla_fwd(q, k, v, g, scale=self.scale, initial_state=prev, output_final_state=need_state)
        return o, ((S,) if S is not None else None)

    def _readout(self, o):
        """The branch output from the recurrence's output (the last column is φ(q)·z_t when there is one):
        "none" drops the column, "sum" divides by it (the linear-attention denominator), "mlstm" by
        max(|φ(q)·z_t|, 1)."""
        if not self.normaliser_column:
            return o
        if self.readout == "sum":
            return _sum_normalise(o)
        o = at_least_fp32(o)
        if self.readout == "mlstm":
            return o[..., :-1] / o[..., -1:].abs().clamp_min(1.0)
        return o[..., :-1]

    def triton_inputs(self, q, k, v=None) -> bool:
        """Whether :func:`liger.models.triton_ops.gla_inputs` computes this variant's inputs on the fla path
        (Liger-GLA, softmax feature map, no gate pooling, no normaliser column, Triton available)."""
        return (type(self) is GLA and self.feature_map is FEATURE_MAPS["softmax"]
                and (self.pool_size or k.shape[-1]) == k.shape[-1] and (v is None or v.shape[-1] == k.shape[-1])
                and triton_available() and triton_supports(q))

    def step(self, q, k, v, valid, state):
        """One decode token: ``q`` ``[B,1,HQ,D]``, ``k``/``v`` ``[B,1,H,D]``, ``valid`` ``[B,1]`` bool; updates
        the ``state`` tuple in place and returns ``o`` ``[B,1,HQ,V]`` (float32)."""
        q, k, v, g = self.prepare(q, k, _with_column(v, self.normaliser_column), valid)
        return self._readout(recurrent_gla_step_(state[0], q, k, v, gk=g, scale=self.scale))


def _fla_inputs(recurrence, q, k, v, valid):
    q, k, v, g = recurrence.prepare(q, k, v, valid)
    return fla_kernel_inputs(q, k, v, gk=g)


_fla_inputs_compiled = CompiledOrEager(_fla_inputs, "fla_inputs", dynamic=True)


# the linear-attention denominator φ(q)·z_t of a real query is positive (non-negative feature maps, at least the
# current key's φ(q)·φ(k)); the floor only keeps padded and empty positions (0/0) finite
_DENOMINATOR_FLOOR = 1e-12


def _with_column(v, column: bool):
    """``v`` with a column of ones appended (the normaliser z rides along as one more value column)."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) if column else v


def _sum_normalise(o):
    o = at_least_fp32(o)
    return o[..., :-1] / o[..., -1:].clamp_min(_DENOMINATOR_FLOOR)


def _mask_padding(valid, *tensors):
    """Zero padded positions ([B,T] bool, False = pad) in [B,T,...] tensors (None = no padding)."""
    if valid is None:
        return tensors
    return tuple(None if t is None else torch.where(valid.view(*valid.shape, *([1] * (t.dim() - 2))), t, 0)
                 for t in tensors)


class GLA(Recurrence):
    """Liger-GLA (paper Eq. 7; official GLA file): log α_t = logsigmoid(Pool(k_t)) / n, per key channel."""

    def log_gate(self, x):
        return F.logsigmoid(x) / self.normalizer


class HGRN2(Recurrence):
    """Liger-HGRN2 (official HGRN2 file): the key content only drives the gate.

    α_t = γ + (1 − γ) σ(Pool(k_t)), log α_t = log(α_t) / n (n = 1, γ = 0 by default)
    S_t = diag(α_t) S_{t-1} + (1 − α_t)ᵀ v_t,   o_t = s · φ(q_t) S_t
    """

    def log_gate(self, x):
        gamma = self.lower_bound
        log_alpha = F.logsigmoid(x) if gamma == 0 else torch.log(gamma + (1 - gamma) * torch.sigmoid(x))
        return log_alpha / self.normalizer

    def inputs(self, q, k, v):
        g = self.log_gate(at_least_fp32(self.gate_input(k)))
        return self.feature_map(q), 1 - g.exp(), v, g


class RWKV6(Recurrence):
    """Liger-RWKV6 (paper Table 1): α_t = exp(−exp(Pool(k_t))), per key channel, in the generic form
    (RWKV6's bonus term u is 1: the current token enters with weight 1). log α_t = −exp(Pool(k_t)) / n."""

    def log_gate(self, x):
        return -torch.exp(x.clamp(max=_RWKV6_MAX_EXPONENT)) / self.normalizer


class Mamba2(Recurrence):
    """Liger-Mamba2 (paper Table 1): scalar α_t = exp(−softplus(mean(k_t))) per head; the input term is
    unscaled (no Δ, no parameters). log α_t = −softplus(mean(k_t)) / n."""

    scalar_gate = True

    def log_gate(self, x):
        return -F.softplus(x) / self.normalizer


class GatedRetention(Recurrence):
    """Liger-Gated-Retention (paper Table 1): scalar α_t = σ(mean(k_t)) per head, log α_t =
    logsigmoid(mean(k_t)) / n, generic form without normaliser (RetNet with a data-dependent decay)."""

    scalar_gate = True

    def log_gate(self, x):
        return F.logsigmoid(x) / self.normalizer


class MLSTM(GatedRetention):
    """Liger-mLSTM (paper Table 1): the scalar gate of gated retention plus mLSTM's normaliser state.

    n_t = α_t n_{t-1} + φ(k_t),   o_t = s · φ(q_t) S_t / max(|s · φ(q_t) n_t|, 1)
    (input gate 1: no parameters). The normaliser rides along as one extra value column of the state.
    """

    readout = "mlstm"


class GSA(Recurrence):
    """Liger-GSA (official GSA file; fla ``chunk_gsa``), M slots per head, raw q/k (no feature map):

    log α_t = logsigmoid(Pool_M(k_t)) / n ∈ R^M,  s_t = 1 − α_t
    K̃_t = K̃_{t-1} diag(α_t) + k_tᵀ s_t,   Ṽ_t = diag(α_t) Ṽ_{t-1} + s_tᵀ v_t
    o_t = softmax_M(s · q_t K̃_t) Ṽ_t
    Two gated recurrences: the first decays its value (slot) side, the second its key side.
    """

    def _slots(self, k, v, valid):
        M = self.num_slots or k.shape[-1]
        g = F.logsigmoid(pool_channels(at_least_fp32(k), M)) / self.normalizer
        s = 1 - g.exp()
        return _mask_padding(valid, s, v, g)

    def __call__(self, q, k, v, valid, state, mode, backend, need_state=True):
        s, v, g = self._slots(k, v, valid)
        Sk, Sv = state if state else (None, None)
        if backend == "fla":
            o, final = fla_gsa(q, k, v, s, g, self.scale, state, need_state, mode)
            return o, (tuple(final) if need_state else None)
        ok, Sk = gated_linear_attention(q, k, s, gv=g, scale=self.scale, state=Sk, mode=mode, backend=backend,
                                        need_state=need_state)
        o, Sv = gated_linear_attention(ok.softmax(-1), s, v, gk=g, scale=1.0, state=Sv, mode=mode, backend=backend,
                                       need_state=need_state)
        return o, ((Sk, Sv) if need_state else None)

    def step(self, q, k, v, valid, state):
        s, v, g = self._slots(k, v, valid)
        Sk, Sv = state
        ok = recurrent_gla_step_(Sk, q, k, s, gv=g, scale=self.scale)
        return recurrent_gla_step_(Sv, ok.softmax(-1), s, v, gk=g, scale=1.0)

    def recall(self, q, k, v, valid, state, mode, backend, need_state=False):
        """GSA's readout is a softmax over slots, normalised already: the plain readout with ``q`` = earlier keys."""
        o, S = self(q, k, v, valid, state, mode, backend, need_state)
        return at_least_fp32(o), S

    def read(self, state, q):
        Sk, Sv = state
        ok = torch.einsum("bhk,bhkm->bhm", q[:, 0].to(Sk.dtype) * self.scale, Sk)
        return torch.einsum("bhm,bhmv->bhv", ok.softmax(-1), Sv)[:, None]


# L2 normalisation as fla's l2norm (the Gated DeltaNet convention): x / sqrt(|x|² + eps)
_L2NORM_EPS = 1e-6


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(Σ x² + 1e-6)`` over the last (head) dimension."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + _L2NORM_EPS)


class GatedDeltaNet(Recurrence):
    """Liger-Gated-DeltaNet (beyond the paper; Gated DeltaNet, arXiv 2412.06464), parameter-free, per KV head:

    q̂_t = L2norm(q_t), k̂_t = L2norm(k_t)      over the head dim, pre-RoPE (the feature map is not used)
    m_t = mean(k_t) over the head's channels (raw key)
    log α_t = logsigmoid(m_t) / n              the scalar gate of gated retention
    β_t = σ(m_t), or the constant ``delta_write_strength``  (a key the gate keeps long is also written strongly)
    S_t = α_t (I − β_t k̂_tᵀ k̂_t) S_{t-1} + β_t k̂_tᵀ v_t,   o_t = s · q̂_t S_t   (row vectors, as above)
    (decay first, then the delta update, as fla's ``naive_recurrent_gated_delta_rule``; see ``delta_rule.py``).
    Padding positions neither write nor decay the state: β = 0 and log α = 0 there.
    """

    scalar_gate = True

    def __init__(self, config):
        super().__init__(config)
        strength = config.delta_write_strength
        self.write_strength = None if strength is None else float(strength)

    def log_gate(self, x):
        return F.logsigmoid(x) / self.normalizer

    def inputs(self, q, k, v):
        """(q̂, k̂, v, log α, β) of the delta rule; q̂/k̂ and the gates in at least float32."""
        m = at_least_fp32(k).mean(-1)  # [B,T,H]
        beta = torch.sigmoid(m) if self.write_strength is None else torch.full_like(m, self.write_strength)
        return l2_normalize(at_least_fp32(q)), l2_normalize(at_least_fp32(k)), v, self.log_gate(m), beta

    def prepare(self, q, k, v, valid):
        """:meth:`inputs` with padding zeroed (no write: β = 0; no decay: log α = 0)."""
        q, k, v, g, beta = self.inputs(q, k, v)
        k, v, g, beta = _mask_padding(valid, k, v, g, beta)
        return q, k, v, g, beta

    def __call__(self, q, k, v, valid, state, mode, backend, need_state=True):
        prev = state[0] if state else None
        if backend == "fla" and fla_delta_backward_refused() and torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, prev)
        ):
            _log_delta_fallback_once()
            backend, mode = "torch", "chunk"
        if backend == "fla":
            inputs = (_delta_fla_inputs_compiled if mode == "chunk" else _delta_fla_inputs)(self, q, k, v, valid)
            o, S = fla_delta_kernels(*inputs, self.scale, prev, need_state, mode, q.shape[2] // k.shape[2])
        else:
            fn = naive_recurrent_gated_delta_rule if mode == "recurrent" else chunk_gated_delta_rule
            o, S = fn(*self.prepare(q, k, v, valid), self.scale, prev, need_state)
        return o, ((S,) if S is not None else None)

    def step(self, q, k, v, valid, state):
        return gated_delta_rule_step_(state[0], *self.prepare(q, k, v, valid), self.scale)

    def recall(self, q, k, v, valid, state, mode, backend, need_state=False):
        """The delta rule's readout is a read of the stored association already (unit keys): the plain readout
        with ``q`` = earlier keys."""
        o, S = self(q, k, v, valid, state, mode, backend, need_state)
        return at_least_fp32(o), S

    def read(self, state, q):
        S = state[0]
        return torch.einsum("bhk,bhkv->bhv", l2_normalize(q[:, 0].to(S.dtype)) * self.scale, S)[:, None]


def _delta_fla_inputs(recurrence, q, k, v, valid):
    return fla_delta_kernel_inputs(*recurrence.prepare(q, k, v, valid))


_delta_fla_inputs_compiled = CompiledOrEager(_delta_fla_inputs, "delta_fla_inputs", dynamic=True)


def _log_delta_fallback_once() -> None:
    if "delta_fallback" not in _logged:
        _logged.add("delta_fallback")
        logger.warning("liger: fla refuses the gated delta rule's backward on this GPU and Triton (fla #640); "
                       "gated_deltanet trains with the PyTorch chunked form")


VARIANT_CLASSES: dict[str, type[Recurrence]] = {
    "gla": GLA,
    "hgrn2": HGRN2,
    "gsa": GSA,
    "mamba2": Mamba2,
    "mlstm": MLSTM,
    "gated_retention": GatedRetention,
    "rwkv6": RWKV6,
    "gated_deltanet": GatedDeltaNet,
}


@functools.cache
def _shared(variant, feature_map, gate_normalizer, linear_scale, gate_pool_size, hgrn2_lower_bound, gsa_num_slots,
            linear_normalizer, global_cache_size, delta_write_strength, chunk_backend):
    from types import SimpleNamespace

    options = SimpleNamespace(feature_map=feature_map, gate_normalizer=gate_normalizer, linear_scale=linear_scale,
                              gate_pool_size=gate_pool_size, hgrn2_lower_bound=hgrn2_lower_bound,
                              gsa_num_slots=gsa_num_slots, linear_normalizer=linear_normalizer,
                              global_cache_size=global_cache_size, delta_write_strength=delta_write_strength,
                              chunk_backend=chunk_backend)
    return VARIANT_CLASSES[variant](options)


def get_recurrence(config) -> Recurrence:
    """The recurrence of ``config.variant`` with the config's options; one shared instance per set of options
    (instances are stateless), so that compiled code traced for one layer serves every layer."""
    strength = config.delta_write_strength
    return _shared(config.variant, config.feature_map, float(config.gate_normalizer), float(config.linear_scale),
                   config.gate_pool_size, float(config.hgrn2_lower_bound), config.gsa_num_slots,
                   config.linear_normalizer, int(bool(config.global_cache_size)),
                   None if strength is None else float(strength), getattr(config, "chunk_backend", "auto"))
