import torch

from tests.conftest import load_benchmark


def test_probe_reports_where_the_key_sits_in_each_layers_cache(tiny_base, capsys):
    probe = load_benchmark("cache_probe")
    assert probe.main(["--model", str(tiny_base), "--length", "400", "--depth", "0.5", "--spec", "swa:8:2:16",
                       "--key", "48108"]) == 0
    out = capsys.readouterr().out
    assert "top next tokens" in out and "key tokens at [" in out
    layers = [line for line in out.splitlines() if line.startswith("layer")]
    assert len(layers) == 2 and all("held per KV head" in line for line in layers)  # the tiny teacher's 2 layers


def test_relative_score_and_the_trials_mode(tiny_base, capsys):
    from liger.models import attention

    probe = load_benchmark("cache_probe")
    plain = attention.recall_error
    v = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(probe.relative_error(v, torch.zeros(1, 2)), torch.tensor([1.0]))
    assert probe.main(["--model", str(tiny_base), "--length", "400", "--trials", "2", "--score", "relative",
                       "--spec", "swa:8:2:16"]) == 0
    assert "score=relative 400: " in capsys.readouterr().out
    assert attention.recall_error is plain  # the experiment's score does not outlive the call


def test_bad_input_is_one_line_and_a_non_zero_exit(tiny_base, capsys):
    probe = load_benchmark("cache_probe")
    assert probe.main(["--model", str(tiny_base), "--length", "50", "--spec", "swa:8:2:16"]) == 2
    assert probe.main(["--model", str(tiny_base), "--spec", "swa:x"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "cache_probe" in line or "Error" in line]
    assert len(errors) == 2 and all(line.startswith("cache_probe: error: ") for line in errors), errors


def test_pooled_score_keeps_a_salient_tokens_neighbours(tiny_base, capsys):
    from liger.models import attention

    probe = load_benchmark("cache_probe")
    plain = attention.recall_error
    score = probe.pooled_error(1)
    # errors of one sequence, 5 tokens, 2 heads: head 0 has one salient token (t=2), head 1 two (t=0, t=4)
    read = torch.zeros(1, 5, 2, 1)
    v = torch.tensor([[1.0, 9.0], [1.0, 1.0], [7.0, 1.0], [1.0, 1.0], [1.0, 5.0]]).view(1, 5, 2, 1)
    assert torch.equal(score(v, read)[0].T, torch.tensor([[1.0, 7.0, 7.0, 7.0, 1.0], [9.0, 9.0, 1.0, 5.0, 5.0]]))
    one = v[:, :1]  # a decode step's single token keeps its own score
    assert torch.equal(score(one, read[:, :1]), plain(one, read[:, :1]))
    assert torch.equal(probe.pooled_error(0)(v, read), plain(v, read))
    back, forward = probe.pooled_error(1, direction="back"), probe.pooled_error(1, direction="forward")
    assert torch.equal(back(v, read)[0].T, torch.tensor([[1.0, 1.0, 7.0, 7.0, 1.0], [9.0, 9.0, 1.0, 1.0, 5.0]]))
    assert torch.equal(forward(v, read)[0].T, torch.tensor([[1.0, 7.0, 7.0, 1.0, 1.0], [9.0, 1.0, 1.0, 5.0, 5.0]]))
    assert probe.main(["--model", str(tiny_base), "--length", "400", "--trials", "2", "--score", "pooled",
                       "--pool", "2", "--spec", "swa:8:2:16"]) == 0
    assert "score=pooled pool=2 both 400: " in capsys.readouterr().out
    assert attention.recall_error is plain
