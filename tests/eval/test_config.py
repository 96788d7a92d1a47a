"""liger eval's typed config: YAML < flags < key=value overrides, one check of every setting, flags named."""

import pytest

from liger.cli import build_parser
from liger.commands.eval import resolve_config
from liger.eval.config import EvalConfig, eval_config_reference, load_eval_config
from liger.typed_config import ConfigError


def test_precedence_yaml_flags_overrides(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("model: smollm2\nlimit: 10\npasskey: [512]\npasskey_trials: 30\nbatch_size: 4\n")
    args = build_parser().parse_args(["eval", "--config", str(config), "--limit", "20", "passkey_trials=40"])
    cfg = resolve_config(args)
    assert (cfg.model, cfg.limit, cfg.passkey, cfg.passkey_trials, cfg.batch_size) == ("smollm2", 20, [512], 40, 4)
    assert cfg.resolved_tasks is None  # a measure was asked for: no lm-eval suite by default
    assert load_eval_config(settings={"model": "m"}).resolved_tasks == "offline"


@pytest.mark.parametrize("settings,message", [
    ({}, "give exactly one of --model MODEL and --compare"),
    ({"model": "m", "compare": ["a", "b"]}, "give exactly one"),
    ({"model": "m", "limit": 0}, "--limit must be >= 1"),
    ({"model": "m", "passkey_trials": 0}, "--passkey-trials must be >= 1"),
    ({"model": "m", "ppl_stride": 600}, "1 <= --ppl-stride <= --ppl-context"),
    ({"model": "m", "repeat_recall": [256]}, "--repeat-recall needs --long-text FILE..."),
    ({"model": "m", "output_dir": "x"}, "--output-dir is for --compare"),
    ({"model": "m", "no_such_key": 1}, "unknown config key 'no_such_key'"),
])
def test_bad_settings_are_one_error_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        load_eval_config(settings=settings)


def test_reference_table_lists_every_key():
    table = eval_config_reference()
    for name in EvalConfig.__dataclass_fields__:
        assert f"`{name}`" in table


def test_docs_reference_is_in_sync():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    begin = docs.index("<!-- eval-config-reference")
    table = docs[docs.index("\n", begin) + 1:docs.index("<!-- /eval-config-reference -->")].strip()
    assert table == eval_config_reference().strip()
