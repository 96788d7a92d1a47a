"""LigerConfig: the base family's configuration plus every Liger field, typed and validated.

The base model's fields (``hidden_size``, ``num_attention_heads``, ``rope_parameters``…) are stored flat, as
in the base config, so that generation, lm-eval and peft read them as usual; ``base_model_type`` names the
family they belong to. The Liger fields below default to the paper's values; docs/method.md gives the method,
where the paper and the official code disagree and which one each default follows.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any, Literal, get_args

from transformers import AutoConfig, PretrainedConfig

from .families import get_family

# The choices of each option, written once: the fields' types, the validation and the CLI's flags read them (the
# implementations are tables keyed by these names: variants.VARIANT_CLASSES, variants.FEATURE_MAPS)
Variant = Literal["gla", "hgrn2", "gsa", "mamba2", "mlstm", "gated_retention", "rwkv6", "gated_deltanet"]
FeatureMap = Literal["softmax", "relu", "elu_plus_one", "identity"]
LinearBackend = Literal["auto", "torch", "fla"]
WindowBackend = Literal["auto", "torch", "triton", "sdpa", "flex"]
DecodeBackend = Literal["auto", "torch", "triton"]
ChunkBackend = Literal["auto", "fla", "triton"]
LinearNormalizer = Literal["none", "sum"]

VARIANTS = get_args(Variant)
FEATURE_MAPS = get_args(FeatureMap)
BACKENDS = get_args(LinearBackend)
WINDOW_BACKENDS = get_args(WindowBackend)
DECODE_BACKENDS = get_args(DecodeBackend)
CHUNK_BACKENDS = get_args(ChunkBackend)
LINEAR_NORMALIZERS = get_args(LinearNormalizer)


class LigerConfig(PretrainedConfig):
    model_type = "liger"

    base_model_type: str = "llama"
    """``model_type`` of the converted base model (llama, mistral, qwen2, qwen3)."""
    variant: Variant = "gla"
    """Gated recurrence of the linear branch, with its gate from the key projection (paper Table 1;
    gated_deltanet, the delta rule of arXiv 2412.06464, is beyond the paper)."""
    feature_map: FeatureMap = "softmax"
    """Parameter-free map over the head dimension, applied to the pre-RoPE q/k of the linear branch
    (paper v2 §3.2: softmax). GSA uses raw q/k and ignores it."""
    gate_pool_size: int | None = None
    """Gate channels per KV head: the key is mean-pooled over adjacent channels within each head.
    None = head_dim, the identity pooling of the official code (docs/method.md)."""
    gate_normalizer: float | None = None
    """log α = log(gate) / gate_normalizer. None resolves per variant: 1.0 for hgrn2 (official HGRN2 file),
    16.0 for the others (fla's GLA default, used by the official GLA/GSA code; docs/method.md)."""
    hgrn2_lower_bound: float = 0.0
    """γ of HGRN2's gate γ + (1 − γ)·σ(·) (paper Table 1; the official code uses 0)."""
    gsa_num_slots: int | None = None
    """M, GSA memory slots per head. None = head_dim (the released Liger-GSA-8B config)."""
    linear_scale: float = 1.0
    """Scale of the query in the recurrent readout (official code: 1, no 1/sqrt(d))."""
    linear_normalizer: LinearNormalizer = "none"
    """Beyond the paper: normalisation of the recurrent readout, parameter-free. "none" = the paper's
    o = s·φ(q)S; "sum" = divided by the linear-attention denominator φ(q)·z_t, z_t = Σ decayed φ(k) (a
    weighted average of past values, on the scale of the window branch). Not for gsa, mlstm and
    gated_deltanet, whose readouts are normalised already."""
    delta_write_strength: float | None = None
    """gated_deltanet's write strength β_t in (0, 1]: None = σ(mean(k_t)) per head, from the key projection
    (no parameters); a number = that constant."""
    global_cache_size: int = 0
    """Beyond the paper (after LoLA, arXiv 2505.23666): per layer and KV head, up to N past key/value pairs
    that the recurrent state recalls worst (self-recall error, decided when a token leaves the window) are
    kept and attended by the window branch's softmax with the window and the sinks. 0 = off."""
    global_cache_pool: int = 0
    """Beyond the paper, with global_cache_size: a token's place in the global cache is decided P tokens after
    it leaves the window, by the largest self-recall error among the 2P + 1 tokens around it (itself, the P
    before, the P after), so the tokens around a hard-to-recall one are kept with it (SnapKV's pooling, made
    causal by the delay; docs/results-memory.md). The P tokens awaiting their decision are attended by no
    query. 0 = off (each token ranked by its own error, as soon as it leaves)."""
    window_size: int = 64
    """Keys in the sliding window, the current one included: positions t−w+1..t (paper v2 Eq. 10)."""
    num_sink_tokens: int = 0
    """Beyond the paper: the window branch also attends to the first N real tokens (docs/method.md)."""
    linear_weight: float = 0.5
    """Weight of the recurrent branch (paper v2 Eq. 9, α = 0.5)."""
    window_weight: float = 0.5
    """Weight of the sliding-window branch (paper v2 Eq. 9, β = 0.5)."""
    use_qk_norm_in_linear: bool = True
    """Families with q_norm/k_norm (Qwen3): the linear branch and the gate use the normed q/k (docs/method.md)."""
    linear_backend: LinearBackend = "auto"
    """Recurrence kernels: "torch" (pure PyTorch, any device), "fla" (fla Triton kernels, CUDA), or "auto"
    (fla when the tensors are on CUDA and fla is installed, torch otherwise)."""
    window_backend: WindowBackend = "auto"
    """Window-branch kernels for multi-token calls: "torch" (banded PyTorch op, any device), "triton" (Liger's
    Triton kernels, CUDA; sinks and global-cache keys merged through the kernels' log-sum-exp), "sdpa" (fused
    SDPA over query blocks), "flex" (FlexAttention, CUDA), or "auto" (torch with linear_backend "torch", the
    reference ops; else on CUDA triton, or sdpa when there are sinks or a global cache; off CUDA sdpa, 1.6–5×
    the torch op's speed on a CPU). Single-token eager steps always take the torch op."""
    decode_backend: DecodeBackend = "auto"
    """The static single-token decode step (CUDA graphs): "torch" (PyTorch ops, dozens of small kernels per layer),
    "triton" (the attention step fused into two Triton launches per layer and the decoder layer around it into
    six, CUDA; the PyTorch ops where they do not apply: gsa and gate pooling for the step, the hybrid's and
    non-Llama-form layers for the layers), or "auto" (triton on an Ampere-or-newer GPU — 1.43 ms per token for
    SmolLM2 at batch 16 on an H200, run J of docs/gpu.md, where the PyTorch step took 3.7–4.4 ms in runs A–G —,
    torch elsewhere). "triton" asked for explicitly also runs gradient-free multi-token calls (prefill, evaluation)
    through the fused norms, residual adds and MLP activation (not yet measured on a GPU, hence not under "auto")."""
    decode_fuse_norms: bool = False
    """With the triton decoder layers: each residual add and RMSNorm computed inside the q/k/v and gate/up kernels
    that read it (five launches a layer) instead of in its own kernel (seven). Off: on an H100 (run O of
    docs/gpu.md, profiled step at 32K, batch 16) those kernels took 8.4 and 9.0 µs against 3.8 and 6.6 µs without
    the norm (run M) — more than the two 1.6 µs norm kernels they replace."""
    decode_pdl: bool = False
    """With the triton decode step and decoder layers, on a Hopper-or-newer GPU: launch their kernels with
    programmatic dependent launch (each kernel waits for the one before inside the GPU, so its launch and setup
    overlap the end of that one instead of following it), and ``o_proj``/``down_proj`` on the Triton projection
    kernel instead of cuBLAS (whose kernels do not take part). The same arithmetic as without it (checked by the
    GPU tier); elsewhere it does nothing. Off: on an H100 it took Liger-GLA's step at 32K, batch 16, from 1.043
    to 1.028 ms (1.4 %, run Q of docs/gpu.md) — too little to make it the default on one measure."""
    chunk_backend: ChunkBackend = "auto"
    """With the fla backend, the recurrence of multi-token calls (prefill, evaluation, training, the global cache's
    recall): "fla" (fla's chunk kernels, keys/values/gates repeated to every query head), "triton" (Liger's
    grouped-query kernels, ``models/triton_gla.py``: one launch for the forward, one for the backward, each KV
    head's state computed once for its query group; fla's where they do not apply: gsa, gated_deltanet, gate
    pooling, batches too small to fill the GPU), or "auto" (fla: on an H200 the triton kernels were slower, prefill
    at 16 × 2K 121 ms against fla's 83, LoRA training at batch 8 0.69× fla's tokens/s; docs/gpu.md run J)."""
    full_attention_layers: list[int] = field(default_factory=list)
    """Decoder layers that keep the teacher's full softmax attention (the inter-layer hybrid "-H")."""
    tie_word_embeddings: bool = False
    """Copied from the base config."""
    use_cache: bool = True
    """Copied from the base config."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._validate()
        if self.gate_normalizer is None:
            self.gate_normalizer = 1.0 if self.variant == "hgrn2" else 16.0

    def _validate(self) -> None:
        def fail(name: str, message: str, value: Any):
            raise ValueError(f"LigerConfig.{name} {message}, got {value!r}")

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        def is_number(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        get_family(self.base_model_type)
        if self.variant not in VARIANTS:
            fail("variant", f"must be one of {', '.join(VARIANTS)}", self.variant)
        if self.feature_map not in FEATURE_MAPS:
            fail("feature_map", f"must be one of {', '.join(FEATURE_MAPS)}", self.feature_map)
        if self.linear_backend not in BACKENDS:
            fail("linear_backend", f"must be one of {', '.join(BACKENDS)}", self.linear_backend)
        if self.window_backend not in WINDOW_BACKENDS:
            fail("window_backend", f"must be one of {', '.join(WINDOW_BACKENDS)}", self.window_backend)
        if self.chunk_backend not in CHUNK_BACKENDS:
            fail("chunk_backend", f"must be one of {', '.join(CHUNK_BACKENDS)}", self.chunk_backend)
        if self.decode_backend not in DECODE_BACKENDS:
            fail("decode_backend", f"must be one of {', '.join(DECODE_BACKENDS)}", self.decode_backend)
        if self.linear_normalizer not in LINEAR_NORMALIZERS:
            fail("linear_normalizer", f"must be one of {', '.join(LINEAR_NORMALIZERS)}", self.linear_normalizer)
        if self.linear_normalizer == "sum" and self.variant in ("gsa", "mlstm", "gated_deltanet"):
            fail("linear_normalizer", f"'sum' does not apply to {self.variant}, whose readout is normalised already",
                 self.linear_normalizer)
        if self.linear_normalizer == "sum" and self.feature_map == "identity":
            fail("linear_normalizer", "'sum' needs a non-negative feature map (softmax, relu, elu_plus_one), not "
                 "identity", self.linear_normalizer)
        if self.delta_write_strength is not None and (
            not is_number(self.delta_write_strength) or not 0 < self.delta_write_strength <= 1
        ):
            fail("delta_write_strength", "must be in (0, 1] or null", self.delta_write_strength)
        if not is_int(self.global_cache_size) or self.global_cache_size < 0:
            fail("global_cache_size", "must be an integer >= 0", self.global_cache_size)
        if not is_int(self.global_cache_pool) or self.global_cache_pool < 0:
            fail("global_cache_pool", "must be an integer >= 0", self.global_cache_pool)
        if self.global_cache_pool and not self.global_cache_size:
            fail("global_cache_pool", "needs a global cache (global_cache_size > 0)", self.global_cache_pool)
        if self.global_cache_size and self.window_weight == 0:
            fail("global_cache_size", "needs the window branch (window_weight != 0), whose softmax attends it",
                 self.global_cache_size)
        if not is_int(self.window_size) or self.window_size < 1:
            fail("window_size", "must be an integer >= 1", self.window_size)
        if not is_int(self.num_sink_tokens) or self.num_sink_tokens < 0:
            fail("num_sink_tokens", "must be an integer >= 0", self.num_sink_tokens)
        for name in ("linear_weight", "window_weight", "linear_scale"):
            if not is_number(getattr(self, name)):
                fail(name, "must be a number", getattr(self, name))
        if self.linear_weight == 0 and self.window_weight == 0:
            fail("linear_weight", "and window_weight cannot both be 0", (self.linear_weight, self.window_weight))
        if self.gate_normalizer is not None and (not is_number(self.gate_normalizer) or self.gate_normalizer <= 0):
            fail("gate_normalizer", "must be a positive number", self.gate_normalizer)
        if not is_number(self.hgrn2_lower_bound) or not 0 <= self.hgrn2_lower_bound < 1:
            fail("hgrn2_lower_bound", "must be in [0, 1)", self.hgrn2_lower_bound)
        if not isinstance(self.decode_fuse_norms, bool):
            fail("decode_fuse_norms", "must be true or false", self.decode_fuse_norms)
        if not isinstance(self.decode_pdl, bool):
            fail("decode_pdl", "must be true or false", self.decode_pdl)
        if not isinstance(self.use_qk_norm_in_linear, bool):
            fail("use_qk_norm_in_linear", "must be a bool", self.use_qk_norm_in_linear)
        head_dim = self.head_dim_
        for name in ("gate_pool_size", "gsa_num_slots"):
            value = getattr(self, name)
            if value is None:
                continue
            if not is_int(value) or value < 1:
                fail(name, "must be a positive integer or null", value)
            if name == "gate_pool_size" and head_dim is not None and head_dim % value:
                fail(name, f"must divide head_dim ({head_dim})", value)
        if not isinstance(self.full_attention_layers, (list, tuple)) or not all(
            is_int(i) for i in self.full_attention_layers
        ):
            fail("full_attention_layers", "must be a list of layer indices", self.full_attention_layers)
        n_layers = getattr(self, "num_hidden_layers", None)
        for i in self.full_attention_layers:
            if i < 0 or (n_layers is not None and i >= n_layers):
                fail("full_attention_layers", f"indices must be in [0, {n_layers})", self.full_attention_layers)
        self.full_attention_layers = sorted(set(self.full_attention_layers))

    @property
    def head_dim_(self) -> int | None:
        """head_dim of the base model (read from the base config, never assumed)."""
        head_dim = getattr(self, "head_dim", None)
        if head_dim is None and hasattr(self, "hidden_size") and hasattr(self, "num_attention_heads"):
            head_dim = self.hidden_size // self.num_attention_heads
        return head_dim

    @classmethod
    def liger_field_names(cls) -> set[str]:
        base = {f.name for f in fields(PretrainedConfig)}
        return {f.name for f in fields(cls) if f.name not in base} - {"tie_word_embeddings", "use_cache"}

    @classmethod
    def from_base_config(cls, base_config: PretrainedConfig, **liger_options) -> LigerConfig:
        """A LigerConfig holding ``base_config``'s fields plus the given Liger options.

        Raises:
            ValueError: unsupported base architecture, unknown option, or an invalid value.
        """
        family = get_family(getattr(base_config, "model_type", ""))
        unknown = set(liger_options) - cls.liger_field_names()
        if unknown:
            raise ValueError(
                f"unknown Liger option(s) {', '.join(sorted(unknown))}; "
                f"valid options: {', '.join(sorted(cls.liger_field_names() - {'base_model_type'}))}"
            )
        base = base_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"):
            base.pop(key, None)
        config = cls(**base, base_model_type=family.model_type, **liger_options)
        config.architectures = ["LigerForCausalLM"]
        return config

    def to_base_config(self) -> PretrainedConfig:
        """The base family's own config (what the teacher was built from)."""
        values = self.to_dict()
        for key in self.liger_field_names() | {"model_type", "architectures", "auto_map", "transformers_version"}:
            values.pop(key, None)
        base = AutoConfig.for_model(self.base_model_type, **values)
        base._attn_implementation = self._attn_implementation
        return base

