"""Published numbers, our results in the same shape, the comparison, and the claims judged over seeds.

All published numbers live here: the paper's Table 2 (CIFAR-10) and Table 1 (CIFAR-100), and AWP's
(chapter 5). Columns (accuracy %): Natural | L-inf 1/255 | L-inf 2/255 | L2 16/255 | L2 32/255,
named ``natural, linf_1, linf_2, l2_16, l2_32``.

Our numbers come from the evaluation stage (:mod:`lib.protocols`): each "ours" cell is the
paper's protocol (PGD-10, the published steps), so its difference from the published value is a
reproduction error and nothing else; beside it stands the worst case over every protocol run on
the model, and a flag where that is more than 1 point below (the paper's attack is weak there).
"""
from __future__ import annotations

import math

import numpy as np

from .attacks import THREAT_NAMES, threat_label
from .stats import (ALPHA, HOLDS, OPEN, REFUTED, Estimate, crossed_bootstrap_se, estimate, fmt_margin, judge, judge_each,
                    ratio_interval)

COLUMNS = ["natural", *THREAT_NAMES]
COLUMN_LABELS = {"natural": "Natural", **{t: threat_label(t).replace("L-inf", "Linf") for t in THREAT_NAMES}}
ROBUST = list(THREAT_NAMES)
FLAG_POINTS = 1.0          # worst case this far below the paper protocol: the paper's attack is weak there
# The claims judged a second time under these protocols together (per example, broken if any broke it),
# on the images all of them covered: the same attacks and images for every model of the grid.
# ``papersub``: the paper's protocol alone on those images, which separates the effect of the stronger
# attacks (papersub -> strict) from that of the smaller sample (paper -> papersub).
STRICT_PROTOCOLS = ("paper", "converged", "strong")
CLAIM_MEASURES = {"paper": "paper protocol, all test images", "papersub": "paper protocol, subset",
                  "strict": " + ".join(STRICT_PROTOCOLS) + ", subset"}

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

# AWP (Wu, Xia, Wang, NeurIPS 2020), PreActResNet-18 and WideResNet-34-10 on CIFAR-10, L-inf 8/255:
# (model, clean, PGD-20, AutoAttack, settings). 200 epochs, lr 0.1 /10 at 100 and 150, PGD-10 training.
AWP_PUBLISHED = [
    ("AT, PRN-18, best", 81.70, 52.79, None, "AWP paper: 200 epochs, PGD-10 training, PGD-20 eval"),
    ("AT, PRN-18, last", 84.60, 43.75, None, "AWP paper: 200 epochs, PGD-10 training, PGD-20 eval"),
    ("AT-AWP, PRN-18, best", 81.18, 55.39, None, "AWP paper: 200 epochs, PGD-10 training, PGD-20 eval"),
    ("AT-AWP, PRN-18, last", 81.65, 54.30, None, "AWP paper: 200 epochs, PGD-10 training, PGD-20 eval"),
    ("AT-AWP, WRN-34-10", None, None, 53.97, "AWP paper: AutoAttack"),
    ("TRADES-AWP, WRN-34-10", None, None, 56.17, "AWP paper: AutoAttack"),
]
# RobustBench anchors (CIFAR-10, clean / AutoAttack), for placing results (RobustBench's leaderboard).
ROBUSTBENCH = [("PreActResNet-18, fast AT, L-inf 8/255", 83.34, 43.21),
               ("PreActResNet-18, L-inf 8/255", 79.84, 43.93),
               ("PreActResNet-18, PGD-AT, L2 0.5", 88.67, 67.68),
               ("undefended", 94.78, 0.00)]


def paper_frame(dataset: str = "cifar10"):
    import pandas as pd
    df = pd.DataFrame.from_dict(PAPER[dataset], orient="index", columns=COLUMNS)
    df.index.name = "method"
    return df


def awp_published_frame():
    import pandas as pd
    return pd.DataFrame(AWP_PUBLISHED, columns=["model", "clean", "PGD-20 L-inf 8/255", "AutoAttack L-inf 8/255",
                                                "settings"]).set_index("model")


# --------------------------------------------------------------------------------------------------
# Our results


def run_row(result) -> dict:
    """One run's numbers: the config's facts, each protocol's accuracy per threat, the worst case and its gap.

    Keys: ``label, method, seed, profile, dataset, rho, norm, eps, natural``, then for every protocol
    run ``<protocol>_<threat>`` (e.g. ``paper_linf_1``; ``<protocol>_n`` its image count), and
    ``worst_<threat>``, ``gap_<threat>`` (paper minus worst on the images every protocol covered),
    ``ncommon_<threat>``; ``strict_<threat>`` and ``strict_n``: the union of :data:`STRICT_PROTOCOLS` on the
    images all of them covered (:func:`lib.protocols.common_worst`), ``papersub_<threat>`` the paper
    protocol alone on those images; cost: ``train_seconds,
    passes_per_step, images_per_second``, ``cpu``, the processor that trained the run, and ``compiled``, whether
    its training steps ran under torch.compile (runs from before compiling existed ran eager).
    """
    from .protocols import common_worst, evaluations, unpack, worst_case
    m, c = result.metrics, result.config
    row = {"label": m["label"], "method": m["method"], "seed": m["seed"], "profile": m["profile"], "epochs": c.epochs,
           "dataset": m["dataset"], "rho": c.rho, "norm": c.norm if c.spec.adversarial else "",
           "eps": c.eps * 255 if c.spec.adversarial else 0.0, "train_seconds": m.get("train_seconds"),
           "passes_per_step": m.get("passes_per_step"), "images_per_second": m.get("images_per_second"),
           "precision": m.get("precision"), "attack_precision": m.get("attack_precision"),
           "fingerprint": m.get("fingerprint"), "cpu": m.get("cpu"), "compiled": bool(m.get("compiled", False)),
           "run": result.path.name}
    recs = evaluations(result)        # read once: the unions below take them
    if not any(r["protocol"] == "paper" for r in recs):
        from .protocols import ResultError
        raise ResultError(f"{result.path}: no evaluation under the paper protocol (eval/paper-*.json), on which every "
                          f"table rests; evaluate it (python -m lib evaluate --run {result.path} --protocol paper, "
                          f"which needs its weights) or restore the file from git")
    # a protocol run on several subsets: its largest record gives the row's numbers
    for rec in sorted(recs, key=lambda r: r["n"]):
        p = rec["protocol"]
        row[f"{p}_n"] = rec["n"]
        row[f"{p}_natural"] = rec["natural"]
        for t, v in rec["threats"].items():
            row[f"{p}_{t}"] = v["acc"]
        if p == "paper":
            # per-example outcomes (True: correct, or robust) for intervals over test images (lib.stats)
            row["natural"] = rec["natural"]
            row[_mask_key("natural")] = unpack(rec["clean"], rec["n"])
            row["labels_digest"] = rec.get("labels_digest")
            # which ordering of which test split the outcomes follow: a record on the first n images is a
            # prefix of another record of the same stamp (lib.protocols evaluates x_test[:n])
            row["paper_order"] = f"{rec.get('test_images')} images, {rec.get('test_order')}"
            row[_digest_key("natural")] = rec.get("labels_digest")
            for t, v in rec["threats"].items():
                row[_mask_key(f"paper_{t}")] = unpack(v["robust"], rec["n"])
                row[_digest_key(f"paper_{t}")] = rec.get("labels_digest")
        elif p in REFERENCE_ATTACKS:
            # AutoAttack's per-example outcomes on its images (the first n), for SAM minus ST under it
            for t, v in rec["threats"].items():
                row[_mask_key(f"{p}_{t}")] = unpack(v["robust"], rec["n"])
                row[_digest_key(f"{p}_{t}")] = rec.get("labels_digest")
    for t, w in worst_case(result, recs=recs).items():
        row[f"worst_{t}"] = w["acc"]
        row[f"ncommon_{t}"] = w["n_common"]
        row[f"commonworst_{t}"] = w["worst_on_common"]
        for p, acc in w["on_common"].items():
            row[f"common{p}_{t}"] = acc
        if "gap" in w:
            row[f"gap_{t}"] = w["gap"]
    strict = common_worst(result, STRICT_PROTOCOLS, n=strict_images(m["profile"]), recs=recs)
    if strict:
        n = next(iter(strict.values()))["n"]         # one subset for every threat
        paper_there = common_worst(result, ("paper",), list(strict), n=n, recs=recs)
        row["strict_n"] = n
        for t, w in strict.items():
            row[f"strict_{t}"] = w["acc"]
            row[f"papersub_{t}"] = paper_there[t]["acc"]
            row[_mask_key(f"strict_{t}")] = w["ok"]
            row[_mask_key(f"papersub_{t}")] = paper_there[t]["ok"]
    return row


def strict_images(profile_name: str) -> int | None:
    """How many test images the ``strict`` measure uses in a profile: the smallest subset the profile gives
    any of :data:`STRICT_PROTOCOLS`, so that every run of the profile is measured on the same images even
    where one protocol was run on more of them (None: no profile subset)."""
    from .config import profile
    from .errors import ConfigError
    try:
        sizes = [n for name, n, _ in profile(profile_name).protocols if name in STRICT_PROTOCOLS and n]
    except ConfigError:
        return None
    return min(sizes) if sizes else None


def results_frame(results):
    """One row per finished run (:func:`run_row`), in the order given."""
    import pandas as pd
    return pd.DataFrame([run_row(r) for r in results])


def aggregate(df, columns):
    """Mean, standard deviation and count over seeds for each label (in the order of first appearance)."""
    order = list(dict.fromkeys(df["label"]))
    cols = [c for c in columns if c in df]
    g = df.groupby("label", sort=False)
    return g[cols].mean().loc[order], g[cols].std(ddof=1).loc[order], g.size().loc[order]


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
    """Ours under the paper's protocol (mean over seeds, '±' std when several), the published value, the
    difference, the worst case over all protocols and a flag, per column.

    ``sam_match``: our rho values compared with the paper's rho_1, rho_2, rho_3 (their values are lost).
    Returns a DataFrame with a (column, ours|±|paper|diff|worst|flag) MultiIndex on the columns;
    columns that would be empty everywhere (no '±' with one seed, no worst case when only the
    paper's protocol ran) are left out.
    """
    import pandas as pd
    cols = ["natural"] + [f"paper_{t}" for t in ROBUST] + [f"worst_{t}" for t in ROBUST] + \
        [f"gap_{t}" for t in ROBUST]
    mean, std, n = aggregate(df, cols)
    sam_labels = [f"SAM rho={r:g}" for r in sam_match]
    paper = PAPER[dataset]
    several = bool((n > 1).any())
    out = {}
    for label in mean.index:
        prow = paper_row_for(label, sam_labels)
        shown = f"{label} (paper {prow})" if prow is not None and label.startswith("SAM") else label
        cells = {}
        for j, col in enumerate(COLUMNS):
            key = "natural" if col == "natural" else f"paper_{col}"
            ours = float(mean.loc[label, key]) if key in mean else math.nan
            cells[(COLUMN_LABELS[col], "ours")] = ours
            if several:
                cells[(COLUMN_LABELS[col], "±")] = float(std.loc[label, key]) if n.loc[label] > 1 else math.nan
            pv = paper[prow][j] if prow in paper else math.nan
            cells[(COLUMN_LABELS[col], "paper")] = pv
            cells[(COLUMN_LABELS[col], "diff")] = ours - pv if not math.isnan(pv) else math.nan
            if col != "natural" and f"worst_{col}" in mean:
                cells[(COLUMN_LABELS[col], "worst")] = float(mean.loc[label, f"worst_{col}"])
                gap = float(mean.loc[label, f"gap_{col}"]) if f"gap_{col}" in mean else math.nan
                cells[(COLUMN_LABELS[col], "flag")] = "WEAK" if gap > FLAG_POINTS else ""
        cells[("", "seeds")] = int(n.loc[label])      # a row with fewer seeds than the profile's says so here
        out[shown] = cells
    table = pd.DataFrame.from_dict(out, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "method"
    keep = [c for c in table.columns
            if ((table[c] != "").any() if c[1] == "flag" else not table[c].isna().all())]
    return table[keep]


def table2_by_scale(frames: dict, dataset: str = "cifar10", sam_match=(0.05, 0.1, 0.2)):
    """Table 2 at several scales side by side (``frames``: scale name -> results frame): per method and column,
    our mean over seeds under the paper's protocol at each scale, then the published value; a column
    ``seeds`` per scale says how many seeds each mean rests on (0: not trained at that scale)."""
    import pandas as pd
    sam_labels = [f"SAM rho={r:g}" for r in sam_match]
    paper = PAPER[dataset]
    keys = ["natural"] + [f"paper_{t}" for t in ROBUST]
    stats_ = {s: aggregate(df, keys) for s, df in frames.items() if df is not None and not df.empty}
    labels = list(dict.fromkeys(l for mean, _, _ in stats_.values() for l in mean.index))
    out = {}
    for label in labels:
        prow = paper_row_for(label, sam_labels)
        cells = {}
        for j, col in enumerate(COLUMNS):
            key = "natural" if col == "natural" else f"paper_{col}"
            for s, (mean, _, _) in stats_.items():
                cells[(COLUMN_LABELS[col], s)] = float(mean.loc[label, key]) if label in mean.index and key in mean \
                    else math.nan
            cells[(COLUMN_LABELS[col], "paper")] = paper[prow][j] if prow in paper else math.nan
        for s, (_, _, n) in stats_.items():
            cells[("seeds", s)] = int(n.loc[label]) if label in n.index else 0
        out[f"{label} (paper {prow})" if prow is not None and label.startswith("SAM") else label] = cells
    table = pd.DataFrame.from_dict(out, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "method"
    for c in [c for c in table.columns if c[0] == "seeds"]:
        table[c] = table[c].astype(int)          # a count, never NaN or 2.0 (a table's <NA> reads as a fault)
    return table


def flat_comparison(table):
    """The comparison table with one level of column names ('Natural ours', ...) for CSV/Markdown/LaTeX."""
    flat = table.copy()
    flat.columns = [f"{a} {b}".strip() for a, b in table.columns]
    return flat.dropna(axis=1, how="all")


PROTOCOL_ORDER = ["paper", "converged", "strong", "linf8", "apgd-ce", "autoattack", "autoattack-linf8"]


def protocol_table(df, threat: str):
    """Per label (mean over seeds): every protocol's accuracy at ``threat`` on the same test images (the
    first ``images`` of the test set, which every protocol run on the model covered), the worst case
    there, and the paper protocol on the whole test set.

    A protocol that ran on some of a label's seeds only (AutoAttack on one seed, say) leaves its cell
    blank: a mean over other seeds than the row's would compare different models. Such a run shows in
    :func:`autoattack_check`, and its per-example outcome still counts in the worst case. ``images`` is
    a number when every seed's protocols covered the same images, else the range ("100-200")."""
    protocols = [f"common{p}_{threat}" for p in PROTOCOL_ORDER if f"common{p}_{threat}" in df]
    cols = protocols + [f"commonworst_{threat}", f"ncommon_{threat}", f"paper_{threat}"]
    mean, _, n = aggregate(df, cols)
    counts = df.groupby("label", sort=False)[[c for c in cols if c in df]].count().loc[mean.index]
    for c in protocols:
        mean.loc[counts[c] < n, c] = math.nan
    if f"ncommon_{threat}" in df:
        g = df.groupby("label", sort=False)[f"ncommon_{threat}"]
        lo, hi = g.min().loc[mean.index], g.max().loc[mean.index]
        mean[f"ncommon_{threat}"] = [int(a) if a == b else f"{int(a)}-{int(b)}" for a, b in zip(lo, hi)]
    names = {f"common{p}_{threat}": p for p in PROTOCOL_ORDER}
    names.update({f"commonworst_{threat}": "worst case", f"ncommon_{threat}": "images",
                  f"paper_{threat}": "paper (all test images)"})
    mean = mean.rename(columns=names)
    mean.insert(0, "seeds", n)
    mean.index.name = f"{threat_label(threat)}"
    return mean


AUTOATTACK_CHECKS = (("linf_2", "paper", ("autoattack", "apgd-ce")), ("linf_8", "linf8", ("autoattack-linf8",)))
# chapter 4: the paper protocol against AutoAttack at each of the table's budgets
TABLE_AUTOATTACK_CHECKS = tuple((t, "paper", ("autoattack", "apgd-ce")) for t in ROBUST)


def autoattack_check(df, threat: str, pgd: str, names, flag_above: float = 3.0):
    """A PGD protocol against AutoAttack at ``threat``, on the runs AutoAttack ran on and the images both
    covered: :func:`protocol_table` over those runs, the gap ``pgd`` minus AutoAttack (the first of ``names``
    that ran) and a flag where the gap exceeds ``flag_above`` points. None when no AutoAttack ran."""
    aa = next((a for a in names if f"common{a}_{threat}" in df and df[f"common{a}_{threat}"].notna().any()), None)
    if aa is None:
        return None
    pt = protocol_table(df[df[f"common{aa}_{threat}"].notna()], threat)
    pt = pt.dropna(axis=1, how="all")
    pt[f"gap ({pgd} - {aa})"] = pt[pgd] - pt[aa]
    pt["flag"] = ["PGD too weak" if g > flag_above else "" for g in pt[f"gap ({pgd} - {aa})"]]
    pt.attrs["autoattack"] = aa
    return pt


REFERENCE_ATTACKS = ("autoattack", "apgd-ce")     # the independent attacks, in order of preference

GAIN_COLUMNS = ["method", "budget", "seeds", "images", "paper protocol", "AutoAttack", "AutoAttack minus paper",
                "covers"]


def autoattack_gains(df, base_label: str = "ST", threats=None, protocols=REFERENCE_ATTACKS):
    """Does a method's gain over ``base_label`` survive an independent attack? For every SAM label and budget,
    on the seeds where both it and ``base_label`` were attacked by AutoAttack (the first of ``protocols`` that
    ran on both) and on the images it covered (the first n of the test set): the difference under the paper
    protocol on those images, the difference under AutoAttack, and AutoAttack minus paper (negative: the
    paper protocol overstated the gain). Each has a 95 % interval over test images with the attacked networks
    held fixed (:func:`lib.stats.images_only`): an attack's strength is a property of the network it attacks,
    and one or two attacked seeds give no usable seed interval (the claims' tables give that). An empty
    frame where none ran."""
    import pandas as pd
    from .stats import images_only
    threats = list(threats or ROBUST)
    rows = []
    base = df[df["label"] == base_label].set_index("seed")
    for label in _sam_labels(df):
        other = df[df["label"] == label].set_index("seed")
        for t in threats:
            for p in protocols:
                mk = _mask_key(f"{p}_{t}")
                if mk not in df:
                    continue
                seeds = [s for s in sorted(set(base.index) & set(other.index))
                         if isinstance(base.at[s, mk], np.ndarray) and isinstance(other.at[s, mk], np.ndarray)
                         and len(base.at[s, mk]) == len(other.at[s, mk])]
                if seeds:
                    break
            else:
                continue
            n = min(len(base.at[s, mk]) for s in seeds)
            pk = _mask_key(f"paper_{t}")
            both = {"base": base, "other": other}
            _same_images(both, [(k, s) for k in both for s in seeds], f"{p}_{t}")
            _same_images(both, [(k, s) for k in both for s in seeds], f"paper_{t}")

            def contrast(key):
                return np.stack([other.at[s, key][:n].astype(float) - base.at[s, key][:n].astype(float)
                                 for s in seeds], axis=1)
            aa, paper = contrast(mk), contrast(pk)
            e_paper, e_aa, e_change = images_only(paper), images_only(aa), images_only(aa - paper)
            rows.append(dict(zip(GAIN_COLUMNS, [label, threat_label(t), len(seeds), n, e_paper, e_aa, e_change,
                                                e_change.covers])) | {"threat": t, "attack": p})
    return pd.DataFrame(rows, columns=GAIN_COLUMNS + ["threat", "attack"])


def autoattack_gains_table(gains):
    """:func:`autoattack_gains` for a reader: one row per method and budget, each estimate as ``+8.0 [+2.1,
    +13.9]`` (SAM minus ST in points), the attack by name (standard AutoAttack, or APGD-CE alone where the
    profile runs only that)."""
    import pandas as pd
    cols = ["method", "budget", "attack", "seeds", "images", "SAM − ST, paper protocol", "SAM − ST, that attack",
            "attack minus paper"]
    if gains.empty:
        return pd.DataFrame(columns=cols).set_index("method")
    out = pd.DataFrame({"method": gains["method"], "budget": gains["budget"],
                        "attack": gains["attack"].map({"autoattack": "AutoAttack", "apgd-ce": "APGD-CE"}),
                        "seeds": gains["seeds"], "images": gains["images"],
                        cols[5]: [e.text() for e in gains["paper protocol"]],
                        cols[6]: [e.text() for e in gains["AutoAttack"]],
                        cols[7]: [e.text() for e in gains["AutoAttack minus paper"]]})
    return out.set_index("method")


def autoattack_gain_sentence(gains) -> str:
    """One sentence on :func:`autoattack_gains` at the budget where the paper protocol shows the largest gain."""
    if gains.empty:
        return ("AutoAttack has not run on both ST and a SAM model of the same seed at this scale, so whether SAM's "
                "gain survives it is not known here.")
    r = gains.loc[max(gains.index, key=lambda i: gains.at[i, "paper protocol"].mean)]
    change = r["AutoAttack minus paper"]
    if change.se == 0:
        reading = "the two attacks give the same difference on every image"
    elif not change.resolved:
        reading = "too few images for an interval"
    elif change.high < 0:
        reading = "the paper protocol overstated the gain (the interval lies below zero)"
    elif change.low > 0:
        reading = "AutoAttack found a larger gain than the paper protocol (the interval lies above zero)"
    else:
        reading = "the interval includes zero: no evidence that the paper protocol overstated the gain"
    seeds = (f"seed{'s' if r['seeds'] > 1 else ''} attacked: {r['seeds']}; 95 % intervals over test images, these "
             f"networks held fixed")
    return (f"Where the paper protocol shows SAM's largest gain ({r['method']}, {r['budget']}), SAM minus ST is "
            f"{r['paper protocol'].text()} points under it and {r['AutoAttack'].text()} under "
            f"{'AutoAttack' if r['attack'] == 'autoattack' else 'APGD-CE'} on the first {r['images']:,} test images "
            f"({seeds}); AutoAttack minus paper is {change.text()}: {reading}.")


def autoattack_checks(df, checks=AUTOATTACK_CHECKS, flag_above: float = 3.0):
    """:func:`autoattack_check` for each ``(threat, pgd, names)`` of ``checks``: a list of (a one-line
    note, the table or None where AutoAttack did not run at that threat)."""
    out = []
    for threat, pgd, names in checks:
        pt = autoattack_check(df, threat, pgd, names, flag_above)
        if pt is None:
            out.append((f"{threat_label(threat)}: AutoAttack not run for these models (the optional extra is "
                        "not installed, or the profile skips it)", None))
            continue
        images = " or ".join(dict.fromkeys(str(i) for i in pt["images"]))
        flagged = ", ".join(pt.index[pt["flag"] != ""]) or "none"
        out.append((f"{threat_label(threat)}: AutoAttack ({pt.attrs['autoattack']}) against {pgd} on the first "
                    f"{images} test images; flagged (gap over {flag_above:g} points): {flagged}", pt))
    return out


# --------------------------------------------------------------------------------------------------
# Claims, judged over seeds and test images (lib.stats)

def _seeds_expected(df) -> int | None:
    """How many seeds the frame's profile has (None when unknown): a cell with fewer says so."""
    from .config import PROFILES
    if "profile" not in df or df.empty:
        return None
    p = PROFILES.get(str(df["profile"].iloc[0]))
    return len(p.seeds) if p is not None else None


def _mask_key(key: str) -> str:
    return f"ok_{key}"


def _digest_key(key: str) -> str:
    return f"images_{key}"


def _same_images(rows, pairs, key: str) -> None:
    """Per-example outcomes combined image by image must refer to the same test images in the same order:
    a SambookError naming the runs where the records' labels digests (``images_<key>``) differ."""
    from .errors import SambookError
    dk = _digest_key(key)
    seen = {}
    for lab, s in pairs:
        if dk in rows[lab]:
            d = rows[lab].at[s, dk]
            if isinstance(d, str):
                seen.setdefault(d, []).append(str(rows[lab].at[s, "run"]) if "run" in rows[lab] else f"{lab} s{s}")
    if len(seen) > 1:
        raise SambookError(f"{key}: these runs' per-example outcomes refer to different test images or orders ("
                           + "; ".join(f"{d}: {', '.join(r)}" for d, r in seen.items())
                           + "); evaluate them again on the same images (python -m lib evaluate --force)")


def contrast_matrix(df, terms, key: str):
    """The per-example contrast ``sum(weight * outcome)`` of ``terms`` ([(label, weight)]) at column ``key``:
    a matrix (test images x seeds) over the seeds every label has, where every run of them carries its
    per-example outcomes (``ok_<key>``, from the evaluation records) on the same images; otherwise the
    vector of per-seed contrasts of the accuracies (seed noise only). Returns (matrix or vector, seeds)."""
    from .errors import SambookError
    if key not in df:
        return np.empty(0), []
    rows = {lab: df[df["label"] == lab].set_index("seed") for lab, _ in terms}
    seeds = sorted(set.intersection(*(set(r.index[r[key].notna()]) for r in rows.values())))
    mk = _mask_key(key)
    have = mk in df and all(isinstance(rows[lab].at[s, mk], np.ndarray) for lab, _ in terms for s in seeds)
    if not seeds:
        return np.empty(0), []
    if not have:
        return np.array([sum(w * float(rows[lab].at[s, key]) for lab, w in terms) for s in seeds]) / 100.0, seeds
    _same_images(rows, [(lab, s) for lab, _ in terms for s in seeds], key)
    cols = []
    for s in seeds:
        masks = [(rows[lab].at[s, mk], w) for lab, w in terms]
        n = {len(m) for m, _ in masks}
        if len(n) != 1:
            raise SambookError(f"{key}: seed {s}'s runs were measured on different numbers of test images "
                               f"({', '.join(f'{lab}: {len(rows[lab].at[s, mk])}' for lab, _ in terms)}); "
                               "evaluate them on the same images (python -m lib evaluate)")
        cols.append(sum(w * m.astype(float) for m, w in masks))
    return np.stack(cols, axis=1), seeds


def paired(df, label_a: str, label_b: str, column: str) -> Estimate:
    """``label_a`` minus ``label_b`` at ``column``, paired by seed and by test image: the mean in points and
    its 95 % interval over seeds and test images (:func:`lib.stats.estimate`)."""
    d, _ = contrast_matrix(df, [(label_a, 1.0), (label_b, -1.0)], column)
    return estimate(d)


def _sam_labels(df) -> list:
    return sorted({l for l in df["label"] if l.startswith("SAM rho=")}, key=lambda l: float(l.split("=")[1]))


def rho_slope(df, key: str) -> Estimate:
    """The least-squares slope of accuracy at ``key`` against rho over the SAM runs, in points per unit rho,
    as a contrast per test image and seed (so its interval covers both), on the seeds that have every rho."""
    sams = _sam_labels(df)
    if len(sams) < 2:
        return Estimate(math.nan)
    rho = np.array([float(l.split("=")[1]) for l in sams])
    w = (rho - rho.mean()) / ((rho - rho.mean()) ** 2).sum()
    d, _ = contrast_matrix(df, list(zip(sams, w)), key)
    return estimate(d)


def _fmt(ci, seeds_expected=None) -> str:
    return ci.text(seeds_expected=seeds_expected) if isinstance(ci, Estimate) else str(ci)


VERSUS_COLUMNS = ["method", "column", "mean", "95% low", "95% high", "seeds", "images", "reading"]


def versus(df, base_label: str, columns: dict) -> "pd.DataFrame":
    """Every other label minus ``base_label``, paired by seed and test image, per column (``columns`` maps a
    frame key to its title): the mean difference in points, its 95 % interval over seeds and test images,
    the seeds and images behind it, and the reading: ``higher`` or ``lower`` when the interval excludes 0,
    else ``not resolved`` (always so with one seed, and with seeds whose differences are all equal: no
    spread, no interval). Labels in the order of first appearance; a missing value (a protocol not run at
    some seed) drops that seed from that column only, and the seeds column says so."""
    import pandas as pd
    rows = []
    for label in dict.fromkeys(df["label"]):
        if label == base_label:
            continue
        for key, title in columns.items():
            if key not in df:
                continue
            ci = paired(df, label, base_label, key)
            if ci.seeds == 0:
                continue
            v = judge({title: ci}, +1).verdict
            rows.append(dict(zip(VERSUS_COLUMNS, [label, title, ci.mean, ci.low, ci.high, ci.seeds, ci.images,
                                                  {HOLDS: "higher", REFUTED: "lower"}.get(v, "not resolved")])))
    out = pd.DataFrame(rows, columns=VERSUS_COLUMNS)
    out.attrs["seeds_expected"] = _seeds_expected(df)
    return out


def versus_table(long, seeds_expected: int | None = None):
    """:func:`versus`'s rows as a reader's table: one row per method, one column per measure, each cell the
    mean difference with its interval ("+6.5 [+3.1, +9.9]", or "+6.5 (1 seed)"), and the seeds."""
    import pandas as pd
    if long.empty:
        return pd.DataFrame(index=pd.Index([], name="method"))
    seeds_expected = seeds_expected or long.attrs.get("seeds_expected")
    cells = long.assign(cell=[Estimate(m, lo, hi, seeds=int(n)).text(seeds_expected=seeds_expected)
                              for m, lo, hi, n in long[["mean", "95% low", "95% high", "seeds"]].itertuples(index=False)])
    wide = cells.pivot(index="method", columns="column", values="cell")
    wide = wide.loc[list(dict.fromkeys(long["method"])), list(dict.fromkeys(long["column"]))]
    wide["seeds"] = cells.groupby("method")["seeds"].max().loc[wide.index].astype(int)
    wide.columns.name = None
    return wide


def sam_vs_st(df, column_prefix: str = "paper") -> list[dict]:
    """Paired SAM minus ST per rho and per column (clean and every budget): mean, 95 % interval over seeds and
    test images (``low``, ``high``), its seed and image standard errors, the seeds and images behind it."""
    rows = []
    for lab in _sam_labels(df):
        for col in COLUMNS:
            key = "natural" if col == "natural" else f"{column_prefix}_{col}"
            if key not in df:
                continue
            e = paired(df, lab, "ST", key)
            rows.append({"rho": float(lab.split("=")[1]), "column": COLUMN_LABELS[col], "mean": e.mean,
                         "low": e.low, "high": e.high, "se": e.se, "se_seed": e.se_seed, "se_image": e.se_image,
                         "df": e.df, "seeds": e.seeds, "images": e.images})
    return rows


# One rule per claim. Each claim is judged on named cells (paired contrasts, each with its interval over
# seeds and test images); ``direction`` and ``margin`` say which side "holds" is on. The rule is the same
# for every claim but 4 (lib.stats.judge): holds = every cell's interval beyond the margin (intersection-
# union: no correction); does not hold = some cell beyond it the other way, Holm-corrected over the
# claim's cells (family-wise 5 %); otherwise not resolved at this scale. Claim 2 is judged per budget, one
# verdict each, with Holm over the budgets in both directions (lib.stats.judge_each).
CLAIMS = {
    "1a": dict(text="SAM alone raises robust accuracy above ST",
               cells="SAM - ST robust accuracy, paired by seed and image, at each rho and budget", direction=+1,
               margin=0.0),
    "1b": dict(text="SAM's clean accuracy does not drop below ST's",
               cells="SAM - ST clean accuracy at each rho", direction=+1, margin=-0.5),
    "2": dict(text="Larger rho gives more robustness",
              cells="slope of robust accuracy against rho (points per unit rho), one budget", direction=+1,
              margin=0.0),
    "3a": dict(text="AT pays in clean accuracy", cells="ST - AT clean accuracy for each AT model", direction=+1,
               margin=0.0),
    "3b": dict(text="AT buys more robustness than SAM",
               cells="AT - SAM at the largest rho, robust accuracy at L-inf 2/255, for each AT model", direction=+1,
               margin=0.0),
    "3c": dict(text="SAM trades less clean accuracy than AT",
               cells="SAM - AT clean accuracy for each rho and AT model (ST's cancels)", direction=+1, margin=0.0),
    "4": dict(text="SAM costs about 2 passes per step, PGD-k AT about k + 1",
              cells="training time / ST's, paired by seed on the same processor, compiled alike: SAM (geometric mean over rho) and each AT",
              direction=+1, margin=None),
}


def claim_rules(df=None) -> "pd.DataFrame":
    """The rule of each claim, as chapter 4 and the site print it beside the verdicts: the cells it is judged
    on (how many, when a frame is given), direction and margin, what each verdict means, and multiplicity."""
    import pandas as pd
    counts, coverage = {}, {}
    if df is not None:
        for c in check_claims(df):
            counts[c["id"]] = len(c["cells"])
            coverage[c["id"]] = c.get("coverage")
    rows = []
    for cid, spec in CLAIMS.items():
        k = counts.get(cid) or counts.get(f"{cid} {ROBUST[0]}")
        if cid == "4":
            rows.append({"claim": f"{cid}. {spec['text']}", "cells": spec["cells"],
                         "holds": "SAM's interval inside [1.5, 2.5] and every AT's interval above SAM's",
                         "does not hold": "SAM's interval outside [1.5, 2.5], or an AT's below SAM's",
                         "multiplicity": "intervals over seeds only, on the log scale (a time has no test images)"})
            continue
        side, m = ("above" if spec["direction"] > 0 else "below"), spec["margin"]
        other = "below" if spec["direction"] > 0 else "above"
        n = f" ({coverage.get(cid) or (f'{k} cell' + ('s' if k > 1 else ''))} judged)" if k and cid != "2" else ""
        rows.append({"claim": f"{cid}. {spec['text']}", "cells": spec["cells"] + n,
                     "holds": (f"the slope {side} {fmt_margin(m)} with Holm-adjusted p < {ALPHA:g} over the budgets"
                               if cid == "2" else f"every cell's 95% interval {side} {fmt_margin(m)} points"),
                     "does not hold": (f"the slope {other} {fmt_margin(m)} with Holm-adjusted p < {ALPHA:g} over the budgets"
                                       if cid == "2" else
                                       f"a cell {other} {fmt_margin(m)} with Holm-adjusted p < {ALPHA:g} over the claim's cells"),
                     "multiplicity": ("one verdict per budget; Holm over the budgets in both directions" if cid == "2" else
                                      "holds: intersection-union (no correction); does not hold: Holm")})
    out = pd.DataFrame(rows).set_index("claim")
    out.attrs["otherwise"] = ("not resolved at this scale (also whenever a cell has no spread, or every model one seed); a "
                            "model trained at one seed so far while others have more is left out and named beside "
                            "the verdict")
    return out


def _claim(cid: str, cells: dict, title: str | None = None, seeds_expected=None, unit=" points",
           judgement=None) -> dict:
    spec = CLAIMS[cid]
    j = judgement or judge(cells, spec["direction"], spec["margin"], seeds_expected=seeds_expected)
    return {"id": cid, "claim": f"{cid}. {title or spec['text']}", "verdict": j.verdict, "deciding": j.deciding,
            "rule": f"{spec['cells']}; holds when every interval is beyond {fmt_margin(spec['margin'])}{unit}, does not "
                    f"hold when one is beyond it the other way" + (f" after Holm over {len(cells)} cells" if len(cells) > 1 else ""),
            "evidence": "; ".join(f"{k}: {_fmt(e, seeds_expected)}" for k, e in cells.items()), "cells": cells}


def check_claims(df, measure: str = "paper") -> list[dict]:
    """Each claim of the paper judged from the runs: [{id, claim, verdict, deciding, rule, evidence, cells}].

    Cells are paired contrasts with 95 % intervals over seeds and test images (:mod:`lib.stats`); each
    claim's rule is :data:`CLAIMS` (also :func:`claim_rules`); claim 2 gives one verdict per budget.
    Robust accuracy is read from the columns ``<measure>_<threat>`` (``paper``: the paper's protocol on
    every test image; ``strict``: the union of :data:`STRICT_PROTOCOLS` on a subset; ``papersub``: the
    paper's protocol on that subset); clean accuracy (every test image) and time are the same for every
    measure. Never forced: one seed gives "not resolved at this scale"; where some models have two seeds or
    more, those with one are left out and named ("not judged yet") beside the verdicts they would enter.
    """
    out = []
    k = _seeds_expected(df)
    df, waiting = _judgeable(df)
    labels = set(df["label"])
    sams = _sam_labels(df)
    ats = [l for l in dict.fromkeys(df["label"]) if l.startswith("AT ")]
    rho = {l: l.split("=")[1] for l in sams}
    threats = [t for t in ROBUST if f"{measure}_{t}" in df]

    def missing(cid, need):
        out.append({"id": cid, "claim": f"{cid}. {CLAIMS[cid]['text']}", "verdict": OPEN, "deciding": need,
                    "rule": CLAIMS[cid]["cells"], "evidence": need, "cells": {}})

    if "ST" in labels and sams:
        out.append(_claim("1a", {f"rho {rho[l]}, {threat_label(t)}": paired(df, l, "ST", f"{measure}_{t}")
                                 for l in sams for t in threats}, seeds_expected=k))
        out.append(_claim("1b", {f"rho {rho[l]}": paired(df, l, "ST", "natural") for l in sams}, seeds_expected=k))
    else:
        missing("1a", "needs ST and SAM runs")
        missing("1b", "needs ST and SAM runs")
    if len(sams) >= 2:            # one verdict per budget, Holm over the budgets (lib.stats.judge_each)
        slopes = {t: rho_slope(df, f"{measure}_{t}") for t in threats}
        each = judge_each({threat_label(t): e for t, e in slopes.items()}, CLAIMS["2"]["direction"],
                          CLAIMS["2"]["margin"], seeds_expected=k, unit=" points per unit rho", family="budgets")
        for t in threats:
            c = _claim("2", {"slope": slopes[t]}, f"{CLAIMS['2']['text']} at {threat_label(t)}", seeds_expected=k,
                       unit=" points per unit rho", judgement=each[threat_label(t)])
            c["id"] = f"2 {t}"
            out.append(c)
    else:
        missing("2", "needs two or more SAM radii")
    if "ST" in labels and ats and sams:
        out.append(_claim("3a", {l[3:]: paired(df, "ST", l, "natural") for l in ats}, seeds_expected=k))
        if f"{measure}_linf_2" in df:
            out.append(_claim("3b", {l[3:]: paired(df, l, sams[-1], f"{measure}_linf_2") for l in ats},
                              f"{CLAIMS['3b']['text']} (AT - {sams[-1]} at L-inf 2/255)", seeds_expected=k))
        out.append(_claim("3c", {f"rho {rho[s]} - {a[3:]}": paired(df, s, a, "natural") for s in sams for a in ats},
                          seeds_expected=k))
    else:
        for cid in ("3a", "3b", "3c"):
            missing(cid, "needs ST, SAM and AT runs")
    if "ST" in labels and sams and "train_seconds" in df:
        out.append(_time_claim(df, sams, ats))
    return [_with_coverage(c, df, sams, ats, threats, waiting, k) for c in out]


def _judgeable(df) -> tuple["pd.DataFrame", dict]:
    """The frame without the models trained at one seed so far, and those models ({label: seeds}). A model
    with one seed has no interval, and any cell without one leaves its whole claim "not resolved"; so the
    claims are judged on the models with two seeds or more, and the others are reported beside the verdict
    (:func:`_with_coverage`) until their seeds are trained. Where no model has two seeds, the frame is kept
    whole (every cell then says it has no interval)."""
    n = df.groupby("label")["seed"].nunique()
    waiting = {l: int(v) for l, v in n.items() if v < 2}
    if not waiting or len(waiting) == len(n) or ("ST" in waiting):
        return df, {}
    return df[~df["label"].isin(list(waiting))], waiting


def _grid_models(df) -> tuple[list, list] | None:
    """The SAM and AT labels the frame's profile trains in its core grid (None when the profile is unknown)."""
    from .config import PROFILES, grid
    if "profile" not in df or df.empty or str(df["profile"].iloc[0]) not in PROFILES:
        return None
    labels = list(dict.fromkeys(c.label for c in grid("core", str(df["profile"].iloc[0]))))
    return [l for l in labels if l.startswith("SAM rho=")], [l for l in labels if l.startswith("AT ")]


def _with_coverage(c: dict, df, sams, ats, threats, waiting=None, seeds_expected=None) -> dict:
    """``c`` with ``coverage`` (e.g. "4 of 16 cells") where it was judged on fewer of its cells than the
    profile's core grid defines (the radii or AT models not trained yet, or trained at one seed so far:
    ``waiting``, {label: seeds}), said in its deciding text too: a claim about every radius that holds at the
    radii trained so far says so, and names the ones left out."""
    cid = c["id"].split()[0]
    left = [l for l in (waiting or {}) if (l.startswith("SAM rho=") and cid in ("1a", "1b", "2", "3c"))
            or (l.startswith("AT ") and cid in ("3a", "3b", "3c"))]
    of = f" of {seeds_expected}" if seeds_expected else ""
    out = ("not judged yet: " + ", ".join(f"{_short(l)} ({waiting[l]}{of} seed{'s' if (seeds_expected or waiting[l]) != 1 else ''})"
                                           for l in left)) if left else ""
    grid_models = _grid_models(df)
    if grid_models is None or not c["cells"]:
        return dict(c, deciding=f"{c['deciding']}; {out}") if out else c
    g_sams, g_ats = grid_models
    s, a, t = len(set(sams) & set(g_sams)), len(set(ats) & set(g_ats)), len(threats)
    have_want = {"1a": (s * t, len(g_sams) * t), "1b": (s, len(g_sams)), "3a": (a, len(g_ats)),
                 "3b": (a, len(g_ats)), "3c": (s * a, len(g_sams) * len(g_ats))}
    if cid == "2":
        have, want, what = len(sams), len(g_sams), "radii"
    elif cid in have_want:
        (have, want), what = have_want[cid], "cells"
    else:
        return c
    if have >= want:
        return c
    trained = []
    if cid in ("1a", "1b", "2", "3c"):
        trained.append("SAM rho " + ", ".join(l.split("=")[1] for l in sams))
    if cid in ("3a", "3b", "3c"):
        trained.append(", ".join(ats))
    c = dict(c, coverage=f"{have} of {want} {what}")
    c["deciding"] = (f"{c['deciding']}; on {have} of the grid's {want} {what} ({' and '.join(trained)} "
                     f"{'with two seeds or more' if left else 'trained so far'})" + (f"; {out}" if out else ""))
    return c


def _short(label: str) -> str:
    return "SAM rho " + label.split("=")[1] if label.startswith("SAM rho=") else label


def sam_vs_st_by_length(df, column_prefix: str = "paper") -> list[dict]:
    """:func:`sam_vs_st` at each training length (``epochs``) of the frame: SAM and ST paired within a length
    (same seed, same test images); rows gain ``epochs`` and ``profile``."""
    rows = []
    for (prof, e), sub in df.groupby(["profile", "epochs"], sort=True):
        rows += [dict(r, epochs=int(e), profile=prof) for r in sam_vs_st(sub, column_prefix)]
    return sorted(rows, key=lambda r: (r["epochs"], r["rho"]))


def gap_change_by_length(rows: list[dict], alpha: float = ALPHA) -> list[dict]:
    """How SAM - ST moved between the shortest and the longest training length of :func:`sam_vs_st_by_length`'s
    rows, per rho and column: the change (longest minus shortest, points; above zero SAM gained on ST as
    training grew) with its 95 % interval (:func:`lib.stats.change`: the two lengths' networks and test images
    taken as independent, which errs wide only where what they share correlates their errors positively;
    :func:`gap_change_paired` pairs them where it can), and a word by one rule over all the cells at once: ``SAM gained
    on ST`` / ``SAM lost ground`` where the Holm-adjusted p-value over the cells is under ``alpha``
    (family-wise 5 %), else ``no change shown``. A cell without an interval at either end gets no p-value
    and ``no interval``."""
    from .stats import change
    by = {}
    for r in rows:
        by.setdefault((r["rho"], r["column"]), []).append(r)
    out = []
    for (rho, col), cells in by.items():
        cells = sorted(cells, key=lambda r: r["epochs"])
        if len(cells) < 2:
            continue
        a, b = (Estimate(c["mean"], c["low"], c["high"], c.get("se", math.nan), c["se_seed"], c["se_image"],
                         c.get("df", math.nan), int(c["seeds"]), int(c["images"])) for c in (cells[0], cells[-1]))
        e = change(a, b)
        out.append({"rho": rho, "column": col, "from": cells[0]["epochs"], "to": cells[-1]["epochs"],
                    "change": e, "p": e.p_value()})
    return _read_changes(out, alpha)


def _read_changes(out: list[dict], alpha: float) -> list[dict]:
    """The one rule of the length changes: Holm over every cell with a p-value, then a word per cell."""
    from .stats import holm
    judged = [r for r in out if r["p"] == r["p"]]
    for r, adj in zip(judged, holm([r["p"] for r in judged])):
        r["p_holm"] = float(adj)
    for r in out:
        adj = r.get("p_holm", math.nan)
        r["p_holm"] = adj
        r["word"] = ("no interval" if adj != adj else "no change shown" if adj >= alpha
                     else "SAM gained on ST" if r["change"].mean > 0 else "SAM lost ground")
    return out


def gap_change_paired(df, column_prefix: str = "paper", alpha: float = ALPHA) -> list[dict]:
    """How SAM - ST moved between the shortest and the longest length *within one profile* (cpu-long: 4 and
    10 epochs), paired: for each seed and test image, (SAM - ST at the longer length) - (SAM - ST at the
    shorter), on the test images both lengths were evaluated on (the first ``n`` of one ordering: a record
    on fewer images is a prefix of one on more, and the runs' ``paper_order`` stamps must agree) and the
    seeds all four runs have; its interval over seeds and test images (:func:`lib.stats.estimate`) counts
    what the lengths share instead of adding their noise as if independent (:func:`gap_change_by_length`).
    Rows as :func:`gap_change_by_length`'s (``rho, column, from, to, change, p, p_holm, word``) plus
    ``profile``; the same rule: Holm over every cell, family-wise ``alpha``."""
    from .errors import SambookError
    out = []
    for prof, sub in df.groupby("profile", sort=True):
        lengths = sorted(int(e) for e in sub["epochs"].unique())
        if len(lengths) < 2:
            continue
        a, b = lengths[0], lengths[-1]
        for lab in _sam_labels(sub):
            for col in COLUMNS:
                key = "natural" if col == "natural" else f"{column_prefix}_{col}"
                mk = _mask_key(key)
                if mk not in sub:
                    continue
                runs = {(l, e): sub[(sub["label"] == l) & (sub["epochs"] == e)].set_index("seed")
                        for l in (lab, "ST") for e in (a, b)}
                seeds = sorted(set.intersection(*(set(r.index) for r in runs.values())))
                cols = []
                for sd in seeds:
                    masks = {k: r.at[sd, mk] for k, r in runs.items()}
                    if not all(isinstance(m, np.ndarray) for m in masks.values()):
                        continue
                    stamps = {str(r.at[sd, "paper_order"]) for r in runs.values()}
                    if len(stamps) != 1:
                        raise SambookError(f"{key}: seed {sd}'s runs at {a} and {b} epochs were evaluated on "
                                           f"different test orderings ({'; '.join(sorted(stamps))}); a paired change "
                                           "needs the same images")
                    n = min(len(m) for m in masks.values())
                    gap = {e: masks[(lab, e)][:n].astype(float) - masks[("ST", e)][:n].astype(float) for e in (a, b)}
                    cols.append(gap[b] - gap[a])
                if not cols:
                    continue
                e = estimate(np.stack(cols, axis=1))
                out.append({"profile": prof, "rho": float(lab.split("=")[1]), "column": COLUMN_LABELS[col],
                            "from": a, "to": b, "change": e, "p": e.p_value()})
    return _read_changes(out, alpha)


def accuracy_by_length(df, labels=("ST", "SAM rho=0.1", "SAM rho=0.4"), column: str = "natural") -> list[dict]:
    """Accuracy in % at ``column`` (``natural``, or ``paper_<threat>``) of each label at each training length
    (``epochs``) of the frame: the mean over seeds, its 95 % interval over seeds and test images
    (:func:`lib.stats.estimate`), and the seeds and test images behind it. Lengths are measured on different
    test images where their profiles differ (the row's ``images`` says how many): SAM minus ST within a length
    (:func:`sam_vs_st_by_length`) is paired, a change across lengths is not."""
    rows = []
    for (prof, e), sub in df.groupby(["profile", "epochs"], sort=True):
        for lab in labels:
            if lab not in set(sub["label"]):
                continue
            d, seeds = contrast_matrix(sub, [(lab, 1.0)], column)
            if not seeds:
                continue
            est = estimate(d)
            rows.append({"label": lab, "epochs": int(e), "profile": prof, "mean": est.mean, "low": est.low,
                         "high": est.high, "seeds": est.seeds, "images": est.images})
    return sorted(rows, key=lambda r: (labels.index(r["label"]), r["epochs"]))


def claims_by_scale(frames: dict, measure: str = "paper") -> "pd.DataFrame":
    """Each claim's verdict and deciding cell at each scale (``frames``: scale name -> results frame), side by
    side, one row per claim (claim 2 one per budget); a claim a scale cannot judge yet reads as its
    :func:`check_claims` says (not resolved, and why), never NaN."""
    import pandas as pd
    per_scale = {scale: {c["id"]: c for c in check_claims(df, measure)}
                 for scale, df in frames.items() if df is not None and not df.empty}
    ids = list(dict.fromkeys(cid for claims in per_scale.values() for cid in claims))
    if any(cid.startswith("2 ") for cid in ids):     # claim 2 per budget somewhere: its one row elsewhere fans out
        for claims in per_scale.values():
            if "2" in claims:
                for cid in (i for i in ids if i.startswith("2 ")):
                    claims.setdefault(cid, claims["2"])
        ids = [cid for cid in ids if cid != "2"]
    rows = {}
    for cid in ids:
        got = [claims[cid] for claims in per_scale.values() if cid in claims]
        title = max((c["claim"] for c in got if c["id"] == cid), key=len, default=got[0]["claim"])
        row = {}
        for scale, claims in per_scale.items():
            c = claims.get(cid)
            row[f"{scale}: verdict"] = c["verdict"] if c else OPEN
            row[f"{scale}: deciding"] = c["deciding"] if c else "no runs for these cells yet"
        rows[title] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "claim"
    return out


def _time_claim(df, sams, ats) -> dict:
    """Claim 4: measured training time relative to ST, paired by seed: SAM's interval inside [1.5, 2.5]
    (about 2 passes) and every AT's above SAM's (k + 1 passes, k >= 2); geometric means with intervals over seeds on the log scale
    (:func:`lib.stats.ratio_interval`; a time has no test images). A pair counts only when one kind of processor trained both runs, both compiled or both eager:
    a time ratio across two machines, or across the compiler, measures them as much as the methods."""
    per_seed = {}
    for l in sams:
        for s, x in _ratios(df, l, "ST", by_seed=True):
            per_seed.setdefault(s, []).append(x)
    r_sam = ratio_interval([float(np.exp(np.mean(np.log(v)))) for v in per_seed.values()])    # geometric over rho
    r_at = {l: ratio_interval(_ratios(df, l, "ST")) for l in ats}
    lo, hi = r_sam.low, r_sam.high
    if not r_sam.resolved or any(not v.resolved for v in r_at.values()):
        named = [("SAM", r_sam), *r_at.items()]
        gone = [f"{k}: {_fmt_ratio(v)}" for k, v in named if not v.resolved]
        have = [f"{k} {_fmt_ratio(v)}" for k, v in named if v.resolved]
        v4, deciding = OPEN, ("no interval for " + "; ".join(gone) + " (a pair needs ST and the method trained at "
                              "one seed on one kind of processor, compiled alike; an interval two such seeds)"
                              + (f"; {', '.join(have)}" if have else ""))
    elif 1.5 <= lo and hi <= 2.5 and all(v.low > hi for v in r_at.values()):
        v4, deciding = HOLDS, f"SAM {_fmt_ratio(r_sam)}"
    elif hi < 1.5 or lo > 2.5 or any(v.high < lo for v in r_at.values()):
        v4, deciding = REFUTED, f"SAM {_fmt_ratio(r_sam)}"
    else:
        v4, deciding = OPEN, f"SAM {_fmt_ratio(r_sam)}"
    cells = {"SAM": r_sam, **{l[3:]: v for l, v in r_at.items()}}
    return {"id": "4", "claim": f"4. {CLAIMS['4']['text']} (measured time relative to ST)", "verdict": v4,
            "deciding": deciding, "rule": "SAM's time ratio interval inside [1.5, 2.5] and every AT's above it",
            "evidence": f"SAM {_fmt_ratio(r_sam)}; " + ", ".join(f"{l[3:]} {_fmt_ratio(v)}" for l, v in r_at.items())
                        + " (time / ST's, seeds trained on the same processor and compiled alike)", "cells": cells}


def claims_frame(df, measure: str = "paper") -> "pd.DataFrame":
    """:func:`check_claims` as a table: claim, verdict, the deciding cell and number, and the rule."""
    import pandas as pd
    return pd.DataFrame([{k: c[k] for k in ("claim", "verdict", "deciding", "rule")} for c in check_claims(df, measure)])


def claims_by_measure(df, measures=None) -> "pd.DataFrame":
    """Each claim's verdict under each measure of robust accuracy (:data:`CLAIM_MEASURES`: the paper's
    protocol, and the union of the stronger protocols on the images they all covered), one column per
    measure, and ``same`` (whether the verdicts agree). A measure no run has is left out."""
    import pandas as pd
    measures = CLAIM_MEASURES if measures is None else measures
    cols = {}
    for key, title in measures.items():
        if any(f"{key}_{t}" in df for t in ROBUST):
            cols[title] = {c["claim"]: c["verdict"] for c in check_claims(df, key)}
    out = pd.DataFrame(cols)
    out.index.name = "claim"
    out["same"] = out.nunique(axis=1) == 1
    return out


def sam_vs_st_by_measure(df, measures=None) -> "pd.DataFrame":
    """Paired SAM minus ST at every budget under each measure of :data:`CLAIM_MEASURES`: one row per (rho,
    measure), one column per budget, each cell the mean difference with its 95 % interval (seeds and images)."""
    import pandas as pd
    measures = CLAIM_MEASURES if measures is None else measures
    k = _seeds_expected(df)
    rows = []
    for key, title in measures.items():
        for d in sam_vs_st(df, key):
            if d["column"] != COLUMN_LABELS["natural"]:
                rows.append({"rho": d["rho"], "measure": title, "column": d["column"],
                             "cell": Estimate(d["mean"], d["low"], d["high"], seeds=d["seeds"]).text(seeds_expected=k)})
    if not rows:
        return pd.DataFrame()
    long = pd.DataFrame(rows)
    wide = long.pivot(index=["rho", "measure"], columns="column", values="cell")
    order = [m for m in measures.values() if m in set(long["measure"])]
    wide = wide.reindex(pd.MultiIndex.from_product([sorted(set(long["rho"])), order], names=["rho", "measure"]))
    wide = wide[[c for c in dict.fromkeys(long["column"])]]
    wide.columns.name = None
    return wide.dropna(how="all")


def noise_components(df, cells) -> "pd.DataFrame":
    """For each (label_a, label_b, key, title) of ``cells``: the paired difference with its interval over seeds
    only (the t interval of the per-seed differences, what the book used to print), the seed and image standard
    errors, the interval over both, and the crossed bootstrap's standard error (the check of the formula)."""
    import pandas as pd
    rows = []
    for a, b, key, title in cells:
        d, _ = contrast_matrix(df, [(a, 1.0), (b, -1.0)], key)
        if d.size == 0:
            continue
        both = estimate(d)
        seeds_only = estimate(d.mean(axis=0) if d.ndim == 2 else d)
        boot = crossed_bootstrap_se(d) if d.ndim == 2 and d.shape[0] > 1 else math.nan
        rows.append({"difference": title, "mean": both.mean, "seeds only": seeds_only.text(),
                     "s.e. seeds": both.se_seed, "s.e. images": both.se_image, "s.e. both": both.se,
                     "s.e. crossed bootstrap": boot, "df": both.df, "seeds and images": both.text(),
                     "images": both.images})
    return pd.DataFrame(rows).set_index("difference") if rows else pd.DataFrame()


def _ratios(df, a: str, b: str, by_seed: bool = False) -> list:
    """train_seconds of ``a`` over ``b`` per seed both have, where the same processor (the ``cpu`` column,
    when the frame has one) trained both, both compiled or both eager (``compiled``, likewise): on the EPYC
    compiling made an ST step 1.47x faster, so a compiled ST beside an eager AT measures the compiler too."""
    alike = [c for c in ("cpu", "compiled") if c in df]
    cols = ["train_seconds"] + alike
    x = df[df["label"] == a].set_index("seed")[cols]
    y = df[df["label"] == b].set_index("seed")[cols]

    def same(s):
        return all(x.at[s, c] == y.at[s, c] for c in alike)
    pairs = [(s, float(x.at[s, "train_seconds"] / y.at[s, "train_seconds"]))
             for s in sorted(set(x.index) & set(y.index)) if y.at[s, "train_seconds"] and same(s)]
    return pairs if by_seed else [r for _, r in pairs]


def _fmt_ratio(ci) -> str:
    m, lo, hi, n = ci.mean, ci.low, ci.high, ci.seeds
    if m != m:
        return "no pair"
    if lo == lo:
        return f"{m:.1f}x [{lo:.1f}, {hi:.1f}]"
    return f"{m:.1f}x (1 seed)" if n < 2 else f"{m:.1f}x ({n} seeds, no spread)"


def welch_ci(a, b) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95 % Welch interval over seeds (scipy's; NaN when either side has one value)."""
    from scipy import stats as st
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return d, float(ci.low), float(ci.high)


PRECISION_COLUMNS = ["model", "column", "bf16 attacks", "bf16 std", "bf16 seeds", "fp32 attacks", "fp32 seeds",
                     "fp32 - bf16", "95% low", "95% high", "within seed noise"]


def attack_precision_table(df):
    """For each AT configuration trained with fp32 training attacks (label ``... fp32-attack``): the paper-protocol
    accuracies of the bf16-attack runs (mean, std, seeds) and of the fp32-attack runs, their difference with a
    95 % Welch interval, and whether the difference is within seed noise (the interval contains 0)."""
    import pandas as pd
    rows = []
    for label in dict.fromkeys(l for l in df["label"] if l.endswith(" fp32-attack")):
        base = label[: -len(" fp32-attack")]
        a, b = df[df["label"] == label], df[df["label"] == base]
        for col in COLUMNS:
            key = "natural" if col == "natural" else f"paper_{col}"
            if key not in df:
                continue
            d, lo, hi = welch_ci(a[key].dropna(), b[key].dropna())
            rows.append({"model": base, "column": COLUMN_LABELS[col], "bf16 attacks": b[key].mean(),
                         "bf16 std": b[key].std(ddof=1), "bf16 seeds": len(b), "fp32 attacks": a[key].mean(),
                         "fp32 seeds": len(a), "fp32 - bf16": d, "95% low": lo, "95% high": hi,
                         "within seed noise": ("yes" if lo <= 0 <= hi else "no") if lo == lo else "not resolved"})
    return pd.DataFrame(rows, columns=PRECISION_COLUMNS)
