"""How far back the recurrent state of a Liger model can carry a token: its forget gates, its recall (issue 14).

Every Liger layer's gate comes from its key projection, ``log α_t = logsigmoid(Pool(k_t)) / n``: a token written
into the state at position ``t`` is still there ``D`` tokens later only as ``exp(Σ_{s=t+1..t+D} log α_s)`` of
itself (per key channel for GLA, per head for the scalar-gate variants and the delta rule). This script runs the
model over held-out sequences (``liger.eval.longtext``'s, as the loss by position), reads each layer's key
projection (LoRA included) through a forward hook, computes the layer's gates exactly as the model does
(``Recurrence.gate_input`` and ``log_gate``) and reports, for each distance ``D``:

* ``mean``: the retention ``exp(Σ log α)`` averaged over positions, layers, heads and channels (the share of a
  written key's contribution left ``D`` tokens later, on average);
* ``best_layer_channel``: the best (layer, head, channel)'s position-averaged retention (a passkey needs only a few
  channels to carry it);
* ``share_above_0.1``: the share of (layer, head, channel) whose position-averaged retention is above 0.1;

and, per bucket of distances from a sequence's end, how much of each token the final state still holds
(``recall``, :func:`state_recall`: the state read with the token's own key against the token's value, beyond what
the same read scores for tokens the state was never written; the global cache's self-recall, at the end). With
``--passkey`` the sequences are ``liger eval``'s passkey prompts and the recall is also given for the needle's
tokens, against the same tokens read from the state just before the needle.

The retention is an upper bound on what the state keeps: the delta rule also overwrites (``I − β k̂ᵀk̂``), and what a key
contributes must still be read back through ``φ(q)``. A model whose gates retain nothing at ``D`` cannot retrieve
from ``D`` tokens back through its state, whatever its training did elsewhere.

    OMP_NUM_THREADS=2 python benchmarks/analysis/state_horizon.py --output OUT.json \\
        --models convert:gla convert:gated_deltanet convert:gla:gate_normalizer=64 RUNS/gla@20M
    OMP_NUM_THREADS=2 python benchmarks/analysis/state_horizon.py --passkey --length 2048 --sequences 20 \\
        --models convert:gated_deltanet RUNS/deltanet@20M --output OUT.json

A model is ``convert:VARIANT[:KEY=VALUE,...]`` (SmolLM2 converted with those ``LigerConfig`` options, no
training) or a run folder of ``liger finetune`` / ``reproduce.py train`` (its config's options, its LoRA adapter
merged).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: its repro package

DISTANCES = (1, 16, 64, 256, 1024, 2048)
RECALL_EDGES = (0, 64, 256, 1024, 4096)
UNWRITTEN = 256


def retention(log_gates: torch.Tensor, distances) -> dict[int, torch.Tensor]:
    """``log_gates`` ``[T, *rest]`` (log α of one sequence, position first) -> for each distance ``D < T``, the
    position-averaged retention ``mean_t exp(Σ_{s=t+1..t+D} log α_s)`` over ``t = 0 .. T-1-D``: ``[*rest]``."""
    c = torch.cumsum(log_gates.double(), dim=0)
    out = {}
    for d in distances:
        if d < log_gates.shape[0]:
            out[d] = torch.exp(c[d:] - c[:-d]).mean(0).float()
    return out


def state_recall(rec, k: torch.Tensor, v: torch.Tensor, edges, unwritten: int = 256,
                 groups: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """What the state still holds of each token it was written: ``k`` ``[1, T, H, D]`` (the raw keys the recurrence
    is fed), ``v`` ``[1, T, H, V]``. The recurrence ``rec`` runs over the first ``T − unwritten`` tokens; its final
    state is read with every token's own key (``rec.read``: the normalised readout, the global cache's
    self-recall) and each read is compared with the token's value (the cosine of the two, centred on the written
    tokens' means). A state also maps keys to values it never stored (keys and values are projections of the same
    hidden state, and the state is in part a regression of one on the other), so the last ``unwritten`` tokens,
    never written, are the control. Returns ``"unwritten"``: their mean cosine per head ``[H]``, and per bucket
    of distances ``[a, b)`` (``edges``) from the last written token (``"a-(b-1)"``), the written tokens' mean cosine
    minus that control, per head: about 0 where the state holds nothing of those tokens themselves; the same per
    bucket of positions from the sequence's start (``"at a-(b-1)"``: what the text there does to the measure), and
    for each of ``groups`` (name -> positions of written tokens, e.g. a passkey's needle) its tokens' mean cosine
    minus theirs read from the state just before the group (paired: the same tokens, never written)."""
    k, v = k.float(), v.float()
    T = k.shape[1]
    written = T - unwritten
    if written < 1 or unwritten < 1:
        raise ValueError(f"a sequence of {T} tokens cannot leave {unwritten} unwritten and write some")
    cos = _read_cosines(rec, k, v, written)
    control = cos[written:].mean(0)
    out = {"unwritten": control}
    position = torch.arange(written)
    for key, where in (("{}-{}", written - 1 - position), ("at {}-{}", position)):  # back from the end; from the start
        for a, b in zip(edges[:-1], edges[1:]):
            chosen = (where >= a) & (where < b)
            if chosen.any():
                out[key.format(a, b - 1)] = cos[:written][chosen].mean(0) - control
    for name, positions in (groups or {}).items():
        if not positions or min(positions) < 1 or max(positions) >= written:
            raise ValueError(f"group {name!r}: positions must be written tokens after the first (1 .. {written - 1})")
        before = _read_cosines(rec, k, v, min(positions))  # the state just before the group: it never saw it
        out[name] = cos[positions].mean(0) - before[positions].mean(0)
    return out


def _read_cosines(rec, k: torch.Tensor, v: torch.Tensor, written: int) -> torch.Tensor:
    """``[T, H]``: the state written with the first ``written`` tokens, read with every token's key; each read's
    cosine with the token's value, both centred on the written tokens' means."""
    T = k.shape[1]
    _, state = rec.recall(k[:, :written], k[:, :written], v[:, :written], None, None, "chunk", "torch",
                          need_state=True)
    reads = []
    for a in range(0, T, 512):  # the state read with 512 keys at a time
        n = min(512, T - a)
        reads.append(rec.read(tuple(x.expand(n, *x.shape[1:]) for x in state), k[0, a:a + n, None])[:, 0])
    r = torch.cat(reads).float()  # [T, H, V]
    return F.cosine_similarity(r - r[:written].mean(0), v[0] - v[0, :written].mean(0), dim=-1)


def summarise(per_layer: list[dict[int, torch.Tensor]], distances) -> dict:
    """Per-layer retentions ``{D: [heads, channels]}`` (each averaged over sequences) -> the report's numbers."""
    rows = {}
    for d in distances:
        if not all(d in layer for layer in per_layer):
            continue
        stacked = torch.stack([layer[d].reshape(-1) for layer in per_layer])  # [layers, heads·channels]
        rows[str(d)] = {
            "mean": stacked.mean().item(),
            "best_layer_channel": stacked.max().item(),
            "share_above_0.1": (stacked > 0.1).float().mean().item(),
            "per_layer_mean": stacked.mean(1).tolist(),
        }
    return rows


def load(spec: str, teacher: str):
    """``(model, tokenizer)`` for ``convert:VARIANT[:K=V,...]`` or a run folder."""
    from conversion_loss import parse_setting  # (benchmarks/conversion_loss.py: NAME:key=value,...)

    from liger.loading import load_model

    if spec.startswith("convert:"):
        text = spec[len("convert:"):]
        try:
            variant, options = parse_setting(text if ":" in text else text + ":")
        except argparse.ArgumentTypeError as err:
            raise SystemExit(f"state_horizon.py: {spec!r}: {err}") from None
        try:
            return load_model(teacher, {"variant": variant, **options}, torch.float32)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise SystemExit(f"state_horizon.py: {spec!r}: {err}") from None
    run = Path(spec)
    if not (run / "config.yaml").is_file() or not (run / "adapter").is_dir():
        raise SystemExit(f"state_horizon.py: {spec!r} is neither convert:VARIANT nor a run folder with "
                         "config.yaml and adapter/")
    from repro.evaluate import merged_student

    return merged_student(run, teacher)


@torch.no_grad()
def measure(model, sequences, distances, recall_edges=RECALL_EDGES, unwritten=UNWRITTEN) -> dict:
    """The gates' retention of ``model`` over ``sequences`` (lists of token ids, or ``(ids, groups)`` pairs: see
    :func:`state_recall`), and with ``recall_edges`` the final state's recall of each token by distance, and of
    each group, summarised."""
    from liger.models.attention import LigerAttention

    layers = [m for m in model.modules() if isinstance(m, LigerAttention)]
    if not layers:
        raise SystemExit("state_horizon.py: the model has no Liger layer")
    sums: list[dict[int, torch.Tensor]] = [{} for _ in layers]
    recalls: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    keys: dict[int, torch.Tensor] = {}
    current: dict = {}  # the groups of the sequence being run
    hooks = []
    for i, layer in enumerate(layers):
        def heads(output, layer=layer):
            return output.float().view(output.shape[0], output.shape[1], layer.num_key_value_heads, -1)

        def on_key(module, args, output, i=i, layer=layer):
            k = heads(output)
            if layer.q_norm is not None and layer.use_qk_norm_in_linear:
                k = layer.k_norm(k)
            keys[i] = k
            rec = layer.recurrence
            g = rec.log_gate(rec.gate_input(k))[0]  # [T, H] or [T, H, D]
            for d, r in retention(g, distances).items():
                sums[i][d] = sums[i].get(d, 0) + r

        def on_value(module, args, output, i=i, layer=layer):
            if recall_edges:
                for bucket, r in state_recall(layer.recurrence, keys.pop(i), heads(output), recall_edges,
                                                 unwritten, current.get("groups")).items():
                    recalls[i][bucket] = recalls[i].get(bucket, 0) + r

        hooks += [layer.k_proj.register_forward_hook(on_key), layer.v_proj.register_forward_hook(on_value)]
    try:
        for seq in sequences:
            ids, current["groups"] = seq if isinstance(seq, tuple) else (seq, None)
            model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    per_layer = [{d: v / len(sequences) for d, v in layer.items()} for layer in sums]
    rec = layers[0].recurrence
    out = {"variant": type(rec).__name__, "gate_normalizer": rec.normalizer,
           "gate": "per head" if rec.scalar_gate else "per key channel",
           "distances": summarise(per_layer, distances)}
    if recall_edges:
        out["recall"] = {}
        for bucket in recalls[0]:
            stacked = torch.stack([layer[bucket] / len(sequences) for layer in recalls])  # [layers, heads]
            out["recall"][bucket] = {"mean": stacked.mean().item(), "best_layer_head": stacked.max().item(),
                                     "per_layer_mean": stacked.mean(1).tolist()}
    return out


def passkey_sequences(tok, length: int, trials: int, unwritten: int) -> list[tuple[list[int], dict]]:
    """``liger.eval.passkey``'s prompts (its draws for ``length``, seed 0), each with its needle's token positions
    (``{"needle": [...]}``); trials whose needle is not wholly among the written tokens are left out."""
    import random

    from liger.eval.passkey import NEEDLE, n_tokens, passkey_prompt

    rng = random.Random(f"0-{length}")
    out = []
    for i in range(trials):
        key = rng.randint(10000, 99999)
        prompt = passkey_prompt(tok, length, key, (i + rng.random()) / trials)
        needle = NEEDLE.format(key=key)
        start = n_tokens(tok, prompt[:prompt.index(needle)].rstrip())
        width = len(tok(" " + needle, add_special_tokens=False).input_ids)
        ids = tok(prompt).input_ids
        if start + width <= len(ids) - unwritten:
            out.append((ids, {"needle": list(range(start, start + width))}))
    if not out:
        raise SystemExit(f"state_horizon.py: no passkey trial of {length} tokens has its needle before the last "
                         f"{unwritten} tokens")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--teacher", default="smollm2")
    parser.add_argument("--corpus", default=os.path.expanduser("~/.cache/liger/repro-corpus/heldout"))
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--distances", default=",".join(map(str, DISTANCES)))
    parser.add_argument("--recall-edges", default=",".join(map(str, RECALL_EDGES)),
                        help="distance buckets from the end for the final state's recall ('' for none)")
    parser.add_argument("--unwritten", type=int, default=UNWRITTEN,
                        help="the last tokens of each sequence the recall's state is not written (its control)")
    parser.add_argument("--passkey", action="store_true",
                        help="the sequences are `liger eval`'s passkey prompts of about --length tokens (its draws, "
                             "seed 0, --sequences trials; those with the needle among the unwritten tokens are left "
                             "out) and the recall is also reported for the needle's tokens")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        distances = [int(d) for d in args.distances.split(",")]
        edges = [int(d) for d in args.recall_edges.split(",") if d]
    except ValueError:
        raise SystemExit("state_horizon.py: --distances and --recall-edges take whole numbers") from None
    if edges and not 1 <= args.unwritten < args.length:
        raise SystemExit(f"state_horizon.py: --unwritten must be from 1 to --length − 1, got {args.unwritten}")
    if edges and (len(edges) < 2 or edges != sorted(set(edges)) or edges[0] < 0):
        raise SystemExit("state_horizon.py: --recall-edges: two or more increasing whole numbers from 0")
    if any(d < 1 for d in distances) or args.length < 2 or args.sequences < 1:
        raise SystemExit("state_horizon.py: distances >= 1, --length >= 2 and --sequences >= 1")
    files = sorted(glob.glob(os.path.join(args.corpus, "*.txt")))
    if not files:
        raise SystemExit(f"state_horizon.py: no .txt file in {args.corpus}")
    from liger.eval.longtext import as_long_text

    report = {"command": " ".join(sys.argv), "length": args.length, "sequences": args.sequences,
              "unwritten": args.unwritten, "models": {}}
    seqs = None  # the same for every model: all share --teacher's tokenizer
    for spec in args.models:
        start = time.time()
        model, tok = load(spec, args.teacher)
        if seqs is None and args.passkey:
            seqs = passkey_sequences(tok, args.length, args.sequences, args.unwritten)
            report["needle_distances"] = [len(ids) - args.unwritten - 1 - g["needle"][-1] for ids, g in seqs]
        elif seqs is None:
            seqs = [s["ids"] for s in as_long_text(files, tok).sequences(args.length, args.sequences)]
        name = spec if spec.startswith("convert:") else Path(spec).name  # a run: its folder's name
        report["models"][name] = measure(model.eval(), seqs, distances, edges, args.unwritten)
        report["models"][name]["seconds"] = round(time.time() - start, 1)
        row = report["models"][name]["distances"]
        print(name, " ".join(f"D={d}: {v['mean']:.3g}/{v['best_layer_channel']:.3g}/{v['share_above_0.1']:.3f}"
                             for d, v in row.items()), flush=True)
        for bucket, v in report["models"][name].get("recall", {}).items():
            print(f"  recall {bucket}: mean {v['mean']:.3f}, best layer-head {v['best_layer_head']:.3f}")
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
