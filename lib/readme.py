"""The README's answer, generated from the committed runs (``make readme``).

README.md holds one block between :data:`BEGIN` and :data:`END` that no one types: the scale in one
sentence, the headline figure (SAM minus ST by budget, paired by seed, with 95 % intervals;
:data:`FIGURE`, committed) and one line per claim of the paper (its verdict and the number that
decides it), all computed here from the committed runs of the most real scale that has them
(:func:`headline_scale`). ``python -m lib.readme`` rewrites the block and the figure;
``--check`` only says whether they agree with the runs (``tests/test_readme.py`` does the same).
The site's first page (:mod:`lib.site`) opens with the same summary (:func:`summary_markdown`).

Only committed results are read (``outputs/runs`` of the checkout, never the run cache), and
nothing is trained or evaluated: the block is the same on every clone of one commit.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from . import paths
from .errors import SambookError
from .io import atomic_write, write_text

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
SUMMARY_BEGIN = "<!-- summary:begin -->"   # the README's one-page summary, which the site's first page opens with
SUMMARY_END = "<!-- summary:end -->"
SCALES = ("paper", "fast", "cpu-long", "cpu")   # most real first
FIGURE_REL = "outputs/readme/headline.png"     # committed (outputs/figures/ is make book's and never tracked)
MEASURE = "paper"                               # the paper's protocol (PGD-10) on every test image
RUNS_PROFILE = "cpu-long"                       # REPRODUCING.md's generated table of every run and its cost
RUNS_BEGIN = f"<!-- runs:{RUNS_PROFILE}:begin -->"
RUNS_END = f"<!-- runs:{RUNS_PROFILE}:end -->"


def readme_path() -> Path:
    return paths.REPO_ROOT / "README.md"


def reproducing_path() -> Path:
    return paths.REPO_ROOT / "REPRODUCING.md"


def figure_path() -> Path:
    return paths.REPO_ROOT / FIGURE_REL


# --------------------------------------------------------------------------------------------------
# Which scale, which runs


def _tracked_metrics(root: Path) -> set | None:
    """The ``metrics.json`` files under ``root`` that git tracks (resolved paths), or None where ``root`` is
    not in a git checkout (a copied working tree): then every finished run folder counts."""
    import subprocess
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=root, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    from .runs import METRICS
    # paths relative to ``root`` (git's default in a subfolder)
    return {(root / f).resolve() for f in out.stdout.decode().split("\0") if f.endswith("/" + METRICS)}


def _committed(configs, root=None) -> list:
    """The finished run of each config among the committed ones (None where there is none). A run folder that
    git does not track yet (a run still training or evaluating beside this, or one not committed) is left
    out, so the block is the same on every clone of one commit."""
    from . import runs
    root = paths.committed_runs_root() if root is None else Path(root)
    if not root.is_dir():
        return [None] * len(configs)
    tracked = _tracked_metrics(root)
    found = runs.finished_runs(configs, runs_root=root)
    if tracked is None:
        return found
    return [r if r is not None and (Path(r.path) / runs.METRICS).resolve() in tracked else None for r in found]


def has_st_and_sam(profile: str, root=None) -> bool:
    """Whether the committed runs of ``profile`` hold ST at every seed of the profile and at least one SAM
    radius of the core grid at every seed."""
    from .config import grid, profile as get_profile
    seeds = set(get_profile(profile).seeds)
    configs = [c for c in grid("core", profile) if c.method in ("st", "sam")]
    have: dict[str, set] = {}
    for c, r in zip(configs, _committed(configs, root)):
        if r is not None:
            have.setdefault(c.label, set()).add(c.seed)
    return have.get("ST", set()) >= seeds and any(k != "ST" and v >= seeds for k, v in have.items())


def headline_scale(root=None) -> str | None:
    """The most real profile of :data:`SCALES` whose committed runs hold ST and SAM at every seed."""
    from .config import PROFILES
    return next((p for p in SCALES if p in PROFILES and has_st_and_sam(p, root)), None)


def committed_frame(profile: str, root=None):
    """The committed runs of the profile's book grid (the grid chapter 4 judges the claims on) as
    :func:`lib.tables.results_frame`, and the runs themselves."""
    from . import report, tables
    from .config import grid
    configs = grid(report.book_grid(profile), profile)
    results = [r for r in _committed(configs, root) if r is not None]
    return tables.results_frame(results), results


# --------------------------------------------------------------------------------------------------
# The deciding number of a claim

_INTERVAL = re.compile(r"(?P<m>[+-]?\d+(?:\.\d+)?)x? \[(?P<lo>[+-]?\d+(?:\.\d+)?), (?P<hi>[+-]?\d+(?:\.\d+)?)\]")


def deciding(claim: dict) -> str:
    """The number a claim's verdict turns on: ``claim["deciding"]`` where :func:`lib.tables.check_claims`
    gives it; otherwise read from its evidence (``name: mean [low, high]; ...``): for a claim that holds
    the interval with the lowest bound (its weakest cell), for one that does not hold the one lying
    furthest below, else the one furthest from holding (the lowest bound)."""
    if claim.get("deciding"):
        return str(claim["deciding"])
    evidence = str(claim.get("evidence", ""))
    cells = []
    for part in evidence.split("; "):
        m = _INTERVAL.search(part)
        if m:
            cells.append((part[:m.end()].strip(), float(m["lo"]), float(m["hi"])))
    if not cells:
        return evidence
    if claim.get("verdict") == "does not hold":
        return min(cells, key=lambda c: c[2])[0]
    return min(cells, key=lambda c: c[1])[0]


# --------------------------------------------------------------------------------------------------
# The block


def _scale_sentence(profile: str, df, results) -> str:
    from . import tables
    from .config import profile as get_profile
    p, paper = get_profile(profile), get_profile("paper")
    m = results[0].metrics
    st = df.loc[df["label"] == "ST", "natural"]
    data = "CIFAR-10" if m.get("data_exact") else "a JPEG-compressed copy of CIFAR-10"
    seeds = sorted(df["seed"].unique())
    return (f"**Scale.** The `{profile}` profile: the paper's PreActResNet-18 topology at width {p.width} (the "
            f"paper's is {paper.width}), trained for {p.epochs} epochs (the paper: {paper.epochs}) on the {m['train_images']:,} training "
            f"images of {data} and tested on {m['test_images']:,}, seeds {', '.join(map(str, seeds))}; ST reaches "
            f"{st.mean():.1f} % clean accuracy (the paper's ST: {tables.PAPER['cifar10']['ST'][0]:.1f} %).")


def _budget(column: str) -> str:
    """A table column label (``Natural``, ``Linf 2/255``, ...) in the README's words: ``clean``, ``L-inf 2/255``."""
    from . import tables
    from .attacks import threat_label
    if column == "Natural":
        return "clean"
    return threat_label(next(k for k, v in tables.COLUMN_LABELS.items() if v == column))


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def in_short(rows, claims, seeds_expected: int) -> str:
    """The answer in plain words, from the figure's rows (SAM - ST by radius and budget) and the claims: for
    each radius, largest first, the budgets where SAM's robust accuracy is above ST's (the 95 % interval
    above zero), below it, or not told apart, and what it did to clean accuracy; then what AT bought over
    SAM (claim 3b's cells) where AT runs exist. A cell without an interval (one seed) counts as not told
    apart and says so."""
    from .stats import Estimate

    def est(r):
        return Estimate(r["mean"], r["low"], r["high"], seeds=int(r["seeds"]))

    def side(e):
        return "above" if e.resolved and e.low > 0 else "below" if e.resolved and e.high < 0 else "unclear"

    said = []
    for rho in sorted({r["rho"] for r in rows}, reverse=True):
        cells = [r for r in rows if r["rho"] == rho]
        clean = next((est(r) for r in cells if r["column"] == "Natural"), None)
        robust = [(_budget(r["column"]), est(r)) for r in cells if r["column"] != "Natural"]
        if not any(e.resolved for _, e in robust):
            n = max((e.seeds for _, e in robust), default=0)
            said.append(f"SAM with rho {rho:g} has no interval yet ({n} of {seeds_expected} seeds trained)")
            continue
        groups = {k: [(n, e) for n, e in robust if side(e) == k] for k in ("above", "below", "unclear")}
        parts = []
        if groups["above"]:
            n, best = max(groups["above"], key=lambda c: c[1].mean)
            parts.append(f"raised robust accuracy at {_listed([n for n, _ in groups['above']])} (most at {n}: "
                         f"{best.text(seeds_expected=seeds_expected)} points)")
        if groups["below"]:
            n, worst = min(groups["below"], key=lambda c: c[1].mean)
            parts.append(f"lowered it at {_listed([n for n, _ in groups['below']])} ({n}: "
                         f"{worst.text(seeds_expected=seeds_expected)})")
        if groups["unclear"]:
            parts.append(f"made no measurable difference{'' if parts else ' to robust accuracy'} at "
                         f"{_listed([n for n, _ in groups['unclear']])}")
        if clean is not None:
            c = clean.text(seeds_expected=seeds_expected)
            parts.append({"above": f"gained clean accuracy ({c})", "below": f"cost clean accuracy ({c})",
                          "unclear": f"did not measurably change clean accuracy ({c})"}[side(clean)])
        said.append(f"SAM with rho {rho:g} " + _listed(parts))
    text = ("**In short.** Against ST trained the same way (paired by seed and test image; points, each cell with its "
            "own 95 % interval over seeds and test images; the verdicts below correct for many cells): " + "; ".join(said) + ".")
    at = next((c for c in claims if c["id"] == "3b"), None)
    if at is not None and at.get("cells"):
        rho = max(r["rho"] for r in rows)
        found = _listed([f"{e.text(seeds_expected=seeds_expected)} points for AT trained at {k}"
                         for k, e in at["cells"].items()])
        text += f" Adversarial training (AT), robust accuracy at L-inf 2/255 minus SAM's at rho {rho:g}: {found}."
    return text


def _rows(df):
    from . import tables
    return tables.sam_vs_st(df, MEASURE)


def data_digest(rows) -> str:
    """A digest of the figure's numbers (stored in the PNG, so a test can tell a stale figure)."""
    blob = json.dumps([{k: (round(v, 6) if isinstance(v, float) else v) for k, v in sorted(r.items())}
                       for r in rows], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def headline_figure(rows, profile: str):
    """SAM minus ST by budget (clean first), one colour per radius, mean and 95 % interval; small."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = list(dict.fromkeys(r["column"] for r in rows))
    rhos = sorted({r["rho"] for r in rows})
    by = {(r["rho"], r["column"]): r for r in rows}
    seeds = max(r["seeds"] for r in rows)
    fig, ax = plt.subplots(figsize=(6.4, 2.9))
    width = 0.8 / max(1, len(rhos))
    for k, rho in enumerate(rhos):
        pts = [(i, by[(rho, c)]) for i, c in enumerate(cols) if (rho, c) in by]
        x = [i + (k - (len(rhos) - 1) / 2) * width for i, _ in pts]
        mean = [r["mean"] for _, r in pts]
        lo = [r["mean"] - r["low"] if r["low"] == r["low"] else 0.0 for _, r in pts]
        hi = [r["high"] - r["mean"] if r["high"] == r["high"] else 0.0 for _, r in pts]
        fewer = max(r["seeds"] for _, r in pts) if pts else seeds
        ax.errorbar(x, mean, yerr=[lo, hi], fmt="o", ms=4, capsize=2,
                    label=f"ρ = {rho:g}" + (f" ({fewer} of {seeds} seeds)" if fewer < seeds else ""))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(cols)), ["clean" if c == "Natural" else c.replace("Linf", "L∞") for c in cols])
    ax.set_ylabel("SAM − ST (points)")
    ax.set_title(f"SAM minus ST, paired by seed ({profile} profile, {seeds} seeds;\n"
                 f"95% intervals over seeds and test images)", fontsize=9)
    # beside the axes, where no point can sit under it
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="SAM", title_fontsize=7)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", lw=0.3, alpha=0.5)
    return fig


def save_figure(fig, target: Path, digest: str) -> Path:
    import matplotlib.pyplot as plt

    def write(p):
        fig.savefig(p, dpi=100, bbox_inches="tight", format="png",
                    metadata={"Software": None, "Description": f"sambook make readme; data {digest}"})
    atomic_write(target, write)
    plt.close(fig)
    return target


def figure_digest(path: Path) -> str | None:
    """The data digest a headline PNG was written with (None: no such PNG or no digest in it)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            desc = im.info.get("Description", "")
    except (OSError, ValueError):
        return None
    m = re.search(r"data ([0-9a-f]{16})", desc)
    return m.group(1) if m else None


def block(root=None, figure_src: str = FIGURE_REL) -> tuple[str, list, str | None]:
    """(the Markdown between the markers, the figure's rows, the scale); no figure is written."""
    from . import tables
    from .config import profile as get_profile
    scale = headline_scale(root)
    head = [BEGIN, "<!-- generated by `make readme` from the committed runs; tests/test_readme.py fails when it "
                   "disagrees with them -->"]
    if scale is None:
        return "\n".join(head + ["No committed runs hold ST and SAM at every seed of a profile yet.", END]), [], None
    df, results = committed_frame(scale, root)
    rows = _rows(df)
    seeds = int(df["seed"].nunique())
    claims = tables.check_claims(df, MEASURE)
    lines = head + [_scale_sentence(scale, df, results), "", in_short(rows, claims, len(get_profile(scale).seeds)), "",
                    f"![SAM minus ST in clean and robust accuracy at each budget, {scale} profile]({figure_src})", "",
                    f"*SAM minus ST at the same seed, in points, under the paper's protocol (PGD-10) on "
                    f"{int(df['paper_n'].min()):,} test images; dots: the mean over {seeds} seeds"
                    f"{' (fewer where the legend says so)' if any(r['seeds'] < seeds for r in rows) else ''}; bars: 95 % "
                    f"intervals over seeds and test images; above zero SAM is better.* The paper's claims at this scale "
                    f"(chapter 4 derives each verdict):", "",
                    "| claim | verdict | deciding number |", "|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {deciding(c)} |".replace("\n", " "))
    rules = tables.claim_rules(df)
    lines += ["", "<details><summary>The rule behind each verdict</summary>", "",
              "Each cell is a paired contrast with its 95 % interval over seeds and test images.", "",
              "| claim | cells | holds when | does not hold when | multiplicity |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['cells']} | {r['holds']} | {r['does not hold']} | {r['multiplicity']} |"
              for k, r in rules.iterrows()]
    lines += ["", f"Otherwise: {rules.attrs['otherwise']}.", "", "</details>"]
    lines += length_sentence(scale, root)
    lines.append(END)
    return "\n".join(lines), rows, scale


LONG = ("cpu", "cpu-long")        # the two CPU scales: the same network and data, 2 and 10 epochs


def length_sentence(scale: str, root=None) -> list[str]:
    """One sentence on how SAM - ST moved with training length: from the `cpu` scale's runs, through the
    committed runs of the training-length axis, to the longer scale's (each length may be partial: its
    cell says at how many seeds), or nothing where the two ends have no pair."""
    import pandas as pd

    from . import tables
    from .config import PROFILES, grid
    if scale not in LONG:
        return []
    frames = [committed_frame(s, root)[0] for s in LONG]
    if any(f.empty for f in frames):
        return []
    axis = [r for r in _committed(grid("length", LONG[1]), root) if r is not None]
    parts_ = frames + ([tables.results_frame(axis)] if axis else [])
    rows = pd.DataFrame(tables.sam_vs_st_by_length(pd.concat(parts_, ignore_index=True)))
    rows = rows[rows["seeds"] > 0] if not rows.empty else rows
    if rows.empty or rows["epochs"].nunique() < 2:
        return []
    short, long = PROFILES[LONG[0]].epochs, PROFILES[LONG[1]].epochs
    want = len(PROFILES[LONG[1]].seeds)
    at = rows[rows["epochs"] == long]
    parts, ends = [], {}
    for rho in sorted(at["rho"].unique()):
        for col in ("Natural", tables.COLUMN_LABELS["linf_2"]):
            cells = rows[(rows["rho"] == rho) & (rows["column"] == col)].sort_values("epochs")
            if cells.empty or cells["epochs"].min() != short or cells["epochs"].max() != long:
                continue
            said, est = [], []
            for k, r in enumerate(cells.itertuples()):
                est.append(tables.Estimate(r.mean, r.low, r.high, seeds=int(r.seeds)))
                said.append(f"{est[-1].text(seeds_expected=want)} after {r.epochs}" + (" epochs" if k == 0 else ""))
            ends[rho, col] = (est[0], est[-1])
            parts.append(f"rho {rho:g} {_budget(col)}: " + ", ".join(said))
    if not parts:
        return []
    seeds = int(at["seeds"].max())
    between = sorted(set(rows["epochs"]) - {short, long})
    via = f", through {' and '.join(str(e) for e in between)} epochs," if between else ""
    moved = gap_moves(rows.to_dict("records")) + paired_moves(pd.concat(parts_, ignore_index=True))
    return ["", f"**Training longer.** {_length_lead(ends, short, long, want)}{moved}{verdict_moves(*frames)}", "",
            "<details><summary>SAM minus ST at every length</summary>", "",
            f"SAM minus ST (points, paper protocol), as training grows from the `{LONG[0]}` scale ({short} epochs){via} "
            f"to the `{LONG[1]}` scale ({long} epochs, {_seed_count(seeds, want)}; chapter 4 draws every budget): "
            + "; ".join(parts) + ".", "", "</details>"]


def _length_lead(ends: dict, short: int, long: int, want: int) -> str:
    """The lead of the README's training-length paragraph: SAM minus ST at both ends of the length axis, clean
    and at L-inf 2/255, for the largest radius whose four end cells all have an interval (else the largest)."""
    from . import tables
    cols = ("Natural", tables.COLUMN_LABELS["linf_2"])
    full = [rho for rho in {r for r, _ in ends}
            if all((rho, c) in ends and all(e.resolved for e in ends[rho, c]) for c in cols)]
    rho = max(full) if full else max(r for r, _ in ends)
    told = [f"from {a.text(seeds_expected=want)} to {b.text(seeds_expected=want)} {'in clean accuracy' if col == 'Natural' else 'at ' + _budget(col)}"
            for (r, col), (a, b) in ends.items() if r == rho]
    return (f"From the `{LONG[0]}` scale ({short} epochs) to the `{LONG[1]}` scale ({long} epochs), SAM minus ST at rho "
            f"{rho:g} went {' and '.join(told)} (points, paper protocol; every radius and length below). ")


def gap_moves(rows: list[dict]) -> str:
    """One sentence: the cells (rho, clean or budget) where SAM - ST changed between the shortest and the longest
    length by :func:`lib.tables.gap_change_by_length`'s rule (Holm over every cell), or that none did."""
    from . import tables
    changes = [r for r in tables.gap_change_by_length(rows) if r["word"] != "no interval"]
    if not changes:
        return ""
    return _moves(changes, f"From {changes[0]['from']} to {changes[0]['to']} epochs, the change in SAM minus ST "
                           f"(later minus earlier, 95 % interval; the two lengths' networks and test images taken as "
                           f"independent; Holm over {len(changes)} cells): ")


def paired_moves(frame) -> str:
    """The same sentence for :func:`lib.tables.gap_change_paired`: the change between two lengths of one profile,
    paired by seed and test image (cpu-long: 4 and 10 epochs, the first 2,000 test images)."""
    from . import tables
    changes = [r for r in tables.gap_change_paired(frame) if r["word"] != "no interval"]
    if not changes:
        return ""
    r = changes[0]
    return _moves(changes, f"Paired within `{r['profile']}` instead (from {r['from']} to {r['to']} epochs, the same "
                           f"seeds and the first {min(c['change'].images for c in changes):,} test images at both "
                           f"lengths; Holm over {len(changes)} cells): ")


def _moves(judged: list[dict], head: str) -> str:
    from .stats import fmt_p
    moved = [r for r in judged if r["word"] != "no change shown"]

    def cell(r):
        return f"rho {r['rho']:g} {_budget(r['column'])} {r['change'].text()} (Holm p {fmt_p(r['p_holm'])})"
    if not moved:
        return head + "no cell changed measurably. "
    gained = [cell(r) for r in moved if r["word"] == "SAM gained on ST"]
    lost = [cell(r) for r in moved if r["word"] == "SAM lost ground"]
    said = ([f"SAM gained on ST at {_listed(gained)}"] if gained else []) + (
        [f"SAM lost ground at {_listed(lost)}"] if lost else [])
    rest = len(judged) - len(moved)
    return head + "; ".join(said) + (f"; no change shown in the other {rest} cell{'s' * (rest > 1)}. " if rest else ". ")


def _seed_count(have: int, want: int) -> str:
    return f"{have} seeds" if have >= want else f"{have} of {want} seeds trained so far"


def verdict_moves(short, long) -> str:
    """One sentence: which claims' verdicts differ between the two CPU scales (``short``, ``long``: their
    results frames), on the claims the longer scale has runs for (and how many of their cells)."""
    from . import tables
    a = {c["id"]: c for c in tables.check_claims(short, MEASURE)}
    b = {c["id"]: c for c in tables.check_claims(long, MEASURE) if c["cells"]}    # judged on some runs

    def word(c):
        return c["verdict"].replace(" at this scale", "")
    def name(cid):         # claim 2 is judged per budget: "2 linf_1" reads "2 at L-inf 1/255"
        from .attacks import threat_label
        k, _, t = cid.partition(" ")
        return f"{k} at {threat_label(t)}" if t else k
    moved = [f"{name(cid)} {word(a[cid])} → {word(b[cid])}" + (f" ({b[cid]['coverage']})" if b[cid].get("coverage") else "")
             for cid in a if cid in b and a[cid]["verdict"] != b[cid]["verdict"]]
    same = [name(cid) for cid in a if cid in b and a[cid]["verdict"] == b[cid]["verdict"]]
    text = f"Verdicts from `{LONG[0]}` to `{LONG[1]}`: " + ("; ".join(moved) if moved else "none changed")
    if same:
        text += f"; unchanged: {', '.join(same)}"
    waiting = sorted({cid.split()[0] for cid in set(a) - set(b)})
    if waiting:
        text += f"; not judged at `{LONG[1]}` until its runs are trained: {', '.join(waiting)}"
    return text + "."


def runs_table(profile: str = RUNS_PROFILE, root=None) -> str:
    """REPRODUCING.md's block: every committed run of ``profile`` (its core grid and its training-length axis)
    with its accuracies under the paper protocol and what it cost: training, evaluations and probes (the
    seconds each record measured), AutoAttack apart. Markers included."""
    import json

    from . import tables
    from .attacks import THREAT_NAMES, threat_label
    from .config import grid
    from .protocols import evaluations
    configs = grid("core", profile) + grid("length", profile)
    lines = [RUNS_BEGIN.replace(RUNS_PROFILE, profile),
             "<!-- generated by `make readme` from the committed runs; tests/test_readme.py fails when it disagrees "
             "with them -->",
             "| run | epochs | seed | clean | " + " | ".join(threat_label(t) for t in THREAT_NAMES) +
             " | test images | training s | evaluations and probes s | AutoAttack s | trained |",
             "|" + "---|" * (9 + len(THREAT_NAMES))]
    found = [r for r in _committed(configs, root) if r is not None]
    for r in sorted(found, key=lambda r: (r.config.method != "st", r.config.method, r.config.rho, r.config.epochs,
                                           r.config.seed)):
        row = tables.run_row(r)
        recs = evaluations(r)
        aa = sum(x["seconds"] for x in recs if x["protocol"].startswith("autoattack"))
        other = sum(x["seconds"] for x in recs if not x["protocol"].startswith("autoattack"))
        for f in sorted((Path(r.path) / "probes").glob("*.json")):
            other += float(json.loads(f.read_text()).get("seconds") or 0.0)
        cells = [r.config.label, str(r.config.epochs), str(r.config.seed), f"{row['natural']:.2f}",
                 *(f"{row[f'paper_{t}']:.2f}" for t in THREAT_NAMES), f"{row['paper_n']:,}",
                 f"{r.metrics['train_seconds']:,.0f}", f"{other:,.0f}", f"{aa:,.0f}" if aa else "",
                 str(r.metrics.get("date", ""))[:10]]
        lines.append("| " + " | ".join(cells) + " |")
    if not found:
        lines.append("| (no committed runs yet) |" + " |" * (8 + len(THREAT_NAMES)))
    lines.append(RUNS_END.replace(RUNS_PROFILE, profile))
    return "\n".join(lines)


def _runs_block(text: str) -> str | None:
    i, j = text.find(RUNS_BEGIN), text.find(RUNS_END)
    return text[i:j + len(RUNS_END)] if 0 <= i < j else None


def current_block(text: str) -> str:
    """The README's block, markers included (a one-line error when the markers are missing)."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise SambookError(f"README.md has no result block: it needs a line {BEGIN} and, after it, {END}")
    return text[i:j + len(END)]


def replace_block(text: str, new: str) -> str:
    old = current_block(text)
    return text.replace(old, new, 1)


def summary(figure_src: str, readme_text: str | None = None, root=None) -> tuple[str, list, str | None]:
    """(the README's one-page summary, the figure's rows, the scale): the text between :data:`SUMMARY_BEGIN`
    and :data:`SUMMARY_END` with the result block generated afresh and the figure at ``figure_src``, what the
    site's first page opens with. The text is empty when the README has no summary markers."""
    text = readme_path().read_text() if readme_text is None else readme_text
    i, j = text.find(SUMMARY_BEGIN), text.find(SUMMARY_END)
    if i < 0 or j < i:
        return "", [], None
    part, rows, scale = text[i + len(SUMMARY_BEGIN):j], [], None
    if BEGIN in part and END in part:
        new, rows, scale = block(root, figure_src)
        part = replace_block(part, new)
    return part.strip() + "\n", rows, scale


def summary_markdown(figure_src: str, readme_text: str | None = None, root=None) -> str:
    """:func:`summary`'s text only."""
    return summary(figure_src, readme_text, root)[0]


def write(root=None) -> tuple[Path, Path, str | None]:
    """Rewrite README.md's block, the headline figure and REPRODUCING.md's table of runs from the committed runs."""
    text = readme_path().read_text()
    new, rows, scale = block(root)
    if rows:
        save_figure(headline_figure(rows, scale), figure_path(), data_digest(rows))
    write_text(readme_path(), replace_block(text, new))
    rep = reproducing_path().read_text() if reproducing_path().exists() else ""
    if _runs_block(rep) is not None:
        write_text(reproducing_path(), rep.replace(_runs_block(rep), runs_table(root=root), 1))
    return readme_path(), figure_path(), scale


def check(root=None) -> list[str]:
    """What disagrees with the committed runs: [] when the README's block and the figure are current."""
    problems = []
    new, rows, _ = block(root)
    if current_block(readme_path().read_text()) != new:
        problems.append("README.md's result block")
    if rows and figure_digest(figure_path()) != data_digest(rows):
        problems.append(FIGURE_REL)
    rep = reproducing_path().read_text() if reproducing_path().exists() else ""
    if _runs_block(rep) is not None and _runs_block(rep) != runs_table(root=root):
        problems.append(f"REPRODUCING.md's table of the {RUNS_PROFILE} runs")
    return problems


def main(argv=None) -> int:
    from .cli import ArgumentParser, guarded, parse
    ap = ArgumentParser(prog="python -m lib.readme",
                        description="Write README.md's result block and the headline figure from the committed runs "
                                    "(make readme).")
    ap.add_argument("--check", action="store_true", help="only say whether they agree with the runs (exit 1 if not)")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args

    def command() -> int:
        t0 = time.perf_counter()
        if args.check:
            stale = check()
            if stale:
                verb = "disagree" if len(stale) > 1 else "disagrees"
                print(f"readme: {' and '.join(stale)} {verb} with the committed runs: run make readme")
                return 1
            print("readme: README.md's result block and the headline figure agree with the committed runs")
            return 0
        readme, figure, scale = write()
        size = figure.stat().st_size // 1024 if figure.exists() else 0
        print(f"readme: {readme.name} result block and {FIGURE_REL} ({size} KB) from the committed {scale} runs "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    return guarded(command)


if __name__ == "__main__":
    raise SystemExit(main())
