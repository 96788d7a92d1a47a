"""The static decode step of one Liger layer fused into one Triton launch (``decode_backend="triton"``).

:func:`liger.models.attention.decode_step_core` computes one token's attention step — the recurrent state's
update and readout, RoPE of q and k, the window over the ring buffer, the sinks, the new token and the global
cache, the global cache's merge, the ring and sink writes, the mix of both branches — as dozens of small
PyTorch kernels per layer (fewer once ``torch.compile`` fuses them), and a captured decode step of a small model
is bound by their number rather than by memory traffic. :func:`fused_decode_step` computes the same thing in one
launch:

* ``decode_step``, ``NA`` window programs and ``NR`` state programs per (sequence, KV head) (:data:`SPLIT`: enough
  for about two programs per SM, more window programs for rings and caches of many key blocks, :data:`WINDOW_SPLIT`;
  one of each in the CPU tests' default), serving the ``HQ / H`` query heads of its group. Window program ``j``
  walks every ``NA``-th block of the ring's and the global cache's keys
  (:data:`KEY_BLOCK`) in an online softmax whose products run on tensor cores (exactly
  :func:`liger.models.window.window_decode_attention`'s mask; a member is visible while its score is above −inf).
  State program ``j`` updates its ``head_dim / NR`` columns of the float32 state in place (``S ← diag(α) S + φ(k)ᵀ
  v``, with the normaliser column when the readout divides by it or the global cache recalls through it; the gated
  delta rule's ``S' = α S``, ``S ← S' + k̂ᵀ β (v − k̂ S')`` with L2-normalised q̂/k̂), reads them out for each query
  head and, with a global cache, its share of the leaving token's squared recall error; the first state program also
  finds the member a merge would replace and, when the window programs walk more than one key block each, the last one
  attends the visible sinks and the new token as one more window part (else window program 0 does). The two roles run
  side by side, so a program's path is one of them, not both (run K's step did both in every program: the memory
  recipe's state work, needed only for the recall errors, lengthened every program's path; its sinks and new token now
  ride on the shorter state path too). The last program of the (sequence, KV head) to finish (an atomic arrival count)
  combines the window parts, mixes ``linear_weight · o_rec + window_weight · o_win``, writes ``[B, 1, HQ, D]`` in q's
  dtype and the new normaliser column. With a global cache the same program then scores the token leaving the window
  (the ring's oldest, whose slot the new token takes; the new token itself for a window of 1; padding and sinks — the
  new token too, for a window of 1, when it becomes a sink on this step — never compete) by its self-recall error
  against the state after this step — the sum of the state programs' shares — and merges it into the cache as
  :func:`liger.models.global_cache.merge_leaver_` does (it replaces the worst member, the latest among equal lowest
  scores, when its score is strictly higher). With ``global_cache_pool`` P the leaver joins the P pending tokens
  instead and the oldest pending token is merged, scored by the largest self-recall error of the 2P + 1 leavers around
  it, or −inf when it does not compete itself (:func:`liger.models.global_cache.pooled_scores`); the pending tokens
  and recent errors shift by one place, after every read of them. Last the same program writes the new token's rotated
  key and value (and raw key, for the global cache) into its ring slot (and sink slot) — after every program's reads,
  since the slot it takes is the oldest of the window they attended.
  The last (sequence, KV head) of the launch to finish (an atomic count) writes what every program reads: the
  ring slot's valid flag, the new sink's position and flag, the real-token counts and the token count.

Covered: the generic gated form of :class:`~liger.models.variants.Recurrence` — gla (the default), hgrn2, rwkv6,
mamba2, gated_retention, mlstm — with any feature map, the ``"sum"`` readout and mLSTM's normaliser, the gate
pooled over the whole head (no ``gate_pool_size`` other than head_dim); gated_deltanet (β from the key or the
constant ``delta_write_strength``); the global cache (``global_cache_size > 0``, with or without the recurrent
branch's output, with or without ``global_cache_pool``); sinks, grouped query heads, any even head dim up to 256,
float32/bfloat16/float16 models with a float32 state, either branch weighted 0. Not covered (the PyTorch step
runs, logged once): gsa, gate pooling, value heads of another size than the key heads, tensors off CUDA (unless
Triton's CPU interpreter is on, ``TRITON_INTERPRET=1``, which is how the CPU tests run the kernels).

Numerics: everything in float32, rounded once to the buffers' and output's dtypes (the PyTorch step rounds the
RoPE'd q/k and the window's scores to the model's dtype on the way); the window's output is rounded to the
model's dtype before the mix, as the PyTorch step returns it; the recall error is computed in float32 from
the float32 state (the PyTorch step feature-maps the leaver's key in the model's dtype first). ``decode_backend``
"auto" takes it on Ampere-or-newer GPUs (measured: docs/gpu.md, run J).
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import torch

from .triton_common import has_triton, next_power_of_2, pdl_supported
from .variants import FEATURE_MAPS, GLA, HGRN2, MLSTM, RWKV6, GatedDeltaNet, GatedRetention, Mamba2

logger = logging.getLogger("liger")

__all__ = ["KernelUnavailable", "fused_decode_step", "unsupported_reason"]

# log-decay form of each covered variant (see the kernel's docstring)
_GATES = {GLA: 0, HGRN2: 1, RWKV6: 2, Mamba2: 3, GatedRetention: 4, MLSTM: 4}
_FEATURE_MAPS = ("softmax", "relu", "elu_plus_one", "identity")
_READOUTS = {"none": 0, "sum": 1, "mlstm": 2}
KEY_BLOCK = 4096
"""Elements of one block of window / global-cache keys (``[keys, head dim]``, at least 16 keys): the window's
online softmax walks the ring and the cache in blocks of ``KEY_BLOCK // head_dim`` keys."""


def _kernels():
    # (a `from .module import` line: transformers copies the modules named so into saved checkpoints)
    from ._triton_decode_kernels import decode_step

    return SimpleNamespace(decode_step=decode_step)


def _feature_map_index(recurrence) -> int | None:
    for i, name in enumerate(_FEATURE_MAPS):
        if recurrence.feature_map is FEATURE_MAPS[name]:
            return i
    return None


def _state_columns(r, D: int) -> int:
    """Columns of the kernel's state: the gated delta rule never carries the normaliser; the generic form does
    when its readout divides by it or the global cache recalls through it."""
    return D if type(r) is GatedDeltaNet else D + int(r.normaliser_column)


def unsupported_reason(spec, q: torch.Tensor, v: torch.Tensor, buffers) -> str | None:
    """Why the fused step cannot take this layer's step (None when it can)."""
    r = spec.recurrence
    D = q.shape[-1]
    if not has_triton():
        return "triton is not installed"
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return "the tensors are not on a CUDA device"
    if buffers.global_score is not None:
        if not spec.needs_state:
            return "the global cache's scores need the stepped state"
        if buffers.global_score.dtype != torch.float32 or buffers.ring_k_lin is None:
            return "the global cache's scores must be float32"
        if any(t.stride(-1) != 1 for t in (buffers.global_k, buffers.global_v, buffers.ring_k_lin)):
            return "the global cache's keys/values must have contiguous rows"
        if buffers.global_recent is not None:
            if buffers.global_recent.dtype != torch.float32:
                return "global_cache_pool's recent errors must be float32"
            if any(t.stride(-1) != 1 for t in (buffers.global_pend_k, buffers.global_pend_v)):
                return "global_cache_pool's pending keys/values must have contiguous rows"
    if spec.needs_state:
        if type(r) is not GatedDeltaNet:
            if type(r) not in _GATES:
                return f"variant {type(r).__name__} is not in the kernel (the generic gated form and the delta rule)"
            if r.pool_size not in (None, D):
                return "gate pooling (gate_pool_size != head_dim) is not in the kernel"
            if r.readout not in _READOUTS:
                return f"readout {r.readout!r} is not in the kernel"
            if _feature_map_index(r) is None:
                return "an unknown feature map"
        state = buffers.state
        if (state is None or len(state) != 1 or state[0].dtype != torch.float32 or not state[0].is_contiguous()
                or state[0].shape[-1] != _state_columns(r, D)):
            return "the kernel takes one contiguous float32 state per layer"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {q.dtype}"
    if D % 2 or D > 256 or v.shape[-1] != D:
        return "head dims must be even, at most 256, and equal for keys and values"
    return None


_logged: set = set()
_compile_failures: dict = {}


class KernelUnavailable(RuntimeError):
    """The fused step's kernel did not compile for this case on this machine (raised before any launch, so no
    buffer was written): :func:`liger.models.attention.decode_step_core` runs the PyTorch step instead."""


def _is_compile_error(err: Exception) -> bool:
    """Whether ``err`` was raised while compiling the kernel (Triton's front end, MLIR's passes, ptxas, a
    resource limit), i.e. before the launch."""
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
    except ImportError:  # (another Triton layout: judge by the message)
        CompilationError = OutOfResources = ()
    if isinstance(err, (CompilationError, OutOfResources)):
        return True
    return any(s in str(err) for s in ("PassManager", "ptxas", "failed to legalize"))


def log_fallback_once(reason: str) -> None:
    if reason not in _logged:
        _logged.add(reason)
        logger.warning("liger: decode_backend='triton' runs the PyTorch decode step here: %s", reason)


SPLIT: int | None = None
"""Window programs, and state programs, per (sequence, KV head) of the decode step (a power of two; at most
head_dim / 4 columns of the state each); None: as many as bring the launch to about two programs per SM of the
GPU, at most 8 and head_dim / 16 (1 off CUDA). Tests set it."""

WINDOW_SPLIT: int | None = None
"""Window programs per (sequence, KV head) (a power of two); None: as many as the state's programs, doubled on CUDA
while each would walk more than two blocks of the ring's and the global cache's keys and the launch would still be
at most about two programs per SM, at most 16. At batch 16 (SmolLM2, an H100) that keeps the memory recipe's 512 +
512 keys (16 blocks of 64) on 4 window programs, 4 blocks each: 1.26 ms per token at 32K against 1.36–1.40 with the
8 programs the rule gave before it counted the launch (run R of docs/gpu.md, ``benchmarks/decode_split.py``: its
576 programs took 2.18 waves of an H100); at batch 1 the few programs double as before. Tests set it."""

_sm_counts: dict = {}
_scratches: dict = {}
_retired: list = []  # outgrown work spaces: a captured CUDA graph may still point at them


def _sm_count(device: torch.device) -> int:
    """The CUDA device's SMs (read once per device)."""
    if device not in _sm_counts:
        _sm_counts[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _sm_counts[device]


def _split(q: torch.Tensor, heads: int, BD: int) -> int:
    """Programs per (sequence, KV head): each takes its share of the window's key blocks and of the state's
    columns, and the last to finish combines them (see the kernel)."""
    if SPLIT is not None:
        return max(1, min(SPLIT, BD // 4))
    most = max(1, min(8, BD // 16))
    if not q.is_cuda:
        return 1
    want = -(-2 * _sm_count(q.device) // heads)
    split = 1
    while split * 2 <= min(want, most):
        split *= 2
    return split


def _window_split(q: torch.Tensor, split: int, blocks: int, heads: int, state_programs: int) -> int:
    """Window programs per (sequence, KV head) for ``blocks`` key blocks, beside ``state_programs`` of the state,
    ``heads`` (sequence, KV head) pairs in the launch (see :data:`WINDOW_SPLIT`)."""
    if WINDOW_SPLIT is not None:
        return WINDOW_SPLIT
    if SPLIT is not None or not q.is_cuda:
        return split
    parts = split
    while blocks > 2 * parts and parts < 16 and heads * (2 * parts + state_programs) <= 2 * _sm_count(q.device):
        parts *= 2
    return parts


def _scratch(device: torch.device, heads: int, parts: int, NR: int, BGP: int, BD: int) -> tuple[torch.Tensor, ...]:
    """The decode step's work space on ``device``, kept between calls (allocated in the decoders' warm-up, before
    a CUDA graph captures the step; the kernel leaves the counters at 0): the window programs' parts of the
    softmax (running max, sum, output), the recurrent readout (float32), the state programs' shares of the
    leaver's squared recall error, the new normaliser column, the global cache's worst member (score, slot), the
    arrival counters, per (sequence, KV head), and the launch's count of finished heads. Shared by every layer: the
    steps of one device run one after another on its stream."""
    need = (heads * max(parts, 1) * BGP, heads * max(parts, 1) * BGP * BD, heads * BGP * BD, heads * max(NR, 1),
            heads * BD, heads, heads, heads + 1)
    have = _scratches.get(device)
    if have is None or any(t.numel() < n for t, n in zip((have[0], *have[2:]), need)):
        f32 = dict(dtype=torch.float32, device=device)
        have = (torch.empty(need[0], **f32), torch.empty(need[0], **f32), torch.empty(need[1], **f32),
                torch.empty(need[2], **f32), torch.empty(need[3], **f32), torch.empty(need[4], **f32),
                torch.empty(need[5], **f32), torch.empty(need[6], dtype=torch.int32, device=device),
                torch.zeros(need[7], dtype=torch.int32, device=device))
        if device in _scratches:
            _retired.append(_scratches[device])
        _scratches[device] = have
    return have


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def fused_decode_step(spec, q, k, v, q_lin, k_lin, cos, sin, valid, buffers) -> torch.Tensor:
    """:func:`liger.models.attention.decode_step_core` in one Triton launch (same arguments; check
    :func:`unsupported_reason` first). Updates ``buffers`` in place and returns ``[B, 1, HQ, D]`` in q's dtype."""
    b = buffers
    B, _, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    L = b.ring_k.shape[1]
    S = b.sink_k.shape[1] if b.sink_k is not None else 0
    NG = b.global_score.shape[1] if b.global_score is not None else 0
    r = spec.recurrence
    has_rec = spec.needs_state
    has_win = spec.window_weight != 0
    delta = has_rec and type(r) is GatedDeltaNet
    q, k, v, q_lin, k_lin, cos, sin = (_rows(x) for x in (q, k, v, q_lin, k_lin, cos, sin))
    out = torch.empty(B, 1, HQ, D, dtype=q.dtype, device=q.device)
    valid8 = valid.to(torch.bool).contiguous().view(torch.uint8)
    ring_valid8 = b.ring_valid.view(torch.uint8)
    state = b.state[0] if has_rec else out  # (a placeholder pointer when the state is not stepped)
    if S:
        sink_k, sink_v, sink_pos, sink_valid8 = b.sink_k, b.sink_v, b.sink_pos, b.sink_valid.view(torch.uint8)
    else:
        sink_k, sink_v, sink_pos, sink_valid8 = b.ring_k, b.ring_v, b.real_seen, ring_valid8  # never read
    if NG:
        ring_kl, glob_k, glob_v, glob_score, glob_index = (b.ring_k_lin, b.global_k, b.global_v, b.global_score,
                                                           b.global_index)
    else:  # never read
        ring_kl, glob_k, glob_v, glob_score, glob_index = b.ring_k, b.ring_k, b.ring_v, out, b.real_seen
    global_strides = (*ring_kl.stride()[:3], *glob_k.stride()[:3], *glob_v.stride()[:3], *glob_score.stride()[:3],
                      *glob_index.stride()[:3]) if NG else (0,) * 15
    P = b.global_pend_k.shape[1] if NG and b.global_recent is not None else 0
    if P:
        pend_k, pend_v, recent = b.global_pend_k, b.global_pend_v, b.global_recent
        pool_strides = (*pend_k.stride()[:3], *pend_v.stride()[:3], *recent.stride()[:3])
    else:  # never read
        pend_k, pend_v, recent, pool_strides = b.ring_k, b.ring_v, out, (0,) * 9
    readout = _READOUTS.get(r.readout, 0) if has_rec and not delta else 0
    if delta:
        gate, fmap = 4, 4  # the scalar gate logsigmoid(mean k)/n; q̂, k̂ L2-normalised
    elif has_rec and type(r) is HGRN2:
        gate, fmap = (0 if r.lower_bound == 0 else 1), _feature_map_index(r) or 0
    else:
        gate, fmap = _GATES.get(type(r), 0), (_feature_map_index(r) or 0) if has_rec else 0
    VS = _state_columns(r, D) if has_rec else D
    strength = getattr(r, "write_strength", None) if delta else None
    BD = max(16, next_power_of_2(D))
    BGP = max(16, next_power_of_2(G))
    split = _split(q, B * H, BD)
    BK = max(16, min(KEY_BLOCK // BD, next_power_of_2(max(L, NG)) // (split if has_win else 1)))
    blocks = -(-L // BK) + -(-NG // BK)  # of the ring's and the global cache's keys
    NR = split if has_rec else 0  # state programs
    NA = _window_split(q, split, blocks, B * H, NR) if has_win else 0  # window programs
    BVS = BD // max(NR, 1)
    BV = min(BVS, max(4, 4096 // BD))
    # the sinks and the new token: one more window part, attended by the last state program when the window
    # programs walk more than one key block each (the memory recipe: two, against a state program's one pass
    # over its columns), else by window program 0 (Liger-GLA: one block of 16 keys a program, the shorter path)
    NPART = NA + (1 if NA and NR and blocks > NA else 0)
    scratch = _scratch(q.device, B * H, NPART, NR, BGP, BD)
    ssb = cos.stride(0) if cos.shape[0] > 1 else 0
    meta = dict(
        D=D, BD=BD, BV=BV, G=G, BG=max(2, next_power_of_2(G)), BGP=BGP,
        BK=BK, NA=NA, NR=NR, NPART=NPART, BVS=BVS,
        PRECISION="ieee" if b.ring_k.dtype == torch.float32 else "lowp",
        BS=max(16, next_power_of_2(S)), BGL=max(2, next_power_of_2(NG)), VS=VS, FMAP=fmap,
        GATE=gate, KEY_IS_GATE=has_rec and type(r) is HGRN2, DELTA=delta, BETA_CONST=strength is not None,
        HAS_Z=has_rec and VS > D, READOUT=readout, HAS_REC=has_rec, REC_OUT=has_rec and spec.linear_weight != 0,
        HAS_WIN=has_win, HAS_SINKS=S > 0, HAS_GLOBAL=NG > 0, HAS_RING=L > 0, POOL=P,
        BP=max(2, next_power_of_2(P)), B2P=max(2, next_power_of_2(2 * P)), BB=max(2, next_power_of_2(B)),
        num_warps=4 if D <= 64 else 8)
    if spec.pdl and pdl_supported(q):  # (decode_pdl: the launch overlaps the end of the kernel before)
        meta.update(GDC=True, launch_pdl=True)
    key = (str(q.device), q.dtype, *meta.items())  # (the dict's order is fixed: no sort on this hot path)
    if key in _compile_failures:
        raise KernelUnavailable(_compile_failures[key])
    try:
        _kernels().decode_step[(B * H, NA + NR)](
            q, k, v, q_lin, k_lin, cos, sin, valid8, state, b.ring_k, b.ring_v, ring_valid8, b.seen_t,
            sink_k, sink_v, sink_pos, sink_valid8, b.real_seen, out,
            ring_kl, glob_k, glob_v, glob_score, glob_index, pend_k, pend_v, recent, *scratch,
            q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2),
            q_lin.stride(0), q_lin.stride(2), k_lin.stride(0), k_lin.stride(2), ssb,
            *b.ring_k.stride()[:3], *b.ring_v.stride()[:3], ring_valid8.stride(0),
            *sink_k.stride()[:3], *sink_v.stride()[:3], sink_pos.stride(0), sink_valid8.stride(0),
            *global_strides, *pool_strides,
            B, H, L, max(L, 1), S, NG, float(spec.scaling), float(r.scale), 1.0 / float(r.normalizer),
            float(r.lower_bound), float(strength or 0.0), float(spec.linear_weight), float(spec.window_weight),
            **meta)
    except Exception as err:
        if not _is_compile_error(err):
            raise
        text = str(err).strip().splitlines()
        first = text[0] if text else ""
        _compile_failures[key] = f"the fused step does not compile here ({type(err).__name__}: {first})"
        raise KernelUnavailable(_compile_failures[key]) from err
    return out
