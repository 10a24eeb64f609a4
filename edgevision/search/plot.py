"""Pareto plot of a search: accuracy against latency, the front, the target and reference points."""

from __future__ import annotations

from pathlib import Path

from edgevision.io import save_figure
from edgevision.search.evolution import pareto_front


def plot_pareto(records: list[dict], path: str | Path, target_ms: float | None = None, best: dict | None = None,
                references: dict | None = None, title: str = "", xlabel: str = "latency (ms)") -> Path:
    """records: dicts with latency_ms and acc (None = not trained, skipped); references:
    ``{label: (latency_ms, acc)}`` drawn as labelled squares (baselines)."""
    from edgevision.training.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pts = [r for r in records if r.get("acc") is not None]
    if pts:
        ax.scatter([r["latency_ms"] for r in pts], [100 * r["acc"] for r in pts], s=14, alpha=0.5,
                   color="tab:blue", label="candidates")
        front = pareto_front(pts)
        ax.plot([r["latency_ms"] for r in front], [100 * r["acc"] for r in front], "-", color="tab:blue",
                lw=1.2, label="Pareto front")
    if target_ms:
        ax.axvline(target_ms, color="gray", ls="--", lw=1, label=f"target {target_ms:.3g} ms")
    if best is not None:
        ax.scatter([best["latency_ms"]], [100 * best["acc"]], marker="*", s=160, color="tab:red", zorder=5,
                   label="chosen")
    for label, (lat, acc) in (references or {}).items():
        ax.scatter([lat], [100 * acc], marker="s", s=40, color="black", zorder=5)
        ax.annotate(label, (lat, 100 * acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
