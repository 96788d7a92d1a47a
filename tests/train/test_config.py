"""Run config: YAML -> dataclasses, precedence, overrides, errors that name the key; shipped recipes."""

import pytest

from liger.train.config import RECIPES_DIR, ConfigError, TrainConfig, config_reference, load_config
from liger.train.data import held_out_records


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 8.0, 0.0,
                                                                                         ["q_proj", "k_proj", "v_proj"])
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.max_grad_norm, cfg.optim.weight_decay) == (
        1e-3, "constant", None, 0.01)
    assert (cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.epochs) == (8, 1, 2.0)
    assert (cfg.data.path, cfg.data.max_length, cfg.data.val_records) == ("yahma/alpaca-cleaned", 1024, None)
    assert held_out_records(51760, cfg.data.val_records) == 200  # unset = sized to the data: 200 for Alpaca


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 5.0e-4\n  warmup_steps: 3\ntrain:\n  batch_size: 4\n")
    cfg = load_config(str(path), ["train.batch_size=16", "lora.target_modules=[q_proj,o_proj]", "optim.lr=1e-4"],
                      settings={"train.batch_size": 2, "output": "x"})
    assert cfg.train.batch_size == 16  # key=value beats the flag, which beats the YAML
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.warmup_steps == 3  # from the YAML
    assert cfg.optim.eps == 1e-8  # default
    assert cfg.lora.target_modules == ["q_proj", "o_proj"]
    assert cfg.output == "x"


def test_nested_liger_options_and_null():
    cfg = load_config(None, ["model.liger.window_size=32", "model.liger.variant=gsa", "train.max_steps=null",
                             "optim.max_grad_norm=1"])
    assert cfg.model.liger == {"window_size": 32, "variant": "gsa"}
    assert cfg.train.max_steps is None and cfg.optim.max_grad_norm == 1.0


def test_exponent_numbers_are_floats_in_untyped_sections_too(tmp_path):
    # YAML 1.1 (PyYAML) would read 1e-1 as the string '1e-1'; model.liger has no types to coerce it
    cfg = load_config(None, ["model.liger.gate_normalizer=1e-1", "optim.lr=2e-3"])
    assert cfg.model.liger == {"gate_normalizer": 0.1} and cfg.optim.lr == 2e-3
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  liger: {linear_weight: 1e-1, variant: gla}\noptim: {lr: 5E-4}\n")
    cfg = load_config(str(recipe))
    assert cfg.model.liger == {"linear_weight": 0.1, "variant": "gla"} and cfg.optim.lr == 5e-4


@pytest.mark.parametrize("overrides,message", [
    (["train.bacth_size=4"], "unknown config key 'train.bacth_size'"),
    (["nope=1"], "unknown config key 'nope'"),
    (["train.batch_size=four"], "train.batch_size must be of type int"),
    (["train.batch_size=2.5"], "train.batch_size must be of type int"),
    (["train.loss=mse"], "train.loss must be one of ce, kl, ce+kl"),
    (["lora.target_modules=q_proj"], "lora.target_modules must be a list"),
    (["train.batch_size=6", "train.micro_batch_size=4"], "train.batch_size must be a multiple"),
    (["optim.lr=-1"], "optim.lr must be > 0"),
    (["train=3"], "train must be a mapping"),
    (["train.batch_size"], "not of the form key.sub=value"),
    (["lora.r.x=3"], "lora.r must be of type int"),
    (["lora.r=3", "lora.r.x=3"], "'lora.r' is not a config section"),
    (["train.transfer_steps=-1"], "train.transfer_steps must be >= 0"),
    (["train.transfer_steps=5", "train.gradient_checkpointing=true"],
     "train.transfer_steps cannot be combined with train.gradient_checkpointing"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_yaml_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))
    with pytest.raises(FileNotFoundError, match="shipped recipes: liger-memory, liger-paper, smollm2-cpu"):
        load_config("no-such-recipe")


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_parses(path):
    cfg = load_config(str(path))
    assert path.read_text().startswith("# liger ")  # first line: the exact command
    assert cfg.lora.r == 8 and cfg.optim.lr == 1e-3


def test_memory_recipe_config_trains_the_memory_recipe():
    from liger.recipes import RECIPES

    cfg = load_config("liger-memory")
    assert cfg.model.recipe == "memory" and cfg.model.options() == RECIPES["memory"]
    # as measured (docs/results-memory.md, run P): 4,096-token sequences, 2 a step, 20 M tokens
    assert cfg.data.max_length * cfg.train.batch_size * cfg.train.max_steps == 19_996_672


def test_model_recipe_is_overridden_by_liger_options_and_checked():
    from liger.recipes import RECIPES

    cfg = load_config(None, ["model.recipe=memory", "model.liger.window_size=256"])
    assert cfg.model.options() == {**RECIPES["memory"], "window_size": 256}
    assert load_config(None, ["model.liger.window_size=32"]).model.options() == {"window_size": 32}
    with pytest.raises(ConfigError, match="model.recipe must be one of paper, memory or null, got 'memroy'"):
        load_config(None, ["model.recipe=memroy"])


def test_paper_recipe_by_name_equals_the_defaults():
    expected = TrainConfig(output="runs/liger-paper")
    expected.model.liger = {"variant": "gla"}
    expected.data.format = "alpaca"
    assert load_config("liger-paper") == expected


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("smollm2-cpu", ["optim.betas=[0.8, 0.9]"])
    (tmp_path / "resolved.yaml").write_text(cfg.to_yaml())
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg


def test_config_reference_lists_every_key_with_its_doc():
    table = config_reference()
    for key in ("`model.liger`", "`data.max_length`", "`lora.target_modules`", "`optim.max_grad_norm`",
                "`train.loss`", "`output`"):
        assert key in table
    assert "paper v2 §4.1" in table


def test_docs_hold_the_current_config_reference():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    assert config_reference() in docs, "docs/training.md is out of date: paste liger.train.config.config_reference()"
