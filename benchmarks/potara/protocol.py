"""The frozen-protocol report: paired per-client bootstrap CIs, Spearman against the NLL oracle, tables.

Reads run_potara.py results (one results.json per setting) and prints markdown for RESULTS.md: per
Potara variant, mean accuracy of every endpoint and baseline, the paired per-client bootstrap 95% CI
of Potara minus each (clients resampled within each seed), the Spearman correlation of the closed-form
lambda with the validation-NLL-oracle lambda, and the per-client table of one seed.

    python benchmarks/potara/protocol.py /tmp/held/a0.1_k16/results.json --seeds 3,4,5,6,7 --method potara_data
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

import numpy as np

ENDPOINTS = (("federated (λ=1)", "pc_federated"), ("local (λ=0)", "pc_local"), ("uniform λ=0.5", "pc_uniform"),
             ("acc. oracle (val)", "pc_acc_oracle"), ("NLL oracle (val)", "pc_nll_oracle"))
BASELINES = ("fedit", "fedit_ft", "ditto", "local_lora")


def scalar(v) -> float:
    """A client's lambda as one number (the mean over layers for per-layer lambdas)."""
    return float(np.mean(v)) if isinstance(v, list) else float(v)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation with average ranks for ties (nan when either side is constant)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for x in np.unique(v):
            r[v == x] = r[v == x].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def paired_ci(diffs: list[np.ndarray], reps: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-client differences over seeds, and its 95% bootstrap CI (clients resampled per seed)."""
    rng = np.random.default_rng(seed)
    mean = float(np.mean([d.mean() for d in diffs]))
    boots = np.zeros(reps)
    for d in diffs:
        boots += d[rng.integers(0, len(d), size=(reps, len(d)))].mean(1)
    boots /= len(diffs)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return mean, float(lo), float(hi)


def comparisons(res: dict, method: str, seeds: list[str]) -> list[tuple[str, float, tuple]]:
    """(name, mean accuracy, (mean diff, lo, hi) of Potara minus it) for every endpoint and baseline."""
    runs = res["methods"][method]
    merged = {s: np.asarray(runs[s]["pc_merged"]) for s in seeds}
    rows = [("Potara (closed form)", float(np.mean([merged[s].mean() for s in seeds])), None)]
    others = [(label, {s: np.asarray(runs[s][key]) for s in seeds}) for label, key in ENDPOINTS]
    others += [(f"{b} ({'R_f rounds' if b in res.get('matched', []) else 'all rounds'})",
                {s: np.asarray(res["methods"][b][s]["per_client"]) for s in seeds})
               for b in BASELINES if b in res["methods"]]
    for label, pc in others:
        rows.append((label, float(np.mean([pc[s].mean() for s in seeds])),
                     paired_ci([merged[s] - pc[s] for s in seeds])))
    return rows


def summary(res: dict, method: str, seeds: list[str]) -> dict:
    """Spearman(lambda, NLL-oracle lambda) per seed, mean lambda, and the cost of lambda."""
    runs = [res["methods"][method][s] for s in seeds]
    lams = [[scalar(v) for v in r["lambda"]] for r in runs]
    rho = [spearman(lam, r["nll_oracle_lambda"]) for lam, r in zip(lams, runs, strict=True)]
    pooled = spearman(sum(lams, []), sum((r["nll_oracle_lambda"] for r in runs), []))
    out = {}
    if all("test_nll_grid" in r for r in runs):  # noise ceiling: how well the test-NLL oracle is ranked
        grid = np.asarray(runs[0]["grid"])
        test_or = [list(grid[np.asarray(r["test_nll_grid"]).argmin(1)]) for r in runs]
        out["val_vs_test_oracle"] = float(np.nanmean([spearman(r["nll_oracle_lambda"], t)
                                                      for r, t in zip(runs, test_or, strict=True)]))
        out["lambda_vs_test_oracle"] = float(np.nanmean([spearman(lam, t) for lam, t in zip(lams, test_or,
                                                                                         strict=True)]))
    return {**out, "spearman_per_seed": rho, "spearman_pooled": pooled, "mean_lambda": st.mean(
        v for lam in lams for v in lam), "cpu": st.mean(r["cpu_seconds"] for r in runs),
        "diag_cpu": st.mean(r["diagnostics_cpu_seconds"] for r in runs),
        "kb": runs[0]["bytes_per_client"] / 1e3}


def table(res: dict, method: str, seeds: list[str]) -> str:
    """Markdown: accuracy and Potara-minus-it paired CI for every comparison, then the summary line."""
    out = ["| model | accuracy (%) | Potara − it (points) [95% CI] |", "|---|---|---|"]
    for label, acc, ci in comparisons(res, method, seeds):
        cell = "—" if ci is None else f"{100 * ci[0]:+.2f} [{100 * ci[1]:+.2f}, {100 * ci[2]:+.2f}]"
        out.append(f"| {label} | {100 * acc:.2f} | {cell} |")
    s = summary(res, method, seeds)
    rho = ", ".join("nan" if np.isnan(r) else f"{r:.2f}" for r in s["spearman_per_seed"])
    out.append("")
    out.append(f"Spearman(λ, NLL-oracle λ) per seed: {rho}; pooled {s['spearman_pooled']:.2f}. Mean λ "
               f"{s['mean_lambda']:.2f}. CPU s/run {s['cpu']:.1f} (diagnostics and grids {s['diag_cpu']:.1f}); "
               f"{s['kb']:,.0f} KB/client.")
    if "val_vs_test_oracle" in s:
        out.append(f"Noise ceiling (diagnostic only, test rows never chose anything): Spearman(validation-NLL "
                   f"oracle λ, test-NLL oracle λ) {s['val_vs_test_oracle']:.2f}; Spearman(λ, test-NLL oracle λ) "
                   f"{s['lambda_vs_test_oracle']:.2f} (means over seeds).")
    return "\n".join(out)


SUMMARY_HEADER = ("| setting | Potara variant | accuracy | − federated | − local | − uniform 0.5 | − NLL oracle "
                  "| Spearman(λ, NLL-oracle λ) | mean λ |\n|---|---|---|---|---|---|---|---|---|")


def summary_row(setting: str, res: dict, method: str, seeds: list[str]) -> str:
    """One markdown row: accuracy and the paired CIs against the endpoints and the NLL oracle."""
    rows = {r[0]: r for r in comparisons(res, method, seeds)}
    ci = lambda key: "{:+.2f} [{:+.2f}, {:+.2f}]".format(*(100 * v for v in rows[key][2]))  # noqa: E731
    s = summary(res, method, seeds)
    return (f"| {setting} | {method} | {100 * rows['Potara (closed form)'][1]:.2f} | {ci('federated (λ=1)')} | "
            f"{ci('local (λ=0)')} | {ci('uniform λ=0.5')} | {ci('NLL oracle (val)')} | "
            f"{s['spearman_pooled']:.2f} | {s['mean_lambda']:.2f} |")


def per_client(res: dict, method: str, seed: str, diag: dict) -> str:
    """Markdown per-client table of one seed: endpoints, merged, lambda and both oracle lambdas."""
    r = res["methods"][method][seed]
    rows = ["| client | federated | local | Potara | λ | NLL-oracle λ | acc-oracle λ | a | b | d² | bias |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in range(len(r["pc_merged"])):
        extra = " | ".join(f"{scalar(diag[t][k]):.3g}" for t in ("a", "b", "d2", "bias"))
        rows.append(f"| {k} | {100 * r['pc_federated'][k]:.0f} | {100 * r['pc_local'][k]:.0f} | "
                    f"{100 * r['pc_merged'][k]:.0f} | {scalar(r['lambda'][k]):.2f} | {r['nll_oracle_lambda'][k]:.2f} | "
                    f"{r['oracle_lambda'][k]:.2f} | {extra} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--method", action="append", required=True)
    ap.add_argument("--per-client-seed", default=None)
    ap.add_argument("--summary", action="store_true", help="one row per (results file, method)")
    args = ap.parse_args()
    seeds = args.seeds.split(",")
    if args.summary:
        print(SUMMARY_HEADER)
        for path in args.results:
            res = json.loads(Path(path).read_text())
            for method in args.method:
                print(summary_row(Path(path).parent.name, res, method, seeds))
        return
    for path in args.results:
        res = json.loads(Path(path).read_text())
        for method in args.method:
            print(f"\n#### {path} — {method} (seeds {args.seeds})\n")
            print(table(res, method, seeds))
            if args.per_client_seed:
                print()
                diag_file = Path(path).parent / "diagnostics" / f"{method}_seed{args.per_client_seed}.json"
                diag = json.loads(diag_file.read_text())
                print(per_client(res, method, args.per_client_seed, diag))


if __name__ == "__main__":
    main()
