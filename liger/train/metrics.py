"""A run's metrics: ``OUTPUT/metrics.jsonl`` (one JSON object per optimizer step and per validation), the loss
curve drawn from it, and the process's peak memory."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the entries written after checkpoint ``step`` by an interrupted run."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class MetricsLog:
    """Appends entries to ``metrics.jsonl`` on the main process (other processes write nothing)."""

    def __init__(self, path: Path, main: bool):
        self.file = open(path, "a") if main else None

    def write(self, entry: dict) -> None:
        if self.file:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, png: Path) -> None:
    """Training loss per step and validation loss (Liger and, as a line, the teacher) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_metrics(metrics_path)
    train = [e for e in entries if e["type"] == "train" and e.get("objective") != "transfer"]
    transfer = [e for e in entries if e["type"] == "train" and e.get("objective") == "transfer"]
    val = [e for e in entries if e["type"] == "val" and "model" not in e]
    teacher = [e for e in entries if e["type"] == "val" and e.get("model") == "teacher"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([e["step"] for e in train], [e["loss"] for e in train], lw=1, alpha=0.8, label="train loss")
    ax.plot([e["step"] for e in val], [e["val_loss"] for e in val], "o-", label="validation loss (Liger)")
    if teacher:
        ax.axhline(teacher[0]["val_loss"], ls="--", color="gray", label="validation loss (teacher)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if transfer:  # the attention-transfer steps' MSE has its own scale
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in transfer], [e["loss"] for e in transfer], lw=1, color="tab:red", alpha=0.8,
                 label="attention-transfer MSE")
        ax2.set_ylabel("attention-transfer MSE")
        ax2.set_yscale("log")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
