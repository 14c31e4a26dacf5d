"""Turn run_potara.py results into RESULTS.md tables and one accuracy-vs-bytes plot (PNG).

    python benchmarks/potara/report.py /tmp/pv3/results.json /tmp/pt3/results.json --plot docs/potara_acc_bytes.png
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

ORDER = ("fedit", "fedit_ft", "ffa_lora", "fedsa_lora", "local_lora", "ditto", "apfl", "potara")


def _ms(values: list[float]) -> str:
    m = st.mean(values)
    s = st.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * s:.2f}"


def method_table(res: dict) -> str:
    """Per method: accuracy mean ± std over seeds, client std, bytes per client, CPU seconds."""
    rows = ["| method | accuracy (%) mean ± std over seeds | std over clients (%) | KB per client | CPU s/run |",
            "|---|---|---|---|---|"]
    for name in ORDER:
        runs = list(res["methods"].get(name, {}).values())
        if not runs:
            continue
        client_std = st.mean(st.pstdev(r["per_client"]) for r in runs)
        rows.append(f"| {name} | {_ms([r['accuracy'] for r in runs])} | {100 * client_std:.1f} | "
                    f"{runs[0]['bytes_per_client'] / 1e3:,.0f} | {st.mean(r['cpu_seconds'] for r in runs):.1f} |")
    return "\n".join(rows)


def potara_table(res: dict) -> str:
    """Potara's federated / local / merged / oracle accuracies and the beats-both fraction per seed."""
    rows = ["| seed | federated (λ=1) | local (λ=0) | Potara (closed form) | oracle λ (validation) | best fixed λ "
            "| clients beating both | clients ≥ both |", "|---|---|---|---|---|---|---|---|"]
    for seed, r in res["methods"]["potara"].items():
        accs = " | ".join(f"{100 * r[k]:.2f}" for k in ("acc_federated", "acc_local", "acc_merged", "acc_oracle",
                                                           "acc_best_fixed_lambda"))
        rows.append(f"| {seed} | {accs} | {100 * r['beats_both']:.0f}% | {100 * r['at_least_both']:.0f}% |")
    return "\n".join(rows)


def lambda_table(res: dict, seed: str = "0") -> str:
    """Closed-form lambda beside the oracle's, per client, for one seed."""
    r = res["methods"]["potara"][seed]
    lam = [x if isinstance(x, float) else sum(x) / len(x) for x in r["lambda"]]
    head = "| client | " + " | ".join(str(i) for i in range(len(lam))) + " |"
    sep = "|---" * (len(lam) + 1) + "|"
    return "\n".join([head, sep, "| closed form | " + " | ".join(f"{v:.2f}" for v in lam) + " |",
                      "| oracle | " + " | ".join(f"{v:.2f}" for v in r["oracle_lambda"]) + " |"])


def plot(results: list[tuple[str, dict]], path: str) -> None:
    """Accuracy (mean over seeds) against bytes per client, one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (title, res) in zip(axes[0], results, strict=True):
        for name in ORDER:
            runs = list(res["methods"].get(name, {}).values())
            if not runs:
                continue
            xs = [p["bytes_per_client"] / 1e6 for p in runs[0]["curve"]]
            ys = [100 * st.mean(r["curve"][i]["accuracy"] for r in runs) for i in range(len(xs))]
            style = dict(lw=2.5, color="black") if name == "potara" else dict(lw=1.2)
            ax.plot(xs, ys, marker="o", ms=3, label=name, **style)
        ax.set_xscale("symlog", linthresh=0.05)
        ax.set_xlabel("MB per client (down + up)")
        ax.set_ylabel("personalized accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    loaded = [(Path(p).parent.name, json.loads(Path(p).read_text())) for p in args.results]
    for title, res in loaded:
        print(f"## {title} ({res['config']} {' '.join(res['overrides'])})\n")
        print(method_table(res), "\n")
        if "potara" in res["methods"]:
            print(potara_table(res), "\n")
            print(lambda_table(res), "\n")
    if args.plot:
        plot(loaded, args.plot)


if __name__ == "__main__":
    main()
