"""LigerForCausalLM: a base family's decoder with its attention layers swapped for LigerAttention.

The embeddings, decoder layers (norms, MLPs), final norm and rotary embedding are the family's own modules,
built from the base config, so parameter names, shapes and counts equal the teacher's exactly. Only each
layer's ``self_attn`` is replaced, by a :class:`LigerAttention` that owns the same ``q/k/v/o_proj`` modules,
except in ``full_attention_layers``, which keep the family's attention and a standard KV cache.

Single-token decode steps run in one of the modes of :meth:`LigerForCausalLM.set_decoding`: eager (the
reference), static (fixed shapes, cache written in place) or the static step replayed from a CUDA graph
(the default on CUDA; see ``decoding.py``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention import LigerAttention
from .cache import LigerCache
from .configuration_liger import LigerConfig
from .decoding import DECODING_MODES, CUDAGraphDecoder
from .families import FAMILIES, get_family
from .triton_common import MAX_ELEMENTS, auto_takes_kernels
from .triton_decode import log_fallback_once
from .triton_layer import decode_layers, unsupported_reason

# transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache`` (the old name
# still works there, with a deprecation warning): pass and read whichever this installation has.
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
MASK_CACHE = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"

logger = logging.getLogger("liger")


class LigerPreTrainedModel(PreTrainedModel):
    config_class = LigerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = [f.decoder_layer for f in FAMILIES.values()]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not hand us a DynamicCache: the model creates its LigerCache on the first call
        return False


class LigerModel(LigerPreTrainedModel):
    def __init__(self, config: LigerConfig):
        super().__init__(config)
        self.family = get_family(config.base_model_type)
        base_config = config.to_base_config()
        if base_config._attn_implementation is None:
            base_config._attn_implementation = "sdpa"
        self.base_config = base_config
        base = AutoModel.from_config(base_config)
        self.embed_tokens = base.embed_tokens
        self.layers = base.layers
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb
        self.full_attention_layers = set(config.full_attention_layers)
        for i, layer in enumerate(self.layers):
            if i not in self.full_attention_layers:
                window = base_config.sliding_window if self.family.teacher_layer_is_sliding(base_config, i) else None
                layer.self_attn = LigerAttention(layer.self_attn, config, i, teacher_window=window)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _fused_layers(self, hidden: torch.Tensor) -> bool:
        """Whether the static decode step runs its decoder layers through :func:`triton_layer.decode_layers`
        (``decode_backend="triton"``, or "auto" on an Ampere-or-newer GPU; every layer a Liger layer, the families'
        pre-norm layer form)."""
        backend = self.config.decode_backend
        if backend == "torch" or self.full_attention_layers or (backend == "auto" and not auto_takes_kernels(hidden)):
            return False
        reason = unsupported_reason(self, hidden)
        if reason is not None and backend == "triton":
            log_fallback_once(f"{reason} (the decoder layers around the step)")
        return reason is None

    def _fused_prefill(self, hidden: torch.Tensor) -> bool:
        """Whether a multi-token call runs its decoder layers through :func:`triton_layer.decode_layers` too:
        ``decode_backend="triton"`` asked for explicitly (not "auto": not yet measured on a GPU), no gradient
        (the kernels have no backward), tensors small enough for the kernels' 32-bit offsets, and the layers'
        form :meth:`_fused_layers` checks."""
        if self.config.decode_backend != "triton" or torch.is_grad_enabled():
            return False
        rows = hidden.numel() // hidden.shape[-1]
        widest = max(hidden.shape[-1], getattr(self.config, "intermediate_size", 0) or 0)
        return rows * widest <= MAX_ELEMENTS and self._fused_layers(hidden)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: LigerCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        decode_step: str | None = None,
        cache: LigerCache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``decode_step`` ("eager" or "compiled"): run the static single-token decode step (one token per
        sequence, a prefilled cache with Liger layers only); positions then default to the cache's device-side
        token count, so that the call reads nothing from the host."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("LigerModel takes a 2D [batch, tokens] padding mask (1 = token, 0 = padding)")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = cache if cache is not None else past_key_values  # transformers >= 5.24 passes `cache`
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = LigerCache(self.config)
        if past_key_values is not None and not isinstance(past_key_values, LigerCache):
            raise TypeError(f"a Liger model needs a LigerCache, got {type(past_key_values).__name__}")
        T = inputs_embeds.shape[1]
        past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None and decode_step is not None:
            position_ids = past_key_values.liger_layers[0].buffers.seen_t.view(1, 1).expand(inputs_embeds.shape[0], 1)
        if position_ids is None:
            position_ids = (torch.arange(T, device=inputs_embeds.device) + past_seen)[None]
        token_mask = attention_mask[:, -T:].bool() if attention_mask is not None else None

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        if decode_step is not None and self._fused_layers(hidden_states):
            hidden_states = decode_layers(self, hidden_states, position_embeddings, past_key_values, token_mask,
                                          decode_step)
            return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE: past_key_values})
        if decode_step is None and not output_hidden_states and self._fused_prefill(hidden_states):
            # a gradient-free multi-token call (prefill, evaluation) with decode_backend="triton": the same layers
            # with the norms, residual adds and the MLP's activation fused (the attention and GEMMs as always)
            hidden_states = decode_layers(self, hidden_states, position_embeddings, past_key_values, token_mask, None)
            return BaseModelOutputWithPast(last_hidden_state=hidden_states,
                                           **{CACHE: past_key_values if use_cache else None})
        all_hidden_states = () if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if i in self.full_attention_layers:
                mask_fn = (
                    create_sliding_window_causal_mask
                    if self.family.teacher_layer_is_sliding(self.base_config, i)
                    else create_causal_mask
                )
                mask = mask_fn(
                    config=self.base_config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                    position_ids=position_ids, layer_idx=i, **{MASK_CACHE: past_key_values},
                )
                layer_kwargs = {"attention_mask": mask}
            else:
                layer_kwargs = {"token_mask": token_mask, "decode_step": decode_step}
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE: past_key_values},
                **layer_kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            **{CACHE: past_key_values if use_cache else None},
        )


class LigerForCausalLM(LigerPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    @contextlib.contextmanager
    def teacher_mode(self):
        """Run the teacher from the same weights: every Liger layer computes the base model's own softmax
        attention (its RoPE, GQA, padding and sliding window) instead of the two Liger branches.

        Used for logit distillation without a second copy of the model (combine with peft's
        ``disable_adapter()`` to also drop the LoRA deltas). Not for cached generation.
        """
        layers = [m for m in self.modules() if isinstance(m, LigerAttention)]
        previous = [m.teacher_mode for m in layers]
        for m in layers:
            m.teacher_mode = True
        try:
            yield self
        finally:
            for m, p in zip(layers, previous):
                m.teacher_mode = p

    @contextlib.contextmanager
    def attention_transfer(self):
        """Attention transfer (LoLCATs' stage 1, arXiv 2410.10254): inside the context every Liger layer computes
        both its Liger output and the teacher attention's output (the pretrained projections without LoRA deltas,
        softmax attention) on the same input, appends the mean squared error between them (float32, over the real
        tokens) to the yielded list, and passes the teacher's output on, so every layer sees the teacher's residual
        stream and its error reaches only its own projections. The caller averages the list into its loss and
        clears it after each forward. Full-sequence forwards only (``use_cache=False``)."""
        layers = [m for m in self.modules() if isinstance(m, LigerAttention)]
        losses: list[torch.Tensor] = []
        for m in layers:
            m.transfer_losses = losses
        try:
            yield losses
        finally:
            for m in layers:
                m.transfer_losses = None

    def __init__(self, config: LigerConfig):
        super().__init__(config)
        self.model = LigerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoding = "auto"
        """How single-token decode steps run (see :meth:`set_decoding`)."""
        self.compile_decode_step = True
        self.post_init()

    def set_decoding(self, mode: str = "auto", compile: bool = True) -> LigerForCausalLM:
        """Choose how single-token decode steps (``generate``, or a forward of one token per sequence on a
        prefilled ``LigerCache``) run:

        * ``"eager"``: the reference path (the cached window is concatenated with the new token);
        * ``"static"``: the fixed-shape step that writes the cache in place (any device; same outputs);
        * ``"cuda_graph"``: the static step captured once per cache in a CUDA graph and replayed (CUDA only);
        * ``"auto"`` (default): ``"cuda_graph"`` on CUDA outside autograd, ``"eager"`` otherwise.

        Models with ``full_attention_layers`` (a growing K/V cache) always decode eagerly.

        Args:
            compile: with ``"cuda_graph"``, compile each layer's attention core with ``torch.compile`` before
                capturing (fewer, fused kernels; falls back to the eager step if compilation fails).
        """
        if mode not in DECODING_MODES:
            raise ValueError(f"decoding mode must be one of {', '.join(DECODING_MODES)}, got {mode!r}")
        if mode in ("static", "cuda_graph") and self.config.full_attention_layers:
            raise ValueError(f"decoding mode {mode!r} needs a fixed-size cache, but layers "
                             f"{self.config.full_attention_layers} keep full attention (use 'eager')")
        self.decoding = mode
        self.compile_decode_step = compile
        return self

    def _decode_mode(self, input_ids, inputs_embeds, past_key_values, labels, output_hidden_states) -> str | None:
        """The decoding mode this call takes, or None for a regular forward."""
        if self.decoding == "eager" or not isinstance(past_key_values, LigerCache):
            return None
        if input_ids is None or inputs_embeds is not None or input_ids.shape[1] != 1 or labels is not None:
            return None
        if output_hidden_states or not past_key_values.is_static or past_key_values.get_seq_length() == 0:
            return None
        if not all(layer.is_initialized for layer in past_key_values.liger_layers):
            return None
        if self.decoding == "auto":
            return "cuda_graph" if input_ids.is_cuda and not torch.is_grad_enabled() else None
        if self.decoding == "cuda_graph" and not input_ids.is_cuda:
            raise RuntimeError("decoding mode 'cuda_graph' needs the model on a CUDA device (use 'static' or 'eager')")
        return self.decoding

    @torch.no_grad()
    def static_step(self, input_ids, position_ids, attention_mask, cache: LigerCache, compile: bool = False):
        """Logits ``[B, 1, vocab]`` of one token per sequence through the static decode step; writes ``cache``'s
        buffers in place but leaves its host token count alone (see ``LigerCache.advance``)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=cache, use_cache=True,
                            decode_step="compiled" if compile else "eager").last_hidden_state
        return self.lm_head(hidden)

    def _graph_decoder(self, cache: LigerCache) -> CUDAGraphDecoder | None:
        decoder = cache.decoder
        if (isinstance(decoder, CUDAGraphDecoder) and decoder.matches(cache) and decoder.model is self
                and decoder.compile == self.compile_decode_step):
            return decoder
        if cache.capture_failed:
            return None
        cache.drop_decoder()  # a stale one (batch size, compile setting): free its graph first
        try:
            cache.decoder = CUDAGraphDecoder(self, cache, compile=self.compile_decode_step)
        except Exception as err:  # capture is best effort: decode with the same static step, uncaptured
            cache.capture_failed = True
            logger.warning("liger: CUDA graph capture failed (%s: %s); decoding with the uncaptured static step",
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            return None
        return cache.decoder

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: LigerCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        cache: LigerCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        past_key_values = cache if cache is not None else past_key_values  # transformers >= 5.24 passes `cache`
        mode = self._decode_mode(input_ids, inputs_embeds, past_key_values, labels, output_hidden_states)
        if mode is not None:
            decoder = self._graph_decoder(past_key_values) if mode == "cuda_graph" else None
            if decoder is not None:
                logits = decoder(input_ids, position_ids, attention_mask)
            else:
                compile = mode == "cuda_graph" and self.compile_decode_step
                logits = self.static_step(input_ids, position_ids, attention_mask, past_key_values, compile=compile)
                past_key_values.advance(1)
            output = CausalLMOutputWithPast(logits=logits, **{CACHE: past_key_values})
            return output if return_dict is not False else output.to_tuple()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE: getattr(outputs, CACHE)}
        )
        return output if return_dict is not False else output.to_tuple()
