"""benchmarks/lease.sh's salvage of a lost lease: `wait` brings back each running student's newest checkpoint as
runs/STUDENT/resume/ beside the runs folder, `salvage` packs those for the next lease's `start` (bash, no GPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="bash and tar")


def lease(*args, env=None):
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "lease.sh"), *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=60)


def test_wait_brings_back_the_running_students_newest_checkpoint_and_salvage_packs_it(tmp_path):
    root = tmp_path / "lease"
    (root / "out").mkdir(parents=True)
    (root / "out" / "done").touch()  # (wait returns at once)
    (root / "runs" / "gla@20M" / "logs").mkdir(parents=True)
    (root / "runs" / "gla@20M" / "logs" / "x.log").write_text("log\n")
    running = root / "scratch" / "runs" / "ab12cd34" / "gla-global@20M"
    for step in ("step-000244", "step-000488"):
        (running / "checkpoints" / step / "adapter").mkdir(parents=True)
        (running / "checkpoints" / step / "state.pt").write_text(step)
    (running / "checkpoints" / ".tmp-step-000732").mkdir()  # a checkpoint being written: not complete
    (running / "config.yaml").write_text("output: x\n")
    (running / "metrics.jsonl").write_text("{}\n")
    (root / "scratch" / "runs" / "ab12cd34" / "gla-global@20M.lock").touch()
    out = tmp_path / "files"
    out.mkdir()
    result = lease("wait", "0", env=dict(LEASE=str(root), OUT=str(out)))
    assert result.returncode == 0, result.stderr
    parts = sorted(out.glob("runs.tar.gz.part-*"))
    assert parts
    with open(tmp_path / "now.tar.gz", "wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    with tarfile.open(tmp_path / "now.tar.gz") as tar:
        names = set(tar.getnames())
    kept = "runs/gla-global@20M/resume"
    assert {f"{kept}/config.yaml", f"{kept}/metrics.jsonl", f"{kept}/checkpoints/step-000488/state.pt",
            "runs/gla@20M/logs/x.log"} <= names, names
    assert not any("step-000244" in n or ".tmp-" in n or n.endswith(".lock") or n.startswith("scratch")
                   for n in names), names

    dest = tmp_path / "part-d"
    result = lease("salvage", str(out), str(dest))
    assert result.returncode == 0, result.stderr
    assert "step-000488" in result.stdout
    with tarfile.open(dest / "resume.tar.gz") as tar:
        assert {n for n in tar.getnames() if n.endswith("state.pt")} == {f"{kept}/checkpoints/step-000488/state.pt"}

    # nothing kept: one line and a non-zero exit
    empty = tmp_path / "empty"
    empty.mkdir()
    (root / "runs").rename(tmp_path / "runs-away")
    shutil.rmtree(root / "scratch")
    (root / "runs").mkdir()
    assert lease("wait", "0", env=dict(LEASE=str(root), OUT=str(empty))).returncode == 0
    result = lease("salvage", str(empty), str(tmp_path / "part-d2"))
    assert result.returncode == 2 and "no kept checkpoint" in result.stderr
