"""The report's figures (matplotlib, Agg backend): score against round and against MB per client, the
distribution of per-client final scores, per-cluster means, and routed methods' router heatmaps."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import ConfigError
from ..files import atomic_write_bytes
from .report_data import Method, mean_band

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class _Pyplot:
    """matplotlib.pyplot on the Agg backend, imported on first use (``bouquet run`` does not need it)."""

    def __getattr__(self, name: str) -> Any:
        try:
            import matplotlib
        except ImportError:
            raise ConfigError("report: needs matplotlib; install it with: pip install 'bouquet[plot]'") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot

        return getattr(matplotlib.pyplot, name)


plt = _Pyplot()


@dataclass
class FigureFile:
    """A figure written as ``<stem>.png`` and ``<stem>.svg``, with its caption and PNG bytes."""

    stem: str
    title: str
    caption: str
    png: bytes


def _label(metric: str) -> str:
    return "accuracy (%)" if metric == "accuracy" else metric


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _by_metric(ms: list[Method]) -> dict[str, list[Method]]:
    out: dict[str, list[Method]] = {}
    for m in ms:
        out.setdefault(m.metric, []).append(m)
    return out


def _curve(ms: list[Method], metric: str, x_mb: bool) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    k = _scale(metric)
    for m in ms:
        rounds, mbs, means, stds = mean_band(m.curves)
        if not rounds:
            continue
        x = mbs if x_mb else rounds
        lo = [k * (a - b) for a, b in zip(means, stds, strict=True)]
        hi = [k * (a + b) for a, b in zip(means, stds, strict=True)]
        (line,) = ax.plot(x, [k * v for v in means], marker="o", markersize=3, label=m.label)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("cumulative MB per client (up + down)" if x_mb else "round")
    ax.set_ylabel(_label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _ari(ms: list[Method]) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in ms:
        rounds, _, means, stds = mean_band(m.ari)
        (line,) = ax.plot(rounds, means, marker="o", markersize=3, label=m.label)
        ax.fill_between(rounds, [a - b for a, b in zip(means, stds, strict=True)],
                        [a + b for a, b in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2,
                        linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel("router ARI")
    ax.set_ylim(-0.1, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _per_client(ms: list[Method], metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(ms) + 2), 4.2))
    k = _scale(metric)
    data = [[k * v for seed in sorted(m.final_clients) for v in m.final_clients[seed]] for m in ms]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(ms) + 1), [m.label for m in ms], rotation=20, ha="right")
    ax.set_ylabel(f"final {_label(metric)} per client")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _per_cluster(ms: list[Method], metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(ms) + 2), 4.2))
    k = _scale(metric)
    clusters = sorted({c for m in ms for s in m.result.get("per_seed", []) for c in s["last"]["per_cluster"]}, key=int)
    width = 0.8 / max(len(clusters), 1)
    for j, c in enumerate(clusters):
        heights = []
        for m in ms:
            vals = [s["last"]["per_cluster"][c] for s in m.result.get("per_seed", []) if c in s["last"]["per_cluster"]]
            heights.append(k * sum(vals) / len(vals) if vals else 0.0)
        ax.bar([i + (j - (len(clusters) - 1) / 2) * width for i in range(len(ms))], heights, width,
               label=f"cluster {c}")
    ax.set_xticks(range(len(ms)), [m.label for m in ms], rotation=20, ha="right")
    ax.set_ylabel(f"final {_label(metric)}, mean over seeds")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _router(m: Method) -> Figure:
    seeds = sorted(m.router)[:4]
    n_clusters = m.num_clusters
    n_choices = max(n_clusters, max(max(m.router[s]) for s in seeds) + 1)
    fig, axes = plt.subplots(1, len(seeds), figsize=(2.2 + 1.6 * len(seeds) * max(n_choices, 2) / 2, 4.6),
                             squeeze=False)
    for ax, seed in zip(axes[0], seeds, strict=True):
        choice = m.router[seed]
        order = sorted(range(len(choice)), key=lambda i: (i % n_clusters, i))
        grid = [[1.0 if choice[i] == c else 0.0 for c in range(n_choices)] for i in order]
        ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        bounds = [j for j in range(1, len(order)) if order[j] % n_clusters != order[j - 1] % n_clusters]
        for b in bounds:
            ax.axhline(b - 0.5, color="crimson", linewidth=1)
        ax.set_xticks(range(n_choices))
        if len(order) <= 40:
            ax.set_yticks(range(len(order)), [str(i) for i in order], fontsize="x-small")
        ax.set_xlabel("adaptor (router's choice)")
        ax.set_title(f"seed {seed}", fontsize="small")
    axes[0][0].set_ylabel(f"clients sorted by true cluster (k mod {n_clusters})")
    fig.suptitle(m.label, fontsize="medium")
    fig.tight_layout()
    return fig


def _save(fig: Figure, out: Path, stem: str) -> bytes:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    fig.savefig(svg, format="svg", metadata={"Date": None})
    plt.close(fig)
    atomic_write_bytes(out / f"{stem}.png", png.getvalue())
    atomic_write_bytes(out / f"{stem}.svg", svg.getvalue())
    return png.getvalue()


def write_figures(ms: list[Method], out: str | Path) -> list[FigureFile]:
    """Write every figure of the report under ``out`` as PNG and SVG; return them in report order."""
    out = Path(out)
    files: list[FigureFile] = []

    def add(stem: str, title: str, caption: str, fig: Figure) -> None:
        files.append(FigureFile(stem, title, caption, _save(fig, out, stem)))

    for metric, group in _by_metric(ms).items():
        name = _label(metric)
        with_curves = [m for m in group if m.curves]
        if with_curves:
            add(f"{metric}_vs_round", f"Personalized {name} against round",
                "Mean over all clients' personalized models; line: mean over seeds, band: ± one std over seeds.",
                _curve(with_curves, metric, False))
            add(f"{metric}_vs_mb", f"Personalized {name} against communication",
                "x: cumulative bytes sent and received by all clients divided by the number of clients, in MB; "
                "band: ± one std over seeds.", _curve(with_curves, metric, True))
        with_clients = [m for m in group if m.final_clients]
        if with_clients:
            add(f"{metric}_per_client", f"Final {name} per client",
                "Distribution of every client's score at the last evaluation (all seeds pooled); triangle: mean.",
                _per_client(with_clients, metric))
        with_clusters = [m for m in group if any(s["last"]["per_cluster"] for s in m.result.get("per_seed", []))]
        if with_clusters:
            add(f"{metric}_per_cluster", f"Final {name} per true cluster",
                "Example-weighted mean over each true cluster's clients, mean over seeds.",
                _per_cluster(with_clusters, metric))
    with_ari = [m for m in ms if m.ari]
    if with_ari:
        add("router_ari_vs_round", "Router ARI against round",
            "Adjusted Rand index of each client's argmax adaptor against the true clusters, at every evaluation; "
            "line: mean over seeds, band: ± one std over seeds.", _ari(with_ari))
    for i, m in enumerate(x for x in ms if x.router):
        safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in m.label)
        add(f"router_{i}_{safe}", f"Router choices of {m.label}",
            "Each client's argmax adaptor at the end of training; rows: clients sorted by true cluster "
            "(red lines separate clusters).", _router(m))
    return files
