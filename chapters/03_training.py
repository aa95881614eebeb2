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
# four L2 budgets. This chapter trains that grid for the chosen profile (or reuses the runs the
# cache already has), draws the learning curves, and measures what each method costs.
#
# | method | training attack | passes per step |
# |---|---|---|
# | ST | none | 1 forward/backward |
# | SAM | none; weights perturbed by $\rho\,g/\lVert g\rVert$ | 2 |
# | AT L-inf $\epsilon$ = 1, 2, 4, 8 /255 | PGD, (step, iterations) = (0.5/255, 5), (1/255, 5), (1/255, 10), (2/255, 10) | iterations + 1 |
# | AT L2 $\epsilon$ = 16, 32, 64, 128 /255 | PGD, step $\epsilon/2$, 5 iterations | 6 |
#
# SGD with momentum 0.9, weight decay 5e-4, learning rate 0.1 divided by 10 at 75 % and 90 % of the
# epochs, batch 128, random crop (4 px, reflect) and horizontal flip. Attacks run with BatchNorm in
# eval mode (the released code left it in train mode: one of the mistakes paper.md lists).

# %% tags=["parameters"]
PROFILE = "smoke"     # smoke | fast | paper
DATA = None           # data root; None means $SAMBOOK_DATA
DATASET = "cifar10"
SEEDS = None          # None: the profile's seeds (paper: 0, 1, 2)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from lib import executor, report
from lib.config import PROFILES, paper_grid
from lib.tables import COLUMNS, results_frame

sns.set_theme(style="whitegrid", context="notebook")
seeds = PROFILES[PROFILE].seeds if SEEDS is None else tuple(SEEDS)
grid = paper_grid(PROFILE, DATASET, seeds=seeds)
print(f"{len(grid)} runs: " + ", ".join(dict.fromkeys(c.label for c in grid)) + f"; seeds {list(seeds)}")

# %% [markdown]
# ## The runs
# Each run is a pure function of its configuration and is cached under `outputs/runs/`; a finished
# run is loaded, not trained again. The executor (local by default, Ray with `EXECUTOR=ray`)
# decides where the missing ones train.

# %%
report_ = executor.run_grid(grid, data_root=DATA, progress=False)
results = report_.finished
if report_.failed or report_.missing:
    print("NOT FINISHED:", {**report_.failed, **{n: "missing" for n in report_.missing}})
print(report.banner(PROFILE, results[0].metrics["data"]))
df = results_frame(results)
df[["label", "seed"] + COLUMNS].round(1)

# %% [markdown]
# ## Learning curves
# Clean test accuracy and PGD-10 accuracy at L-inf 1/255 after every epoch (on the first
# `epoch_eval_size` test images of the profile).

# %%
hist = pd.concat([r.history_frame().assign(label=r.config.label, method=r.config.method.upper(),
                                           seed=r.config.seed) for r in results])
long = hist.melt(id_vars=["label", "method", "epoch", "seed"], value_vars=["test_acc", "test_linf_1"],
                 var_name="metric", value_name="accuracy")
long["metric"] = long["metric"].map({"test_acc": "clean", "test_linf_1": "PGD L-inf 1/255"})
g = sns.relplot(long, x="epoch", y="accuracy", hue="label", col="metric", kind="line", height=3.5,
                aspect=1.2, palette="tab20", errorbar="sd")
g.set_axis_labels("epoch", "test accuracy (%)")
g.figure.suptitle(f"Learning curves, {DATASET}, {PROFILE} profile", y=1.03)
report.savefig(g.figure, f"03_learning_curves_{PROFILE}")
plt.show()

# %% [markdown]
# ## What each method costs
# Measured training time (wall clock of the training steps, without the per-epoch evaluation) and
# forward/backward passes per step. A PGD step with input-only gradients counts as one pass here;
# it costs about two thirds of a training pass (no weight gradients).

# %% tags=["nbval-ignore-output"]
cost = (df.groupby("label", sort=False)
          .agg(passes_per_step=("passes_per_step", "first"), train_seconds=("train_seconds", "mean"),
               images_per_second=("images_per_second", "mean")))
cost["relative to ST"] = cost["train_seconds"] / cost.loc["ST", "train_seconds"]
print(f"device: {results[0].metrics['device']}")
cost.round(2)

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
sns.barplot(cost.reset_index(), y="label", x="passes_per_step", color="tab:blue", ax=ax)
ax.set(title="Forward/backward passes per training step", xlabel="passes per step", ylabel="")
report.savefig(fig, "03_passes_per_step")
plt.show()
