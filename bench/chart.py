"""PNG charts for docs/: proxy throughput and latency against the floor, and RSS over a soak."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.load import Result


def overhead(results: dict[str, Result], path: Path) -> None:
    """Three panels per target: req/s at 64 connections / floor, added p50 at 1 connection, peak RSS."""
    floor, nginx = results["floor"], results["nginx"]
    names = [n for n in results if n != "nginx"]
    ratio = [results[n]["c64"]["rps"] / floor["c64"]["rps"] for n in names]
    added = [max(results[n]["c1"]["p50"] - nginx["c1"]["p50"], 0.001) for n in names]
    rss = [results[n].get("rss_load") or 0.0 for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.5 * len(names) + 1.8), sharey=True)
    colours = ["#888888" if n == "floor" else "#3b6ea5" for n in names]
    axes[0].barh(names, ratio, color=colours)
    axes[0].axvline(1.0, color="black", linewidth=0.8)
    axes[0].axvline(0.5, color="#c0392b", linestyle="--", linewidth=0.8, label="target 0.5 (no plugins)")
    axes[0].set_xlabel("req/s at 64 connections, ratio to the floor")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].barh(names, added, color=colours)
    axes[1].set_xscale("log")
    axes[1].axvline(1.0, color="#c0392b", linestyle="--", linewidth=0.8)
    axes[1].set_xlabel("added p50 at 1 connection over nginx, ms (log)")
    axes[2].barh(names, rss, color=colours)
    axes[2].set_xlabel("peak RSS under load, MiB (all workers)")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle("Gateway vs the bare aiohttp floor, same run (make bench)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def soak(samples: list[tuple[float, float]], warmup_s: float, path: Path, title: str) -> None:
    """RSS (MiB) over time, the warm-up shaded."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot([t / 60 for t, _ in samples], [m for _, m in samples], color="#3b6ea5", linewidth=1.2)
    ax.axvspan(0, warmup_s / 60, color="#dddddd", label="warm-up")
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("gateway RSS, MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
