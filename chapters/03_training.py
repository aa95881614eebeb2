# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Training the grid
#
# The paper's tables compare, on one architecture (PreActResNet-18) and one protocol, standard
# training (ST), SAM at several radii $\rho$, and PGD adversarial training (AT) at four L-inf and
# four L2 budgets. This chapter lists the grid of the chosen profile, trains what is missing (or,
# for the `cpu` profile, reads the committed results: the book never trains there), draws the
# learning curves, and measures what each method costs.
#
# | method | training attack | passes per step |
# |---|---|---|
# | ST | none | 1 forward/backward |
# | SAM | none; weights perturbed by $\rho\,g/\lVert g\rVert$ | 2 |
# | AT L-inf $\epsilon$ = 1, 2, 4, 8 /255 | PGD, (step, iterations) = (0.5/255, 5), (1/255, 5), (1/255, 10), (2/255, 10) | iterations + 1 |
# | AT L2 $\epsilon$ = 16, 32, 64, 128 /255 | PGD, step $\epsilon/2$, 5 iterations | 6 |
#
# The paper's optimiser: SGD with momentum 0.9, weight decay 5e-4, learning rate 0.1 divided by
# 10 at 75 % and 90 % of the epochs, batch 128, random crop (4 px, reflect) and horizontal flip.
# The `cpu` profile keeps everything but the schedule and the scale (a one-cycle learning rate,
# width 16, 3 epochs: see its pilot in the README). Attacks run with BatchNorm in eval mode (the
# released code left it in train mode: one of the mistakes paper.md lists).

# %% tags=["parameters"]
PROFILE = "smoke"     # smoke | cpu | fast | paper
DATA = None           # data root; None means $SAMBOOK_DATA
DATASET = "cifar10"
SEEDS = None          # None: the profile's seeds

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from lib import report
from lib.config import grid, profile
from lib.tables import results_frame

sns.set_theme(style="whitegrid", context="notebook")
GRID = report.book_grid(PROFILE)
configs = grid(GRID, PROFILE, DATASET, SEEDS)
p = profile(PROFILE)
print(f"{PROFILE} profile, {GRID} grid: {len(configs)} runs, seeds {sorted({c.seed for c in configs})}; "
      f"width {p.width}, {p.epochs} epochs, lr {p.lr} ({p.schedule}), batch {p.batch_size}")
pd.DataFrame([{"run": c.name, "label": c.label, "passes per step": c.spec.passes_per_step(c),
               "attack (step /255, steps)": f"{c.alpha * 255:g}, {c.steps}" if c.spec.adversarial else ""}
              for c in configs]).set_index("run")

# %% [markdown]
# ## The runs
# Each run is a pure function of its configuration and is cached under `outputs/runs/`; a finished
# run is loaded, not trained again. The executor (local by default, Ray with `EXECUTOR=ray`)
# decides where the missing ones train; each is then evaluated under the profile's protocols
# (chapter 4) and probed (chapters 2 and 5).

# %%
results, missing = report.results_for(PROFILE, GRID, DATASET, SEEDS, data_root=DATA)
print(report.missing_note(missing))

# %% tags=["nbval-ignore-output"]
print(report.ran_on(results))
print(report.banner(PROFILE, results[0].metrics["data"]))
df = results_frame(results)
df[["label", "seed", "natural", "paper_linf_1", "paper_linf_2", "paper_l2_16", "paper_l2_32"]].round(1)

# %% [markdown]
# ## Learning curves
# Clean test accuracy and PGD-10 accuracy at L-inf 1/255 (step eps/4, fp32) after every epoch,
# on the first test images of the profile (the band: one standard deviation over seeds).

# %% tags=["nbval-ignore-output"]
fig = report.learning_curves(results, f"Learning curves, {DATASET}, {PROFILE} profile")
report.savefig(fig, f"03_learning_curves_{PROFILE}")
plt.show()

# %% [markdown]
# ## What each method costs
# Measured training time (wall clock of the training steps, without the per-epoch evaluation) and
# forward/backward passes per step. A PGD step with input-only gradients counts as one pass here;
# it costs about two thirds of a training pass (no weight gradients). Runs trained at once in
# parallel processes on a shared machine: read the ratios, not the seconds.

# %% tags=["nbval-ignore-output"]
cost = (df.groupby("label", sort=False)
          .agg(passes_per_step=("passes_per_step", "first"), train_seconds=("train_seconds", "mean"),
               images_per_second=("images_per_second", "mean"), precision=("precision", "first")))
cost["relative to ST"] = cost["train_seconds"] / cost.loc["ST", "train_seconds"]
print(f"device: {results[0].metrics['device']}")
cost.round(2)

# %%
passes = pd.DataFrame([{"label": c.label, "passes per step": c.spec.passes_per_step(c)}
                       for c in configs]).drop_duplicates("label")
fig, ax = plt.subplots(figsize=(7, 3.8))
sns.barplot(passes, y="label", x="passes per step", color="tab:blue", ax=ax)
ax.set(title="Forward/backward passes per training step", xlabel="passes per step", ylabel="")
report.savefig(fig, f"03_passes_per_step_{PROFILE}")
plt.show()
