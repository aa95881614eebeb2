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
# # 6. Glossary
#
# The words, symbols and names the book uses, each with one meaning. Lists of settings (methods,
# budgets, protocols, profiles) are printed from the code that uses them, so they cannot drift from it.

# %% tags=["parameters"]
PROFILE = "cpu-long"  # the glossary is the same for every profile

# %% [markdown]
# ## Symbols
#
# - $x$, $y$: an image (pixels in $[0, 1]$) and its label. $\delta$: a perturbation of the image;
#   $x_{adv} = x + \delta$ an adversarial example.
# - $\theta$: all the weights of a network, as one vector; $L(\theta)$ the training loss
#   (cross-entropy) on a batch; $g = \nabla_\theta L$ its gradient.
# - $w$: in chapter 1 only, the one free weight of the toy model (the weight on its robust feature).
# - $\eta$: in chapter 1 only, the mean shift of a non-robust feature of the toy model.
# - $\epsilon$ (*eps*): an attack's **budget**, the largest perturbation allowed, in the L-inf or the L2
#   norm. $\alpha$: the size of one attack step.
# - $\rho$ (*rho*): SAM's **radius**, the L2 size of its weight perturbation.
# - lr: the learning rate. $\gamma$: AWP's relative weight perturbation per layer (also the relative size
#   of the flatness probe's perturbation, chapter 5). $\beta$: TRADES's weight on its KL term. $\lambda$:
#   ARoW's. $\xi$: ASAM's offset in $T = |\theta| + \xi$.
#
# ## Budgets
#
# Budgets are fractions of the pixel range, written in units of 1/255, the size of one grey level
# of an 8-bit image: **L-inf 2/255** lets every pixel move by up to two grey levels; **L2 32/255**
# bounds the Euclidean length of the whole perturbation (all 3,072 pixel values) by 32/255. An
# **L-inf** budget bounds the largest change of any pixel, an **L2** budget the total length.

# %%
from IPython.display import Markdown, display

from lib import glossary

display(Markdown(glossary.budgets_markdown()))

# %% [markdown]
# ## Methods
#
# - **ST** (standard training): minimise the average cross-entropy on clean training images.
# - **SAM** (sharpness-aware minimisation, Foret et al. 2021): minimise the worst loss in an L2 ball
#   of radius $\rho$ around the weights, $\min_\theta \max_{\lVert e\rVert_2 \le \rho} L(\theta + e)$,
#   with the inner maximum taken by one step: $e = \rho\, g/\lVert g\rVert_2$, then the gradient at
#   $\theta + e$ is applied at $\theta$ (chapter 2 writes it out). Two passes per step. It never sees
#   an adversarial example.
# - **ASAM** (adaptive SAM, Kwon et al. 2021): SAM with the ball scaled to each weight,
#   $e = \rho\, T^2 g/\lVert T g\rVert_2$ with $T = |\theta| + \xi$ on weight tensors (a small offset
#   $\xi$; 1 on biases), so its radius is relative to the weights' size.
# - **AT** (adversarial training, Madry et al. 2018): minimise the cross-entropy on PGD examples,
#   $\min_\theta \mathbb E \max_{\lVert\delta\rVert \le \epsilon} \mathrm{CE}(f_\theta(x + \delta), y)$.
# - **SAM+AT**: SAM's weight step on the AT loss.
# - **AWP** (adversarial weight perturbation, Wu et al. 2020): AT whose loss is taken at weights moved,
#   layer by layer, by a fraction $\gamma$ of each layer's norm in the direction that raises the
#   adversarial loss (found by one SGD step of a copy of the network).
# - **TRADES** (Zhang et al. 2019): clean cross-entropy plus $\beta$ times the KL divergence between the
#   predictions on $x$ and on $x_{adv}$, with $x_{adv}$ found by PGD on that KL.
# - **ARoW** (Yang et al. 2023): TRADES with label smoothing, its KL term weighted more on the examples
#   the model gets wrong under attack.
#
# Their hyperparameters, training attacks and cost in forward/backward passes per step, from
# `lib.methods` (adversarial methods at L-inf 8/255 with the paper's PGD-10):

# %%
glossary.method_facts()

# %% [markdown]
# ## Attacks
#
# - **Adversarial example**: an input moved within the budget so as to raise the loss, usually to make
#   the classifier wrong.
# - **PGD** (projected gradient descent, here ascent; Madry et al. 2018): from a random point of the
#   ball, repeat: step by $\alpha$ in the steepest-ascent direction of the loss (the sign of the
#   gradient under L-inf, its direction under L2), then project back into the ball and into $[0, 1]$.
#   **PGD-10** is ten such steps.
# - **Margin (CW) loss**: the largest wrong logit minus the true one; an attack on it does not stall on
#   confident examples the way cross-entropy can.
# - **AutoAttack** (Croce & Hein 2020): the field's reference evaluation, an ensemble of four attacks
#   (APGD-CE, APGD-T, FAB-T, Square) that tune their own step sizes; an independent check of PGD.
#
# ## Measures
#
# - **Clean accuracy** (*natural* in the tables): accuracy on unperturbed test images.
# - **Robust accuracy** at a budget: the share of test images classified correctly *and* not broken by
#   any attack of the protocol within that budget. An attack can only overestimate it: a stronger
#   attack gives a lower (truer) number.
# - **Protocol**: a named evaluation, fixing the attacks, budgets and test images (`lib.protocols`).
#   The **worst case** of a model takes, per image, every protocol run on it: an image counts as robust
#   only if no attack broke it.

# %%
display(Markdown(glossary.protocols_markdown()))

# %% [markdown]
# - **Paired difference**: SAM minus ST (or AT minus SAM...) between two models trained with the same
#   seed, in accuracy points, averaged over seeds; its **95 % interval** says how far the mean could be
#   from the truth given the spread between seeds (and, in chapter 4, between test images).
# - **Verdicts**: a claim **holds** when every interval it needs lies on the claimed side; it **does not
#   hold** when one lies on the other side; otherwise it is **not resolved at this scale** (the
#   differences are within the noise of the seeds and images there are).
# - **Sharpness / flatness**: how much the loss rises when the weights move (chapters 2 and 5); a flat
#   minimum rises little. **Feature perturbation**: the relative change $\lVert dz\rVert/\lVert z\rVert$
#   of a layer's output $z$ when the weights (SAM) or the input (PGD) move (chapter 2).
#
# ## The paper's claims
#
# Chapter 4 judges each claim on the trained models; in words:
#
# - **1a.** SAM alone raises robust accuracy above ST: at every radius and every budget of the paper's
#   table, a SAM model is more robust than the ST model trained with the same seed.
# - **1b.** SAM does so at no cost in clean accuracy: its clean accuracy does not drop below ST's (by
#   more than half a point).
# - **2.** A larger radius gives more robustness: robust accuracy rises with $\rho$. Judged separately
#   for each norm and budget, as the slope of robust accuracy against $\rho$.
# - **3a.** AT pays for its robustness in clean accuracy: every AT model is less accurate on clean
#   images than ST.
# - **3b.** AT buys more robustness than SAM: every AT model is more robust at L-inf 2/255 than SAM at
#   its largest radius.
# - **3c.** SAM trades less clean accuracy than AT: SAM's clean cost (ST minus SAM) is smaller than each
#   AT model's.
# - **4.** SAM costs about two forward/backward passes per training step, AT with a $k$-step PGD about
#   $k + 1$: measured as training time relative to ST.
#
# ## Profiles
#
# A **profile** fixes the scale of every run: network width, epochs, data, seeds, and how many test
# images each protocol uses. A **run** is one trained network, a pure function of its configuration
# (method, its hyperparameters, profile, seed); a **seed** fixes its initialisation and data order.

# %%
display(Markdown(glossary.profiles_markdown()))
