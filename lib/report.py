"""What the chapters show: the runs of a profile, the "ran on" line, figures and tables, written in one place.

Chapters call these few functions and keep only their prose, parameters and the reading of the
results; nothing here decides a number (that is :mod:`lib.tables`, :mod:`lib.protocols`,
:mod:`lib.probes`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import paths
from .io import atomic_write, write_text

# one colour per family of methods, the same in every figure of the book
FAMILY_COLORS = {"ST": "tab:gray", "SAM": "tab:blue", "ASAM": "tab:cyan", "AT": "tab:red", "SAM+AT": "tab:purple",
                 "AWP": "tab:orange", "TRADES": "tab:green", "ARoW": "tab:olive"}


def family(label: str) -> str:
    """``SAM rho=0.1`` -> ``SAM``; ``AT L-inf 1/255`` -> ``AT``."""
    return label.split()[0]


# --------------------------------------------------------------------------------------------------
# The runs a chapter shows


def book_grid(profile: str) -> str:
    """The grid a profile's book shows: the core grid for the CPU scales (what they train), else the paper's."""
    return "core" if profile in ("cpu", "cpu-long") else "paper"


def results_for(profile: str, grid_name: str | None = None, dataset: str = "cifar10", seeds=None, data_root=None):
    """(finished runs in grid order, names of the missing ones) for a profile's grid.

    Profiles that train in the book (smoke, fast, paper) train and evaluate what is missing
    through the executor; the ``cpu`` profile only reads its committed results (the book never
    trains there: ``make sweep PROFILE=cpu`` does). Only the book's chapters call this; the site
    and the tables read finished runs (:func:`lib.runs.finished_runs`) and never train.
    """
    from . import runs
    from .config import grid, profile as get_profile
    configs = grid(grid_name or book_grid(profile), profile, dataset, seeds)
    if get_profile(profile).train_in_book:
        from .executor import run_grid
        rep = run_grid(configs, data_root=data_root, progress=False)
        return rep.finished, rep.missing
    found = [None if r is not None and _being_evaluated(r) else r for r in runs.finished_runs(configs, data_root)]
    return [r for r in found if r is not None], [c.name for c, r in zip(configs, found) if r is None]


def _being_evaluated(run) -> bool:
    """A run trained on this machine (its weights are here) that has no paper-protocol evaluation yet: its
    evaluations are running or were interrupted, so a book of committed results leaves it out (listed as
    missing) instead of failing. A committed run never carries weights, so one without the paper record
    is still an error (:func:`lib.tables.run_row`)."""
    from .protocols import EVAL_DIR
    return run.has_weights and not any((run.path / EVAL_DIR).glob("paper-*.json"))


def first_seed(results) -> list:
    """The first run of each configuration (label), in order."""
    seen = {}
    for r in results:
        seen.setdefault(r.config.label, r)
    return list(seen.values())


def banner(profile: str, data_description: str) -> str:
    """The sentence every chapter prints first: which profile and which data made its numbers."""
    from .config import profile as get_profile
    p = get_profile(profile)
    lines = [f"Profile: {profile} ({p.description}; network width {p.width}, {p.epochs} epochs)."]
    if profile == "smoke":
        lines.append("SMOKE NUMBERS: a tiny network trained for seconds on a CPU. They show that the code runs, "
                     "not what the paper's claims look like.")
    lines.append(f"Data: {data_description}.")
    return "\n".join(lines)


def ran_on(results) -> str:
    """The "ran on" note of a chapter: one short line (how many runs of which profile, what trained them,
    when), then the details on the following lines (data, devices, commits), and any stale result. The
    site shows the first line and folds the rest (:func:`lib.site.prepare_notebook`)."""
    from . import runs
    if not results:
        return "Ran on: nothing yet (no finished run)."
    m = results[0].metrics
    devices = sorted({r.metrics.get("device", "?") for r in results})
    kinds = sorted({r.metrics.get("device_type", "?") for r in results})
    precisions = sorted({r.metrics.get("precision", "?") for r in results})
    commits = sorted({r.metrics.get("commit", "?") for r in results})
    dates = sorted(r.metrics.get("date", "")[:10] for r in results)
    c = results[0].config
    dirty = [x for x in commits if x.endswith("+dirty")]
    line = (f"Ran on: {len(results)} run{'s' if len(results) > 1 else ''} of the {m['profile']} profile (width {c.width}, "
            f"{c.epochs} epochs), {'/'.join(k.upper() for k in kinds)}, {'/'.join(precisions)} training, fp32 "
            f"evaluation, trained {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") + ".")
    line += (f"\nData: {m['data']}.\nDevices: {'; '.join(devices)}.\n"
             f"Commits: {', '.join(commits)}" + (" (+dirty: trained from a working tree with uncommitted changes; "
                                                 "the training-code fingerprint in each run's metrics.json says "
                                                 "which code)" if dirty else "") + ".")
    old = runs.stale(results)
    if old:
        line += (f"\nWARNING: {len(old)} result(s) were made by different training code than this checkout's "
                 f"(fingerprint {runs.fingerprint()}): {', '.join(old[:4])}{' ...' if len(old) > 4 else ''}")
    return line


def protocol_accuracy(result, name: str, threat: str, data_root=None) -> float:
    """A run's accuracy at ``threat`` under protocol ``name``: cached, or computed if its weights are here
    and its profile trains in the book (NaN otherwise: e.g. a committed result evaluated before the
    protocol existed). A profile whose book shows committed results only (``cpu``) never has them
    written to by a chapter: ``python -m lib evaluate`` adds an evaluation on purpose."""
    from .config import profile as get_profile
    from .errors import SambookError
    from .protocols import evaluate_run
    try:
        return evaluate_run(result, name, data_root=data_root,
                            cached_only=not get_profile(result.config.profile).train_in_book)["threats"][threat]["acc"]
    except SambookError:
        return float("nan")


def missing_note(missing) -> str:
    """One sentence on the runs a chapter lacks: their names when few, else a count per seed."""
    if not missing:
        return "All runs of the grid are here."
    if len(missing) <= 4:
        return f"{len(missing)} run(s) of the grid are not here yet: {', '.join(missing)}."
    per_seed: dict[str, list[str]] = {}
    for name in missing:
        m = re.search(r"^[^-]+-(.+)-s(\d+)-", name)        # <dataset>-<what>-s<seed>-<profile>...
        key = f"seed {m.group(2)}" if m else "other"
        per_seed.setdefault(key, []).append(m.group(1) if m else name)

    def which(runs):
        n = len(runs)
        listed = f": {', '.join(runs)}" if n <= 8 else ""
        return f"{n} run{'s' if n > 1 else ''}{listed}"
    return (f"{len(missing)} runs of the grid are not here yet: "
            + "; ".join(f"{k} ({which(v)})" for k, v in per_seed.items()) + ".")


# --------------------------------------------------------------------------------------------------
# Files


def figures_dir(outputs: str | os.PathLike | None = None) -> Path:
    return paths.outputs_root(outputs) / "figures"


def tables_dir(outputs: str | os.PathLike | None = None) -> Path:
    return paths.outputs_root(outputs) / "tables"


def savefig(fig, name: str, outputs: str | os.PathLike | None = None, dpi: int = 120) -> Path:
    """Save a matplotlib figure as ``outputs/figures/<name>.png`` (atomically) and return the path."""
    target = figures_dir(outputs) / f"{name}.png"
    atomic_write(target, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
    return target


def shown(df, decimals: int = 2):
    """A table as a chapter displays it: floats at ``decimals`` places and a missing value (no published
    number for a method beyond the paper, no spread with one seed) as a blank cell, never "NaN"."""
    return df.style.format(precision=decimals, na_rep="")


def save_table(df, name: str, outputs: str | os.PathLike | None = None, floatfmt: str = ".2f",
               caption: str | None = None) -> dict[str, Path]:
    """Write a pandas DataFrame as CSV, Markdown and LaTeX under ``outputs/tables/``."""
    base = tables_dir(outputs)
    return {
        "csv": write_text(base / f"{name}.csv", df.to_csv(index=True)),
        "md": write_text(base / f"{name}.md", to_markdown(df, floatfmt, caption)),
        "tex": write_text(base / f"{name}.tex", _to_latex(df, floatfmt, caption)),
    }


def _fmt(v, floatfmt: str) -> str:
    if isinstance(v, float):
        return "" if v != v else format(v, floatfmt)
    return str(v)


def _index_names(df) -> list[str]:
    """The header cells of the index: one per level (a MultiIndex gets a column per level, not a tuple)."""
    return [n or "" for n in df.index.names]


def _column_names(df) -> list[str]:
    return [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]


def _key_cells(key, idx: list) -> list[str]:
    return [str(k) for k in key] if isinstance(key, tuple) and len(idx) > 1 else [str(key)]


def _rows(df):
    """(index, *values) per row with each column's own type: ``iterrows`` would turn an integer column
    (seeds, images) into floats as soon as the row also holds a float."""
    return df.itertuples(index=True, name=None)


def to_markdown(df, floatfmt: str = ".1f", caption: str | None = None) -> str:
    idx = _index_names(df)
    cols = _column_names(df)
    lines = [caption, ""] if caption else []
    lines.append("| " + " | ".join(idx + cols) + " |")
    lines.append("|" + "---|" * (len(cols) + len(idx)))
    for key, *row in _rows(df):
        lines.append("| " + " | ".join(_key_cells(key, idx) + [_fmt(v, floatfmt) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def _to_latex(df, floatfmt: str, caption: str | None) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = [f"% {caption}"] if caption else []
    cols = _column_names(df)
    idx = _index_names(df)
    lines.append("% " + " & ".join([esc(n) for n in idx] + [esc(c) for c in cols]))
    for key, *row in _rows(df):
        lines.append(" & ".join([esc(k) for k in _key_cells(key, idx)] + [esc(_fmt(v, floatfmt)) for v in row]) + r" \\")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Figures (each returns the matplotlib figure; the chapter saves and shows it)


def errorbars(ax, x, mean, se, color, label=None, fmt="o"):
    """Mean +- standard error as points with caps: the one error-bar style of the book."""
    return ax.errorbar(x, mean, yerr=se, fmt=fmt, color=color, capsize=3, label=label)


def learning_curves(results, title: str):
    """Clean and PGD L-inf 1/255 test accuracy after every epoch, one line per configuration (band: seeds)."""
    import pandas as pd
    import seaborn as sns
    hist = pd.concat([r.history_frame().assign(label=r.config.label, seed=r.config.seed) for r in results])
    long = hist.melt(id_vars=["label", "epoch", "seed"], value_vars=["test_acc", "test_linf_1"],
                     var_name="metric", value_name="accuracy")
    from .config import profile as get_profile
    steps = {get_profile(r.config.profile).curve_steps for r in results}    # the profile's curve attack
    pgd = f"PGD-{steps.pop()}" if len(steps) == 1 else "PGD"
    long["metric"] = long["metric"].map({"test_acc": "clean", "test_linf_1": f"{pgd} L-inf 1/255"})
    g = sns.relplot(long, x="epoch", y="accuracy", hue="label", col="metric", kind="line", height=3.5,
                    aspect=1.2, palette="tab20", errorbar="sd")
    g.set_axis_labels("epoch", "test accuracy (%)")
    g.figure.suptitle(title, y=1.03)
    return g.figure


def curve_images_note(results) -> str:
    """Which test images the runs' learning curves (``history``: test_acc, test_linf_1) were measured on, in
    one sentence: the first ``curve_images`` of the profile's test split, and, for runs trained while an
    ImageFolder's whole test split was still in its stored class order (:func:`lib.data.class_sorted_test`),
    that those curves cover the first class alone."""
    from .config import profile as get_profile
    from .data import class_sorted_test
    if not results:
        return ""
    n = get_profile(results[0].config.profile).curve_images
    sorted_runs = [r for r in results if class_sorted_test(r.config, r.metrics.get("test_order"))]
    text = f"Learning curves on the first {n:,} test images"
    if not sorted_runs:
        return text + "."
    who = "every run" if len(sorted_runs) == len(results) else f"{len(sorted_runs)} of the {len(results)} runs"
    return (text + f": for {who}, trained while the test split was still in its stored class order, these "
            f"images are airplanes only, so read those curves' shape, not their level (the tables use all "
            f"the test images, in the official order).")


def tradeoff(ours, paper, columns, title: str):
    """Clean against robust accuracy: ours (filled) and the paper's (open), one panel per column."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4.2))
    for ax, (col_ours, col_paper, name) in zip(axes, columns):
        for fam in dict.fromkeys(family(l) for l in list(ours["label"]) + list(paper["label"])):
            color = FAMILY_COLORS.get(fam, "k")
            o = ours[ours["label"].map(family) == fam]
            p = paper[paper["label"].map(family) == fam]
            if len(o):
                ax.scatter(o[col_ours], o["natural"], s=60, color=color, label=f"{fam} (ours)")
            if len(p):
                ax.scatter(p[col_paper], p["natural"], s=60, facecolors="none", edgecolors=color,
                           label=f"{fam} (paper)")
        ax.set(xlabel=f"robust accuracy, {name} (%)", ylabel="clean accuracy (%)", title=f"Trade-off at {name}")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, y=1.02)
    return fig


def accuracy_against_eps(rows, title: str):
    """Robust accuracy against the budget, one line per run, one panel per norm."""
    import pandas as pd
    import seaborn as sns
    g = sns.relplot(pd.DataFrame(rows), x="eps_255", y="robust_acc", hue="label", col="norm", kind="line",
                    marker="o", height=3.6, aspect=1.1, facet_kws={"sharex": False}, palette="tab10")
    g.set_axis_labels("eps (x 1/255)", "PGD accuracy (%)")
    g.figure.suptitle(title, y=1.03)
    return g.figure


def differences(rows, title: str):
    """Paired SAM - ST differences with their 95 % intervals, per column, one colour per rho."""
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    cols = list(dict.fromkeys(df["column"]))
    rhos = sorted(df["rho"].unique())
    width = 0.8 / max(1, len(rhos))
    for k, rho in enumerate(rhos):
        d = df[df["rho"] == rho].set_index("column").loc[cols]
        x = [i + (k - (len(rhos) - 1) / 2) * width for i in range(len(cols))]
        lo = (d["mean"] - d["low"]).fillna(0)
        hi = (d["high"] - d["mean"]).fillna(0)
        ax.errorbar(x, d["mean"], yerr=[lo, hi], fmt="o", capsize=3, label=f"rho={rho:g}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(cols)), cols)
    ax.set(ylabel="SAM - ST (points)", title=title)
    ax.legend(fontsize=8, ncol=len(rhos))
    return fig


def length_axis(rows, title: str):
    """SAM - ST against training length (epochs): one panel per column (clean, each budget), one line per rho,
    each point the paired mean with its 95 % interval over seeds and test images (rows: tables.sam_vs_st_by_length)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.DataFrame(rows)
    cols = list(dict.fromkeys(df["column"]))
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.2), sharey=False)
    axes = [axes] if len(cols) == 1 else list(axes)
    rhos = sorted(df["rho"].unique())
    for ax, col in zip(axes, cols):
        for k, rho in enumerate(rhos):
            d = df[(df["column"] == col) & (df["rho"] == rho)].sort_values("epochs")
            x = d["epochs"] + (k - (len(rhos) - 1) / 2) * 0.15
            ax.errorbar(x, d["mean"], yerr=[(d["mean"] - d["low"]).fillna(0), (d["high"] - d["mean"]).fillna(0)],
                        fmt="o-", capsize=3, label=f"rho={rho:g}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(title=col, xlabel="epochs")
        ax.set_xticks(sorted(df["epochs"].unique()))
    axes[0].set_ylabel("SAM - ST (points)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
