"""The strongest teacher decode step we can build from what is installable: a hand-written single-token step of the
unconverted teacher (Llama/SmolLM, Mistral, Qwen2, Qwen3) on a static KV cache, with fixed shapes so that the whole
step — embeddings, every layer, the LM head — is captured in one CUDA graph (by hand, as
``liger/models/decoding.py`` does for Liger), and with attention that reads each KV head's cache once.

Why not transformers' own static-cache step: HF's decode attention over a ``StaticCache`` builds a mask over the
whole cache for every step and, with a mask, repeats K/V to every query head (``repeat_kv``; SDPA's
``enable_gqa`` is only used without a mask), so at 32K context it reads the cache ``heads / kv_heads`` times.

The step here:

* **cache**: per layer ``keys``/``values`` ``[B, kv_heads, Tmax, D]`` allocated once (post-RoPE keys, as HF
  caches them), a per-key validity ``valid [B, Tmax]`` (False for padding and for slots not written yet) and the
  next slot as a device tensor ``slot [1]``; the step writes slot ``slot`` with ``index_copy_`` and advances it
  on the device, so nothing is read back to the host and the buffers never move;
* **attention** (``attention="fold"``, the default): the query heads of a group are folded into the query axis —
  ``q [B, heads, 1, D]`` viewed as ``[B, kv_heads, heads / kv_heads, D]`` — and attend to their KV head's
  ``[B, kv_heads, Tmax, D]`` cache through ``F.scaled_dot_product_attention`` with the validity as a
  ``[B, 1, 1, Tmax]`` boolean mask (broadcast, never materialised per query or per head). Each KV head's cache is
  read once for its whole group, by a fused kernel that takes a mask (PyTorch's memory-efficient attention on
  CUDA). ``attention="enable_gqa"`` is the other spelling — query heads as heads, ``enable_gqa=True``, same mask —
  kept to measure: with a mask, PyTorch versions whose fused kernels have no grouped-query support with masks
  fall back to the math kernel, which repeats K/V to every query head;
* **the rest** (RMSNorms, projections, RoPE, Qwen3's q/k norms, the MLP) is written out per layer as two pure
  functions of tensors (:func:`pre_attention`, :func:`post_attention`) that ``compile=True`` compiles (dynamic
  shapes: one compilation serves every batch size and context);
* **prefill**: the same functions over the prompt, with SDPA's causal kernel (a ``[B, 1, T, T]`` mask only for
  left-padded prompts), writing slots ``0..T-1``.

:class:`GraphedStep` captures :meth:`GQADecodeTeacher.step` for one cache; on a CPU the step runs uncaptured.
:meth:`GQADecodeTeacher.reference_step` is the plain reference (the HF modules of each layer, K/V repeated to the
query heads, an explicit float32 softmax over the valid keys); the tests check both against the HF model's own
forward (``tests/bench/test_teacher_decode.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.families import FAMILIES

ATTENTION_FORMS = ("fold", "enable_gqa")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm of Llama/Mistral/Qwen2/Qwen3: normalised in float32, cast back, then scaled."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class LayerWeights:
    """One decoder layer's tensors (biases and q/k norms are None where the family has none)."""
    ln1: torch.Tensor
    wq: torch.Tensor
    bq: torch.Tensor | None
    wk: torch.Tensor
    bk: torch.Tensor | None
    wv: torch.Tensor
    bv: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    ln2: torch.Tensor
    wg: torch.Tensor
    bg: torch.Tensor | None
    wu: torch.Tensor
    bu: torch.Tensor | None
    wd: torch.Tensor
    bd: torch.Tensor | None


def pre_attention(h, ln1, wq, bq, wk, bk, wv, bv, q_norm, k_norm, cos, sin, eps: float, heads: int,
                  kv_heads: int, head_dim: int):
    """``h [B, T, hidden]`` -> post-RoPE ``q [B, heads, T, D]``, ``k``, ``v [B, kv_heads, T, D]``."""
    B, T, _ = h.shape
    x = rms_norm(h, ln1, eps)
    q = F.linear(x, wq, bq).view(B, T, heads, head_dim)
    k = F.linear(x, wk, bk).view(B, T, kv_heads, head_dim)
    v = F.linear(x, wv, bv).view(B, T, kv_heads, head_dim)
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def post_attention(h, attn, wo, bo, ln2, wg, bg, wu, bu, wd, bd, eps: float, act):
    """The residual after ``o_proj`` and the MLP: ``h [B, T, hidden]``, ``attn [B, T, heads * D]``."""
    h = h + F.linear(attn, wo, bo)
    x = rms_norm(h, ln2, eps)
    return h + F.linear(act(F.linear(x, wg, bg)) * F.linear(x, wu, bu), wd, bd)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, scale: float,
                     form: str = "fold") -> torch.Tensor:
    """One query per head ``q [B, heads, 1, D]`` against a static cache ``[B, kv_heads, Tmax, D]`` whose valid keys
    are ``valid [B, Tmax]``; returns ``[B, heads, 1, D]``. Query head ``h`` reads KV head ``h // (heads / kv_heads)``
    (HF's ``repeat_kv`` order)."""
    B, H, _, D = q.shape
    mask = valid[:, None, None, :]
    if form == "fold":
        out = F.scaled_dot_product_attention(q.reshape(B, keys.shape[1], H // keys.shape[1], D), keys, values,
                                             attn_mask=mask, scale=scale)
        return out.reshape(B, H, 1, D)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)


class StaticKVCache:
    """Fixed buffers for ``batch`` sequences of up to ``max_len`` tokens (see the module docstring)."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype, device,
                 fill: str = "zeros"):
        make = torch.zeros if fill == "zeros" else torch.empty
        self.keys = [make(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [make(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        if fill == "random":
            for t in self.keys + self.values:
                t.normal_()
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.length = 0
        """Slots written so far (host count; the step advances ``slot`` on the device, the caller this)."""

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    def buffers(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.valid, self.slot]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def fill_synthetic(self, length: int) -> None:
        """Mark the first ``length`` slots valid (their keys/values are whatever the buffers hold): a cache of
        ``length`` tokens for measuring decode speed, whose cost does not depend on the cached values."""
        self.valid.zero_()
        self.valid[:, :length] = True
        self.slot.fill_(length)
        self.length = length


def unsupported_reason(model) -> str | None:
    """Why :class:`GQADecodeTeacher` cannot run ``model`` (None when it can)."""
    config = model.config
    if config.model_type not in FAMILIES:
        return f"model_type '{config.model_type}' (supported: {', '.join(FAMILIES)})"
    layer_types = getattr(config, "layer_types", None) or []
    sliding = [i for i, t in enumerate(layer_types) if t != "full_attention"]
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        sliding = list(range(config.num_hidden_layers))
    if sliding:
        return f"layers {sliding[:4]}{'...' if len(sliding) > 4 else ''} use a sliding window (only full attention "\
               "is written)"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if "dynamic" in rope or "longrope" in rope:
        return f"rope type '{rope}' updates its frequencies on the host"
    return None


class GQADecodeTeacher:
    """The hand-written decode step of an HF causal LM of a supported family (see the module docstring).

    Args:
        model: the teacher (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
            ``Qwen3ForCausalLM``), on the device it will run on; its weights are used in place.
        attention: ``"fold"`` or ``"enable_gqa"`` (:func:`decode_attention`).
        compile: compile :func:`pre_attention` and :func:`post_attention` (dynamic shapes) for the step.

    Raises:
        ValueError: a model this step does not implement (sliding-window layers, host-side RoPE updates, another
            family), with the reason.
    """

    def __init__(self, model, attention: str = "fold", compile: bool = False):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the hand-written GQA teacher cannot run this model: {reason}")
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_FORMS)}, got {attention!r}")
        self.model = model
        c = model.config
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        self.scale = model.model.layers[0].self_attn.scaling
        self.attention = attention
        self.act = model.model.layers[0].mlp.act_fn
        self.layers = [self._weights(layer) for layer in model.model.layers]
        self.pre, self.post = pre_attention, post_attention
        if compile:
            from ..models.compiling import CompiledOrEager

            self.pre = CompiledOrEager(pre_attention, "bench gqa teacher pre_attention", dynamic=True)
            self.post = CompiledOrEager(post_attention, "bench gqa teacher post_attention", dynamic=True)

    @staticmethod
    def _weights(layer) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        return LayerWeights(
            layer.input_layernorm.weight, a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias,
            a.v_proj.weight, a.v_proj.bias, None if q_norm is None else q_norm.weight,
            None if k_norm is None else k_norm.weight, a.o_proj.weight, a.o_proj.bias,
            layer.post_attention_layernorm.weight, m.gate_proj.weight, m.gate_proj.bias, m.up_proj.weight,
            m.up_proj.bias, m.down_proj.weight, m.down_proj.bias)

    def new_cache(self, batch: int, max_len: int, fill: str = "zeros") -> StaticKVCache:
        p = self.model.lm_head.weight
        return StaticKVCache(len(self.layers), batch, self.kv_heads, max_len, self.head_dim, p.dtype, p.device, fill)

    def _pre(self, fn, h, w: LayerWeights, cos, sin):
        return fn(h, w.ln1, w.wq, w.bq, w.wk, w.bk, w.wv, w.bv, w.q_norm, w.k_norm, cos, sin, self.eps, self.heads,
                  self.kv_heads, self.head_dim)

    def _post(self, fn, h, attn, w: LayerWeights):
        return fn(h, attn, w.wo, w.bo, w.ln2, w.wg, w.bg, w.wu, w.bu, w.wd, w.bd, self.eps, self.act)

    def _head(self, h):
        m = self.model
        return m.lm_head(rms_norm(h, m.model.norm.weight, m.model.norm.variance_epsilon))

    @torch.no_grad()
    def prefill(self, cache: StaticKVCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """The prompt ``input_ids [B, T]`` (left padding marked by ``attention_mask``) into slots ``0..T-1`` of an
        empty ``cache``; returns the logits of the last ``logits_to_keep`` positions (0: all)."""
        B, T = input_ids.shape
        if T > cache.max_len:
            raise ValueError(f"prompt of {T} tokens for a cache of {cache.max_len}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        padded = not bool(mask.bool().all())
        cache.valid.zero_()
        cache.valid[:, :T] = mask.bool()
        causal = None
        if padded:  # a padding query sees itself, so that no row is empty (its output is never used)
            eye = torch.eye(T, dtype=torch.bool, device=input_ids.device)
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            causal = (causal & cache.valid[:, None, None, :T]) | eye
        h = self.model.model.embed_tokens(input_ids)
        cos, sin = self.model.model.rotary_emb(h, position_ids)
        for i, w in enumerate(self.layers):
            q, k, v = self._pre(pre_attention, h, w, cos, sin)
            cache.keys[i][:, :, :T] = k
            cache.values[i][:, :, :T] = v
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, is_causal=not padded, scale=self.scale,
                                               enable_gqa=True)
            h = self._post(post_attention, h, o.transpose(1, 2).reshape(B, T, -1), w)
        cache.slot.fill_(T)
        cache.length = T
        return self._head(h[:, -logits_to_keep:] if logits_to_keep else h)

    @torch.no_grad()
    def step(self, cache: StaticKVCache, input_ids: torch.Tensor, position_ids: torch.Tensor,
             token_mask: torch.Tensor) -> torch.Tensor:
        """One token per sequence (``input_ids``, ``position_ids``, ``token_mask`` ``[B, 1]``, device tensors) at
        slot ``cache.slot``; returns logits ``[B, 1, vocab]``. Fixed shapes, no host reads: capturable. Advances
        ``cache.slot`` on the device; the caller advances ``cache.length``."""
        B = input_ids.shape[0]
        cache.valid.index_copy_(1, cache.slot, token_mask.bool())
        h = self.model.model.embed_tokens(input_ids)
        cos, sin = self.model.model.rotary_emb(h, position_ids)
        for i, w in enumerate(self.layers):
            q, k, v = self._pre(self.pre, h, w, cos, sin)
            cache.keys[i].index_copy_(2, cache.slot, k)
            cache.values[i].index_copy_(2, cache.slot, v)
            o = decode_attention(q, cache.keys[i], cache.values[i], cache.valid, self.scale, self.attention)
            h = self._post(self.post, h, o.transpose(1, 2).reshape(B, 1, -1), w)
        cache.slot.add_(1)
        return self._head(h)

    @torch.no_grad()
    def reference_step(self, cache: StaticKVCache, input_ids: torch.Tensor, position_ids: torch.Tensor,
                       token_mask: torch.Tensor) -> torch.Tensor:
        """The plain reference of :meth:`step`: the HF modules of each layer, the new token written at the host's
        ``cache.length``, K/V repeated to every query head and an explicit float32 softmax over the valid keys."""
        m = self.model.model
        t = cache.length
        cache.valid[:, t] = token_mask[:, 0].bool()
        h = m.embed_tokens(input_ids)
        cos, sin = m.rotary_emb(h, position_ids)
        B, G = h.shape[0], self.heads // self.kv_heads
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            q = a.q_proj(x).view(B, 1, self.heads, self.head_dim)
            k = a.k_proj(x).view(B, 1, self.kv_heads, self.head_dim)
            v = a.v_proj(x).view(B, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            if getattr(a, "q_norm", None) is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q = q * cos[:, None] + rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + rotate_half(k) * sin[:, None]
            cache.keys[i][:, :, t] = k[:, :, 0]
            cache.values[i][:, :, t] = v[:, :, 0]
            keys = cache.keys[i].repeat_interleave(G, dim=1).float()
            values = cache.values[i].repeat_interleave(G, dim=1).float()
            scores = (q.float() @ keys.transpose(2, 3)) * self.scale
            scores = scores.masked_fill(~cache.valid[:, None, None, :], float("-inf"))
            o = (scores.softmax(-1) @ values).to(h.dtype)
            h = h + a.o_proj(o.transpose(1, 2).reshape(B, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        cache.slot.add_(1)
        return self.model.lm_head(m.norm(h))


class GraphedStep:
    """:meth:`GQADecodeTeacher.step` for one cache, captured in a CUDA graph and replayed per token.

    The step runs twice on a side stream first (compilation, cuBLAS workspaces), then the cache's validity and slot
    are restored (the warm-up wrote keys/values only at slots not valid yet, which the next real step overwrites)
    and the step is captured once. Inputs go through static buffers."""

    def __init__(self, teacher: GQADecodeTeacher, cache: StaticKVCache):
        from ..models.decoding import warmup_stream

        self.teacher, self.cache = teacher, cache
        B, device = cache.batch_size, cache.valid.device
        self.input_ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.token_mask = torch.ones(B, 1, dtype=torch.long, device=device)
        saved = cache.valid.clone(), cache.slot.clone()
        stream = warmup_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        cache.valid.copy_(saved[0])
        cache.slot.copy_(saved[1])
        del saved
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def _step(self):
        return self.teacher.step(self.cache, self.input_ids, self.position_ids, self.token_mask)

    def __call__(self, input_ids, position_ids, token_mask=None) -> torch.Tensor:
        self.input_ids.copy_(input_ids)
        self.position_ids.copy_(position_ids)
        if token_mask is None:
            self.token_mask.fill_(1)
        else:
            self.token_mask.copy_(token_mask)
        self.graph.replay()
        self.cache.length += 1
        return self.logits

    def release(self) -> None:
        self.graph.reset()
        self.logits = None
