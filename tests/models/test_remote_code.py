"""Saved Liger checkpoints load with plain transformers (trust_remote_code) in a process that cannot import liger."""

import json
import os
import subprocess
import sys

import torch

import liger
from tests.conftest import tiny_teacher

# run in a fresh interpreter: liger is made unimportable before anything else happens
CHILD = """
import sys
sys.modules["liger"] = None
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
try:
    import liger  # noqa: F401
    sys.exit("liger was importable")
except ImportError:
    pass
ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])
with torch.no_grad():
    torch.save({"logits": model(ids).logits, "generated": model.generate(ids, max_new_tokens=6, do_sample=False),
                "class": type(model).__module__ + "." + type(model).__name__}, sys.argv[2])
"""


def test_checkpoint_loads_without_liger(tmp_path):
    model = liger.convert(tiny_teacher("qwen3"), variant="gsa", window_size=4, num_sink_tokens=1).eval()
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_liger.LigerConfig",
                                  "AutoModelForCausalLM": "modeling_liger.LigerForCausalLM"}

    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "ckpt"), str(tmp_path / "out.pt")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    child = torch.load(tmp_path / "out.pt")
    # the class came from the code saved with the checkpoint, not from the liger package
    assert child["class"].startswith("transformers_modules.") and child["class"].endswith("LigerForCausalLM")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])
    with torch.no_grad():
        assert torch.equal(child["logits"], model(ids).logits)
        assert torch.equal(child["generated"], model.generate(ids, max_new_tokens=6, do_sample=False))


def test_saved_code_has_no_absolute_liger_imports(tmp_path):
    liger.convert(tiny_teacher("llama")).save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.py"))
    assert "modeling_liger.py" in files and "configuration_liger.py" in files and "fla_backend.py" in files
    assert "delta_rule.py" in files, files
    # the Triton kernels are imported only on CUDA, lazily: their files must be saved all the same
    for name in ("triton_window.py", "_triton_window_kernels.py", "triton_ops.py", "_triton_ops_kernels.py",
                 "triton_decode.py", "_triton_decode_kernels.py", "triton_layer.py", "_triton_layer_kernels.py",
                 "triton_common.py", "global_cache.py"):
        assert name in files, f"{name} is not saved with the checkpoint: {files}"
    for path in tmp_path.glob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.lstrip().startswith(("import liger", "from liger")), f"{path.name}: {line}"
