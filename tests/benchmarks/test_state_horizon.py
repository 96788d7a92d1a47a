import json

import pytest
import torch

from tests.conftest import load_benchmark


def test_retention_is_the_product_of_the_gates_averaged_over_positions():
    horizon = load_benchmark("analysis/state_horizon")
    g = -torch.rand(50, 3, 4)
    out = horizon.retention(g, [1, 7, 49, 50])
    assert sorted(out) == [1, 7, 49]  # no position has 50 tokens after it
    for d, r in out.items():
        brute = torch.stack([torch.exp(g[t + 1:t + d + 1].sum(0)) for t in range(50 - d)]).mean(0)
        torch.testing.assert_close(r, brute, rtol=1e-5, atol=1e-6)


def test_the_hook_reads_the_gates_the_model_uses(tiny_base, text_dir, tmp_path, monkeypatch):
    """The gates computed from each layer's k_proj output equal the log-decays the recurrence itself is fed."""
    horizon = load_benchmark("analysis/state_horizon")
    from liger.models import variants

    fed, measured = [], []
    prepare = variants.Recurrence.prepare

    def recording_prepare(self, q, k, v, valid):
        out = prepare(self, q, k, v, valid)
        fed.append(out[3][0].detach().clone())
        return out

    retention = horizon.retention
    monkeypatch.setattr(variants.Recurrence, "prepare", recording_prepare)
    monkeypatch.setattr(horizon, "retention", lambda g, d: (measured.append(g.clone()), retention(g, d))[1])
    out = tmp_path / "h.json"
    assert horizon.main(["--models", "convert:gla", "--teacher", str(tiny_base), "--corpus", str(text_dir),
                         "--length", "64", "--sequences", "2", "--distances", "1,16", "--recall-edges", "",
                         "--output", str(out)]) == 0
    assert len(fed) == len(measured) == 4  # 2 layers x 2 sequences
    for a, b in zip(fed, measured):
        torch.testing.assert_close(a, b)
    row = json.loads(out.read_text())["models"]["convert:gla"]
    assert row["gate"] == "per key channel" and row["gate_normalizer"] == 16.0
    assert set(row["distances"]) == {"1", "16"} and len(row["distances"]["16"]["per_layer_mean"]) == 2
    assert "recall" not in row


def test_a_larger_gate_normalizer_retains_longer(tiny_base, text_dir, tmp_path):
    horizon = load_benchmark("analysis/state_horizon")
    out = tmp_path / "h.json"
    assert horizon.main(["--models", "convert:gated_deltanet", "convert:gated_deltanet:gate_normalizer=1000000",
                         "--teacher", str(tiny_base), "--corpus", str(text_dir), "--length", "64",
                         "--sequences", "1", "--distances", "16", "--unwritten", "16", "--output", str(out)]) == 0
    models = json.loads(out.read_text())["models"]
    plain = models["convert:gated_deltanet"]["distances"]["16"]
    slow = models["convert:gated_deltanet:gate_normalizer=1000000"]["distances"]["16"]
    assert models["convert:gated_deltanet"]["gate"] == "per head"
    assert slow["mean"] > 0.999 and slow["share_above_0.1"] == 1.0
    assert plain["mean"] < 0.9  # logsigmoid(m)/16 over 16 tokens: about exp(-16·0.69/16) = 0.5 at m = 0
    recall = models["convert:gated_deltanet"]["recall"]
    assert list(recall) == ["unwritten", "0-63", "at 0-63"]  # (the default edges)
    assert len(recall["0-63"]["per_layer_mean"]) == 2


@pytest.mark.parametrize("args", [["--models", "convert:gla:gate_normalizer"], ["--models", "nowhere"],
                                  ["--models", "convert:gla", "--distances", "a"],
                                  ["--models", "convert:gla", "--recall-edges", "64,0"],
                                  ["--models", "convert:gla", "--unwritten", "0"], ["--models", "convert:nosuch"],
                                  ["--models", "convert:gla:no_such_option=1"]])
def test_bad_input_is_one_line_and_a_non_zero_exit(tiny_base, text_dir, tmp_path, args):
    horizon = load_benchmark("analysis/state_horizon")
    with pytest.raises(SystemExit) as err:
        horizon.main(args + ["--teacher", str(tiny_base), "--corpus", str(text_dir), "--output",
                             str(tmp_path / "h.json")])
    assert str(err.value).startswith("state_horizon.py: ") and "\n" not in str(err.value)


def _delta_rule(**options):
    from liger.models.configuration_liger import LigerConfig
    from liger.models.variants import get_recurrence

    return get_recurrence(LigerConfig(variant="gated_deltanet", delta_write_strength=1.0, **options))


def test_state_recall_of_a_perfect_memory_and_of_one_that_forgets():
    """Orthonormal keys written with strength 1 and no decay: the delta rule's state is an exact associative
    memory (each key reads back its value); a gate that forgets within tokens keeps only the last ones."""
    horizon = load_benchmark("analysis/state_horizon")
    torch.manual_seed(0)
    T, H, D = 48, 2, 64
    basis = torch.linalg.qr(torch.randn(H, D, D))[0][:, :, :T]  # [H, D, T]: orthonormal columns
    k = basis.permute(2, 0, 1)[None] * 3.0  # [1, T, H, D] (mean ~0: gate logsigmoid(~0))
    v = torch.randn(1, T, H, 16)
    edges = [0, 1, 16, 40]
    kept = horizon.state_recall(_delta_rule(gate_normalizer=1e9), k, v, edges, unwritten=8)
    assert list(kept) == ["unwritten", "0-0", "1-15", "16-39", "at 0-0", "at 1-15", "at 16-39"]
    last = horizon.state_recall(_delta_rule(gate_normalizer=1e9), k, v, [39, 40], unwritten=8)
    torch.testing.assert_close(kept["at 0-0"], last["39-39"])  # position 0 is 39 tokens back
    assert kept["unwritten"].abs().max() < 0.3  # unseen orthogonal keys read nothing of their values
    assert all(kept[b].min() > 0.7 for b in ("0-0", "1-15", "16-39")), kept
    lost = horizon.state_recall(_delta_rule(gate_normalizer=0.5), k, v, edges, unwritten=8)  # log α ≈ −1.4 a token
    assert lost["0-0"].min() > 0.7 and lost["16-39"].abs().max() < 0.3, lost
    group = {"needle": [10, 11, 12]}  # against the same tokens read from the state just before them
    assert horizon.state_recall(_delta_rule(gate_normalizer=1e9), k, v, edges, 8, group)["needle"].min() > 0.5
    with pytest.raises(ValueError, match="group 'needle'"):
        horizon.state_recall(_delta_rule(), k, v, edges, 8, {"needle": [0, 1]})
    with pytest.raises(ValueError, match="cannot leave 48 unwritten"):
        horizon.state_recall(_delta_rule(), k, v, edges, unwritten=48)


def test_state_recall_does_not_count_a_key_to_value_map_as_memory():
    """Values a fixed linear map of the keys: a state that forgets within tens of tokens still reads a decent value
    for any key (a regression of values on keys, not memory); the unwritten tokens' control takes that out."""
    horizon = load_benchmark("analysis/state_horizon")
    torch.manual_seed(0)
    T, H, D = 400, 2, 64
    k = torch.randn(1, T, H, D)
    k = k - k.mean(-1, keepdim=True)  # mean 0: every token's gate is logsigmoid(0) / n
    v = torch.einsum("bthd,hdv->bthv", k, torch.randn(H, D, 16))
    out = horizon.state_recall(_delta_rule(gate_normalizer=4), k, v, [0, 8, 128, 336], unwritten=64)
    assert out["unwritten"].min() > 0.3  # the map is there for tokens never written
    assert out["128-335"].abs().max() < 0.1, out  # retention exp(-128 · 0.69 / 4): nothing of those tokens left
    assert out["0-7"].min() > 0.05, out  # the last ones are still there, beyond the map
    groups = {"far": list(range(50, 80)), "near": list(range(330, 336))}  # each against the state just before it
    out = horizon.state_recall(_delta_rule(gate_normalizer=4), k, v, [0, 8, 128, 336], 64, groups)
    assert out["far"].abs().max() < 0.15 and out["near"].min() > 0.3, out


def test_passkey_prompts_mark_their_needle_and_report_its_recall(tiny_base, text_dir, tmp_path):
    horizon = load_benchmark("analysis/state_horizon")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    seqs = horizon.passkey_sequences(tok, 600, 4, unwritten=64)
    assert seqs and all(g["needle"][-1] < len(ids) - 64 for ids, g in seqs)
    for ids, g in seqs:
        text = tok.decode([ids[p] for p in g["needle"]])
        assert text.strip().startswith("The pass key is") and text.strip().endswith("is the pass key."), text
    out = tmp_path / "p.json"
    assert horizon.main(["--models", "convert:gated_deltanet", "--teacher", str(tiny_base), "--corpus", str(text_dir),
                         "--passkey", "--length", "600", "--sequences", "4", "--unwritten", "64",
                         "--recall-edges", "0,64,600", "--distances", "16", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "needle" in report["models"]["convert:gated_deltanet"]["recall"]
    assert len(report["needle_distances"]) == len(seqs) and min(report["needle_distances"]) >= 0
    with pytest.raises(SystemExit, match="no passkey trial"):
        horizon.passkey_sequences(tok, 600, 2, unwritten=590)
