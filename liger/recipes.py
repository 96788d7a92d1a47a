"""Named sets of Liger options: ``liger.convert(base, recipe="memory")``, ``liger convert BASE OUT --recipe memory``.

Options given beside a recipe override its values. No torch import here (the CLI reads the names for ``--help``).
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "paper": {},
    "memory": dict(linear_weight=0.0, window_weight=1.0, window_size=512, num_sink_tokens=4, global_cache_size=512,
                   global_cache_pool=8),
}
"""``paper``: the paper's Liger-GLA (every option at its default). ``memory``: window attention over the last 512
keys + 4 sink tokens + a bounded cache of the 512 past keys per layer and KV head that the recurrent state recalls
worst (``global_cache_pool=8``), the recurrent branch only ranking what the cache keeps — for a converted model
that must retrieve what it read thousands of tokens ago with constant decode memory (1,028 + 8 pending keys per
layer and KV head), used without fine-tuning (docs/results-memory.md: SmolLM2, no training, passkey 20/20, 20/20,
18/20 at 2K/4K/8K — the teacher's; 87 % of the trained window-only student's loss gap closed at positions
1024–4095; 77 % of the teacher's recall of a paragraph 1,024 tokens back; a 64-key window beside 1,024 pooled keys,
the same memory, retrieves less at 8K and closes 76 %), or fine-tuned with ``liger finetune --config liger-memory``
(LoRA on 20 M tokens of 4,096-token sequences: passkey 19/20, 20/20, 20/20, 16/20 at 1K–8K, where the same model
without the cache finds 9, 5, 3, 1)."""


def recipe_options(name: str | None, **options) -> dict:
    """The options of recipe ``name`` (None: none) updated with ``options``; ValueError for an unknown name."""
    if name is None:
        return dict(options)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], **options}
