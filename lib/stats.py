"""Intervals over seeds and test images, and the rule that turns a set of them into a verdict.

Every comparison of the book is a linear contrast of accuracies measured on the same test images
by models trained from several seeds: a paired difference (SAM minus ST), or a slope against rho.
Its per-example form is a matrix ``D`` (test images x seeds): for each image and seed, the contrast
of the 0/1 outcomes (correct, or robust) of the models involved. The estimate is the mean of ``D``
in points; its noise has two sources that the book's readers care about:

- **seeds**: another seed trains another network (the spread of the per-seed means ``D.mean(0)``);
- **test images**: another draw of test images from the same distribution (the spread of the
  per-image means ``D.mean(1)``; both arms of a pair are measured on the same images).

:func:`estimate` adds the two variance components (``var(per-seed means)/S + var(per-image
means)/n``; the interaction is counted in both, so the sum errs wide) and takes a t quantile with
Welch-Satterthwaite degrees of freedom: with 3 seeds and a seed-dominated contrast it is the t
interval over seeds (2 degrees of freedom), with an image-dominated one it approaches the normal
interval over images; it is never narrower than the t interval over seeds alone (a guard:
Satterthwaite's degrees of freedom are optimistic when a component rests on three seeds). :func:`crossed_bootstrap_se` is the check: it resamples seeds and images
independently (a two-way bootstrap). Both err wide by the image-by-seed interaction (the formula
counts it once more than the truth, the bootstrap more than that), and the bootstrap shrinks the
seed part by (S-1)/S; on the committed runs the two agree within about a fifth.

What an interval does NOT cover: another architecture, width, schedule, dataset, or the JPEG copy
of CIFAR-10 against the official one. Intervals are 95 % and two-sided.

:func:`judge` turns the intervals of a claim's cells into a verdict by one rule: the claim *holds*
when every cell's interval lies beyond the margin in the claim's direction (an intersection-union
test, which needs no correction for the number of cells); it *does not hold* when some cell lies
beyond the margin the other way after Holm's correction over the cells (family-wise 5 %); it is
*not resolved at this scale* otherwise, and always when a cell has a single seed or no spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95
ALPHA = 0.05            # family-wise error of a refutation (Holm over a claim's cells)
HOLDS, REFUTED, OPEN = "holds", "does not hold", "not resolved at this scale"


@dataclass(frozen=True)
class Estimate:
    """A contrast in points with its 95 % interval and what the interval covers."""

    mean: float
    low: float = math.nan
    high: float = math.nan
    se: float = math.nan
    se_seed: float = math.nan
    se_image: float = math.nan      # 0 where no per-image outcomes were available (seeds only)
    df: float = math.nan
    seeds: int = 0
    images: int = 0                 # test images per seed behind the contrast (0: per-seed numbers only)

    @property
    def resolved(self) -> bool:
        return self.low == self.low

    @property
    def covers(self) -> str:
        if not self.resolved:
            return "nothing (one seed, or no spread over seeds)"
        if self.images > 1 and self.se_seed != self.se_seed:
            return "test images only (these seeds' networks held fixed)"
        return "seeds and test images" if self.images > 1 else "seeds only"

    def p_value(self, margin: float = 0.0) -> float:
        """Two-sided p-value of the contrast against ``margin`` (NaN when there is no interval), the test
        that matches the interval: the larger of the p-values over both components (Satterthwaite's df)
        and over seeds alone, so p < 0.05 exactly when the 95 % interval excludes ``margin``."""
        if not self.resolved:
            return math.nan
        if self.se == 0:
            return 0.0 if self.mean != margin else 1.0
        p = float(2 * st.t.sf(abs(self.mean - margin) / self.se, self.df))
        if self.seeds > 1 and self.se_seed > 0 and self.images > 1:
            p = max(p, float(2 * st.t.sf(abs(self.mean - margin) / self.se_seed, self.seeds - 1)))
        return p

    def text(self, digits: int = 1, seeds_expected: int | None = None) -> str:
        """``+6.5 [+2.8, +10.3]``, or ``+6.5 (1 seed)``; ``, 2 of 3 seeds`` where seeds are missing."""
        f = f"{{:+.{digits}f}}"
        short = (f" ({self.seeds} of {seeds_expected} seeds)" if seeds_expected and self.seeds < seeds_expected
                 else "")
        if self.resolved:
            return f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]{short}"
        if self.seeds < 2:
            return f"{f.format(self.mean)} (1 seed)" if not short else f"{f.format(self.mean)} (1 of {seeds_expected} seeds)"
        return f"{f.format(self.mean)} ({self.seeds} seeds, no spread){short}"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "se": self.se, "se_seed": self.se_seed,
                "se_image": self.se_image, "df": self.df, "seeds": self.seeds, "images": self.images}


def _no_spread(v: np.ndarray) -> bool:
    return float(np.ptp(v)) <= 1e-9 * max(1.0, float(np.abs(v).max()))


def estimate(d, level: float = LEVEL, scale: float = 100.0) -> Estimate:
    """The mean of ``d`` (images x seeds, or a 1-D vector of per-seed values) times ``scale`` and its
    interval over seeds and test images (module doc). A 1-D input, or a matrix with one row, has no
    image component: its interval is the t interval over seeds. One seed, or seeds whose means are
    all equal, give no interval (a zero spread over seeds is no estimate of the noise)."""
    d = np.asarray(d, dtype=float)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.size == 0:
        return Estimate(math.nan)
    n, s = d.shape
    m = float(d.mean()) * scale
    per_seed = d.mean(axis=0) * scale
    if s < 2 or _no_spread(per_seed):
        return Estimate(m, seeds=s, images=n if n > 1 else 0)
    v_seed = float(per_seed.var(ddof=1)) / s
    v_img = float((d.mean(axis=1) * scale).var(ddof=1)) / n if n > 1 else 0.0
    v = v_seed + v_img
    # Welch-Satterthwaite: the two components' degrees of freedom are S - 1 and n - 1
    denom = v_seed ** 2 / (s - 1) + (v_img ** 2 / (n - 1) if n > 1 else 0.0)
    df = v ** 2 / denom if denom > 0 else float(s - 1)
    q = 0.5 + level / 2
    # never narrower than the t interval over seeds alone: Satterthwaite's degrees of freedom are optimistic
    # when one component rests on three seeds, and adding a source of noise must not shrink an interval
    half = max(float(st.t.ppf(q, df)) * math.sqrt(v), float(st.t.ppf(q, s - 1)) * math.sqrt(v_seed))
    return Estimate(m, m - half, m + half, math.sqrt(v), math.sqrt(v_seed), math.sqrt(v_img), df, s,
                    n if n > 1 else 0)


def images_only(d, level: float = LEVEL, scale: float = 100.0) -> Estimate:
    """The mean of ``d`` (images x seeds) times ``scale`` with a t interval over test images alone: the
    per-image means over the given seeds, as if their networks were the only ones (no seed noise). For a
    check run on too few seeds for :func:`estimate` (AutoAttack on one seed): it says whether these
    networks differ on this test distribution, not whether another seed's would."""
    d = np.asarray(d, dtype=float)
    if d.ndim == 1:
        d = d[:, None]
    n = d.shape[0]
    if d.ndim != 2 or n < 2:
        return Estimate(math.nan)
    per_image = d.mean(axis=1) * scale
    m = float(per_image.mean())
    se = float(per_image.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return Estimate(m, m, m, 0.0, math.nan, 0.0, float(n - 1), d.shape[1], n)
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * se
    return Estimate(m, m - half, m + half, se, math.nan, se, float(n - 1), d.shape[1], n)


def crossed_bootstrap_se(d, reps: int = 2000, seed: int = 0, scale: float = 100.0) -> float:
    """Standard error of ``d.mean()`` (images x seeds) by resampling seeds and test images independently,
    with replacement (a two-way, crossed bootstrap): the check of :func:`estimate`'s formula."""
    d = np.asarray(d, dtype=float)
    n, s = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(reps)
    for b in range(reps):
        rows = rng.integers(0, n, n)
        cols = rng.integers(0, s, s)
        # the mean over the resampled grid = weighted mean by how often each row and column was drawn
        out[b] = np.bincount(rows, minlength=n) @ d @ np.bincount(cols, minlength=s) / (n * s)
    return float(out.std(ddof=1)) * scale


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


@dataclass(frozen=True)
class Judgement:
    verdict: str
    deciding: str          # the cell and number the verdict turns on
    adjusted: dict         # cell -> Holm-adjusted p-value against the margin


def fmt_p(p: float) -> str:
    """``= 0.013``, ``< 0.0001``."""
    return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"


def fmt_margin(m: float) -> str:
    """0 -> ``0``, -0.5 -> ``-0.5``, 1.5 -> ``+1.5``."""
    return "0" if m == 0 else f"{m:+g}"


def judge(cells: dict, direction: int = +1, margin: float = 0.0, alpha: float = ALPHA, unit: str = "",
          seeds_expected: int | None = None) -> Judgement:
    """The verdict of a claim from its cells ({name: Estimate}) by the module's rule: ``holds`` when every
    interval lies beyond ``margin`` in ``direction``; ``does not hold`` when a cell lies beyond it the other
    way with a Holm-adjusted p-value under ``alpha`` over all the cells; else not resolved at this scale."""
    def show(name):
        return f"{name}: {cells[name].text(seeds_expected=seeds_expected)}{unit}"
    if not cells:
        return Judgement(OPEN, "no cells", {})
    names = list(cells)
    if any(not cells[k].resolved for k in names):
        k = next(k for k in names if not cells[k].resolved)
        return Judgement(OPEN, show(k) + " (no interval)", {})
    adj = dict(zip(names, holm([cells[k].p_value(margin) for k in names])))
    beyond = [k for k in names if (cells[k].low > margin if direction > 0 else cells[k].high < margin)]
    if len(beyond) == len(names):
        worst = min(names, key=lambda k: direction * ((cells[k].low if direction > 0 else cells[k].high) - margin))
        return Judgement(HOLDS, show(worst) + " (the weakest cell)", adj)
    against = [k for k in names if adj[k] < alpha and direction * (cells[k].mean - margin) < 0]
    if against:
        k = min(against, key=lambda k: adj[k])
        how = f"Holm p {fmt_p(adj[k])} over {len(names)} cells" if len(names) > 1 else f"p {fmt_p(adj[k])}"
        return Judgement(REFUTED, f"{show(k)}, {how}", adj)
    k = min((k for k in names if k not in beyond), key=lambda k: direction * (cells[k].mean - margin))
    return Judgement(OPEN, show(k) + " (the cell furthest from holding)", adj)


def judge_each(cells: dict, direction: int = +1, margin: float = 0.0, alpha: float = ALPHA, unit: str = "",
               seeds_expected: int | None = None, family: str = "cells") -> dict:
    """One verdict per cell ({name: Estimate} -> {name: Judgement}) for a claim stated separately at each cell
    (claim 2 at each budget): Holm's correction over the cells, in both directions, so that the family of
    verdicts given at once has a 5 % family-wise error. A cell ``holds`` when it lies beyond ``margin`` in
    ``direction`` with a Holm-adjusted p-value under ``alpha``; ``does not hold`` when it lies beyond it the
    other way with one; else not resolved at this scale. A cell without an interval is not resolved and
    counts in the family with p = 1 (conservative)."""
    names = list(cells)
    raw = [cells[k].p_value(margin) if cells[k].resolved else 1.0 for k in names]
    adj = dict(zip(names, holm(raw)))
    out = {}
    for k in names:
        e = cells[k]
        shown = f"{k}: {e.text(seeds_expected=seeds_expected)}{unit}"
        if not e.resolved:
            out[k] = Judgement(OPEN, shown + " (no interval)", adj)
            continue
        how = f"Holm p {fmt_p(adj[k])} over {len(names)} {family}" if len(names) > 1 else f"p {fmt_p(adj[k])}"
        side = direction * (e.mean - margin)
        verdict = HOLDS if adj[k] < alpha and side > 0 else REFUTED if adj[k] < alpha and side < 0 else OPEN
        out[k] = Judgement(verdict, f"{shown}, {how}", adj)
    return out


def change(a: Estimate, b: Estimate, level: float = LEVEL) -> Estimate:
    """``b - a`` for two estimates of other networks on other (or partly the same) test images: a contrast at
    two training lengths, say. Their noise is added as if independent (each component: seeds and images), which
    errs wide where the two share seeds' initialisations or test images (positively correlated noise cancels
    in a difference); degrees of freedom by Welch-Satterthwaite over the four components, and never narrower
    than the t interval over the seed components alone with the fewer seeds' degrees of freedom (the guard of
    :func:`estimate`, so that :meth:`Estimate.p_value` < 0.05 exactly when the interval excludes zero). No
    interval where either side has none."""
    m = b.mean - a.mean
    seeds, images = min(a.seeds, b.seeds), min(a.images, b.images)
    if not (a.resolved and b.resolved):
        return Estimate(m, seeds=seeds, images=images)
    def var(x):            # a missing component (no per-image outcomes: NaN) adds nothing
        return x * x if x == x else 0.0
    parts = [(var(a.se_seed), a.seeds - 1), (var(b.se_seed), b.seeds - 1),
             (var(a.se_image), a.images - 1), (var(b.se_image), b.images - 1)]
    parts = [(v, d) for v, d in parts if v > 0 and d > 0]
    v = sum(v for v, _ in parts)
    v_seed, v_img = var(a.se_seed) + var(b.se_seed), var(a.se_image) + var(b.se_image)
    denom = sum(v * v / d for v, d in parts)
    df = v ** 2 / denom if denom > 0 else float(seeds - 1)
    q = 0.5 + level / 2
    half = max(float(st.t.ppf(q, df)) * math.sqrt(v), float(st.t.ppf(q, seeds - 1)) * math.sqrt(v_seed))
    return Estimate(m, m - half, m + half, math.sqrt(v), math.sqrt(v_seed), math.sqrt(v_img), df, seeds, images)


def config_spearman(x, y, groups) -> tuple[float, float, int]:
    """Spearman's rank correlation over configurations, not runs: the values of each group (one
    configuration's seeds) are averaged first, so seeds are never counted as independent samples.
    Returns (rho, two-sided p-value, number of configurations)."""
    import pandas as pd
    g = pd.DataFrame({"x": np.asarray(x, float), "y": np.asarray(y, float), "g": list(groups)}).groupby("g").mean()
    if len(g) < 3:
        return math.nan, math.nan, len(g)
    r = st.spearmanr(g["x"], g["y"])
    return float(r.statistic), float(r.pvalue), len(g)


def ratio_interval(values, level: float = LEVEL) -> Estimate:
    """The geometric mean of per-seed ratios (a training time over ST's: no test images behind it) with the t
    interval over seeds taken on the log scale and mapped back: a ratio's interval stays above zero and is
    symmetric in the ratio and its inverse (a difference of arithmetic means gave "1.6x [-0.8, 3.9]"). A
    ratio that is missing, zero or negative is an error, never dropped."""
    v = np.asarray(list(values), dtype=float)
    if not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(f"ratios must be positive and finite, got {v.tolist()}")
    if v.size == 0:
        return Estimate(math.nan)
    e = estimate(np.log(v), level=level, scale=1.0)

    def back(x):
        return math.exp(x) if x == x else math.nan
    return Estimate(back(e.mean), back(e.low), back(e.high), e.se, e.se_seed, e.se_image, e.df, e.seeds, e.images)
