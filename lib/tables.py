"""The paper's published tables, our results in the same shape, the comparison and the claim checks.

Columns (accuracy %): Natural | L-inf 1/255 | L-inf 2/255 | L2 16/255 | L2 32/255, named
``natural, linf_1, linf_2, l2_16, l2_32`` as in run metrics.
"""
from __future__ import annotations

import math

COLUMNS = ["natural", "linf_1", "linf_2", "l2_16", "l2_32"]
COLUMN_LABELS = {"natural": "Natural", "linf_1": "Linf 1/255", "linf_2": "Linf 2/255", "l2_16": "L2 16/255",
                 "l2_32": "L2 32/255"}
ROBUST = COLUMNS[1:]

# Published numbers (Wei, Zhu, Zhang 2023): Table 2 (CIFAR-10) and Table 1 (CIFAR-100).
# The three SAM rows' rho values were lost from the source text: rho_1 < rho_2 < rho_3.
_ROWS = ["ST", "SAM rho_1", "SAM rho_2", "SAM rho_3", "AT L-inf 1/255", "AT L-inf 2/255", "AT L-inf 4/255",
         "AT L-inf 8/255", "AT L2 16/255", "AT L2 32/255", "AT L2 64/255", "AT L2 128/255"]
PAPER = {
    "cifar10": dict(zip(_ROWS, [
        (94.6, 39.6, 8.9, 76.1, 51.7), (95.6, 45.1, 9.4, 81.0, 56.3), (95.5, 48.9, 10.2, 82.9, 58.8),
        (94.7, 56.1, 15.6, 84.0, 64.4), (93.7, 86.4, 75.5, 90.5, 86.4), (92.8, 87.4, 79.6, 90.3, 86.9),
        (90.9, 86.4, 81.3, 88.3, 85.7), (84.2, 81.5, 78.4, 82.5, 80.8), (94.5, 82.2, 61.7, 90.3, 84.5),
        (93.7, 84.9, 70.9, 91.0, 86.7), (92.7, 85.6, 75.2, 90.7, 87.5), (90.2, 85.7, 78.4, 89.6, 87.1)])),
    "cifar100": dict(zip(_ROWS, [
        (76.9, 13.6, 1.7, 44.5, 21.2), (78.0, 19.6, 3.0, 51.5, 27.2), (78.5, 23.1, 4.2, 54.2, 31.3),
        (78.7, 28.3, 6.5, 57.0, 36.2), (73.1, 60.4, 46.6, 67.4, 61.5), (70.1, 60.3, 50.6, 65.7, 60.6),
        (66.2, 59.3, 52.0, 62.8, 58.9), (60.4, 55.1, 50.4, 57.0, 54.3), (74.8, 52.8, 31.4, 66.3, 57.7),
        (73.2, 57.4, 40.6, 67.1, 61.0), (70.7, 58.1, 45.9, 66.1, 60.7), (67.4, 58.2, 48.7, 63.9, 60.4)])),
}
PAPER_TABLE_NAME = {"cifar10": "Table 2", "cifar100": "Table 1"}


def paper_frame(dataset: str = "cifar10"):
    import pandas as pd
    df = pd.DataFrame.from_dict(PAPER[dataset], orient="index", columns=COLUMNS)
    df.index.name = "method"
    return df


def results_frame(results):
    """One row per finished run (a :class:`lib.runs.RunResult` or its metrics dict)."""
    import pandas as pd
    rows = []
    for r in results:
        m = r.metrics if hasattr(r, "metrics") else r
        c = r.config if hasattr(r, "config") else None
        row = {"label": m["label"], "method": m["method"], "seed": m["seed"], "profile": m["profile"],
               "dataset": m["dataset"], **{k: m[k] for k in COLUMNS},
               "train_seconds": m.get("train_seconds"), "passes_per_step": m.get("passes_per_step"),
               "images_per_second": m.get("images_per_second")}
        if c is not None:
            row.update(rho=c.rho, norm=c.norm if c.spec.adversarial else "", eps=c.eps * 255)
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(df):
    """Mean and standard deviation over seeds for each label (in the order of first appearance)."""
    order = list(dict.fromkeys(df["label"]))
    g = df.groupby("label", sort=False)
    mean = g[COLUMNS].mean().loc[order]
    std = g[COLUMNS].std(ddof=1).loc[order].fillna(0.0)
    n = g.size().loc[order]
    return mean, std, n


def paper_row_for(label: str, sam_labels: list) -> str | None:
    """The paper row an ours-row is compared with (SAM rows matched in order of increasing rho)."""
    if label == "ST":
        return "ST"
    if label.startswith("AT "):
        return label
    if label in sam_labels:
        i = sam_labels.index(label)
        return f"SAM rho_{i + 1}" if i < 3 else None
    return None


def comparison_table(df, dataset: str = "cifar10", sam_match=(0.05, 0.1, 0.2)):
    """Ours (mean over seeds, '± std' when several) beside the paper and the difference, per cell.

    ``sam_match``: our rho values compared with the paper's rho_1, rho_2, rho_3 (their values are lost).
    Returns a DataFrame with a (column, ours|paper|diff) MultiIndex on the columns.
    """
    import pandas as pd
    mean, std, n = aggregate(df)
    sam_labels = [f"SAM rho={r:g}" for r in sam_match]
    paper = PAPER[dataset]
    out = {}
    for label in mean.index:
        prow = paper_row_for(label, sam_labels)
        if prow is not None and label.startswith("SAM"):
            shown = f"{label} (paper {prow})"
        else:
            shown = label
        cells = {}
        for j, col in enumerate(COLUMNS):
            ours = float(mean.loc[label, col])
            cells[(COLUMN_LABELS[col], "ours")] = ours
            cells[(COLUMN_LABELS[col], "±")] = float(std.loc[label, col]) if n.loc[label] > 1 else math.nan
            pv = paper[prow][j] if prow in paper else math.nan
            cells[(COLUMN_LABELS[col], "paper")] = pv
            cells[(COLUMN_LABELS[col], "diff")] = ours - pv if not math.isnan(pv) else math.nan
        out[shown] = cells
    table = pd.DataFrame.from_dict(out, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "method"
    return table


def flat_comparison(table):
    """The comparison table with one level of column names ('Natural ours', ...) for CSV/Markdown/LaTeX."""
    flat = table.copy()
    flat.columns = [f"{a} {b}" for a, b in table.columns]
    return flat.dropna(axis=1, how="all")


def check_claims(df, rhos=None) -> list[dict]:
    """Each claim of the paper, checked on these results: [{'claim', 'holds', 'evidence'}].

    ``holds`` is True/False, or None where the runs needed for the check are missing.
    """
    mean, _, _ = aggregate(df)
    labels = list(mean.index)
    st = mean.loc["ST"] if "ST" in labels else None
    sam = [l for l in labels if l.startswith("SAM rho=")]
    sam = sorted(sam, key=lambda l: float(l.split("=")[1]))
    at = [l for l in labels if l.startswith("AT ")]
    out = []

    def add(claim, holds, evidence):
        out.append({"claim": claim, "holds": holds, "evidence": evidence})

    if st is None or not sam:
        add("SAM clean accuracy >= ST clean accuracy", None, "needs ST and SAM runs")
    else:
        worse = [l for l in sam if mean.loc[l, "natural"] < st["natural"]]
        add("SAM clean accuracy >= ST clean accuracy", not worse,
            f"ST {st['natural']:.1f}; " + ", ".join(f"{l.split()[1]}: {mean.loc[l, 'natural']:.1f}" for l in sam))
        fails = [(l, c) for l in sam for c in ROBUST if mean.loc[l, c] <= st[c]]
        add("SAM robust accuracy > ST robust accuracy at every budget (every rho)", not fails,
            "all cells higher" if not fails else
            f"{len(fails)} of {len(sam) * len(ROBUST)} cells not higher, e.g. {fails[0][0]} at {fails[0][1]}")
    if len(sam) >= 2:
        r = [mean.loc[l, ROBUST].mean() for l in sam]
        inc = all(b >= a for a, b in zip(r, r[1:]))
        add("robustness grows with rho (mean robust accuracy over the four budgets)", inc,
            ", ".join(f"{l.split()[1]}: {v:.1f}" for l, v in zip(sam, r)))
    else:
        add("robustness grows with rho", None, "needs at least two SAM runs")
    if st is None or not at:
        add("AT loses clean accuracy (vs ST)", None, "needs ST and AT runs")
        add("AT robust accuracy >> SAM robust accuracy", None, "needs AT and SAM runs")
    else:
        lower = [l for l in at if mean.loc[l, "natural"] < st["natural"]]
        add("AT loses clean accuracy (vs ST)", len(lower) == len(at),
            f"{len(lower)} of {len(at)} AT runs below ST's {st['natural']:.1f}")
        if sam:
            best_sam = max(mean.loc[l, "linf_2"] for l in sam)
            worst_at = min(mean.loc[l, "linf_2"] for l in at)
            add("AT robust accuracy >> SAM robust accuracy (L-inf 2/255; every AT above the best SAM by > 10 pt)",
                worst_at > best_sam + 10, f"worst AT {worst_at:.1f} vs best SAM {best_sam:.1f}")
    return out
