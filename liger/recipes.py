"""Named sets of Liger options: ``liger.convert(base, recipe="memory")``, ``liger convert BASE OUT --recipe memory``.

Options given beside a recipe override its values. No torch import here (the CLI reads the names for ``--help``).
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "paper": {},
    "memory": dict(linear_weight=0.0, window_weight=1.0, num_sink_tokens=4, global_cache_size=1024,
                   global_cache_pool=8),
}
"""``paper``: the paper's Liger-GLA (every option at its default). ``memory``: window attention (64 keys) + 4
sink tokens + a bounded cache of the 1,024 past keys per layer and KV head that the recurrent state recalls worst
(``global_cache_pool=8``), the recurrent branch only ranking what the cache keeps — for a converted model that
must retrieve what it read thousands of tokens ago with constant decode memory, used without fine-tuning
(docs/results-memory.md: SmolLM2, no training, passkey 19/20, 20/20, 20/20, 13/20 at 1K/2K/4K/8K; 87 % of the
teacher's recall of a paragraph 1,024 tokens back; fine-tuning with next-token loss has so far taken retrieval
away)."""


def recipe_options(name: str | None, **options) -> dict:
    """The options of recipe ``name`` (None: none) updated with ``options``; ValueError for an unknown name."""
    if name is None:
        return dict(options)
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], **options}
