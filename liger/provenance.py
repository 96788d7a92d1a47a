"""Where a result came from: versions, device, git commit and command line, recorded with every result that
``liger finetune`` / ``linearize`` (environment.json), ``liger eval`` (its reports) and ``liger bench`` (its
JSON) write."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

import torch

DISTRIBUTIONS = ("transformers", "triton", "flash-linear-attention", "fla-core", "peft", "lm-eval", "liger-linearize")
"""Installed distributions whose versions are recorded (None when not installed)."""


def provenance(device: str | torch.device, **settings) -> dict:
    """Versions, device, git commit and command line, plus ``settings`` (e.g. the seed and limits of a run)."""
    device = torch.device(device)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "command": " ".join(sys.argv)}
    for dist in DISTRIBUTIONS:
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    from . import __version__

    info["liger"] = __version__
    info["torch_threads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["sdp_backends"] = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                                for name in ("flash", "mem_efficient", "math", "cudnn")
                                if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")}
    else:
        info["device_name"] = platform.processor() or "cpu"
    info.update(git_state())
    info.update(settings)
    return info


def git_state() -> dict:
    """``{"git_commit", "git_dirty"}`` of the checkout liger runs from ("unknown"/None outside a git checkout), or
    the commit named by the environment variable ``LIGER_GIT_COMMIT`` (``git_dirty`` None): for a copy of a working
    tree whose own ``.git`` is missing or stale, as on the lent GPU machines (benchmarks/lease.sh sets it)."""
    if os.environ.get("LIGER_GIT_COMMIT"):
        return dict(git_commit=os.environ["LIGER_GIT_COMMIT"], git_dirty=None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return dict(git_commit=commit.stdout.strip() or "unknown",
                    git_dirty=bool(dirty.stdout.strip()) if commit.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return dict(git_commit="unknown", git_dirty=None)
