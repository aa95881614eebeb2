"""Facts the chapters and the glossary state, each read from its one source: profiles and run settings
(:mod:`lib.config`), methods (:mod:`lib.methods`), budgets (:mod:`lib.attacks`), evaluation protocols
(:mod:`lib.protocols`). A chapter prints these instead of typing a number that could drift from the code.

Example::

    profile_facts(["paper", "cpu"])        # one row per setting, one column per profile
    print(protocols_markdown())            # the evaluation protocols, as the glossary lists them
"""
from __future__ import annotations

from .attacks import THREATS
from .config import AT_L2_EPS, AT_LINF_EPS, PROFILES, SAM_RHOS, make_config, profile
from .methods import METHODS
from .optim import ASAM_ETA
from .protocols import PROTOCOLS


def _count(per_class, classes: int = 10, everything: str = "all") -> str:
    return everything if per_class is None else f"{per_class * classes:,}"


def schedule_text(config) -> str:
    """The learning-rate schedule of a run config in words: ``x0.1 at 75 % and 90 % of the epochs`` or the
    one-cycle shape with its warm-up fraction."""
    if config.schedule == "onecycle":
        return (f"one-cycle: linear from 0 up to lr over the first {config.warmup:.0%} of the steps, then linear "
                f"down to 0")
    at = " and ".join(f"{m:.0%}" for m in config.lr_milestones)
    return f"step: x0.1 at each of {at} of the epochs"


def profile_facts(names=("paper", "cpu"), dataset: str = "cifar10"):
    """A table of the settings that make a run, one column per profile (from :data:`lib.config.PROFILES`
    and :func:`lib.config.make_config`): network width, epochs, optimiser, schedule, data, seeds."""
    import pandas as pd
    cols = {}
    for name in names:
        p, c = profile(name), make_config("st", name, dataset)
        cols[name] = {
            "network": f"PreActResNet-18 topology, width {p.width}" + (" (the paper's)" if p.width == 64 else ""),
            "epochs": p.epochs,
            "optimiser": f"SGD, momentum {c.momentum:g}" + (" (Nesterov)" if c.nesterov else "")
                         + f", weight decay {c.weight_decay:g}",
            "learning rate": f"{c.lr:g}",
            "schedule": schedule_text(c),
            "batch size": c.batch_size,
            "training images": _count(p.train_per_class),
            "test images": _count(p.test_per_class),
            "seeds": ", ".join(map(str, p.seeds)),
            "training arithmetic": p.precision,
            "trains in the book": "yes" if p.train_in_book else "no: the book shows its committed results",
        }
    out = pd.DataFrame(cols)
    out.index.name = "setting"
    return out


def method_facts(dataset: str = "cifar10", profile_name: str = "paper"):
    """One row per training method of :data:`lib.methods.METHODS`: its own hyperparameters with their defaults
    (and SAM's radius where it has one), its training attack and its forward/backward passes per step, with
    the paper's training attack at L-inf 8/255 for the adversarial ones."""
    import pandas as pd
    rows = []
    for name, m in METHODS.items():
        c = make_config(name, profile_name, dataset)
        hp = [f"{h.name} = {c.hparam(h.name, h.default):g}" for h in m.hparams]
        if m.sam:
            hp.insert(0, f"rho = {c.rho:g}")
        if m.adaptive:
            hp.append(f"offset xi = {ASAM_ETA:g}")
        attack = (f"PGD-{c.steps}, L-inf {c.eps * 255:g}/255, step {c.alpha * 255:g}/255" if m.adversarial else "none")
        rows.append({"method": m.title, "hyperparameters (default)": ", ".join(hp),
                     "training attack": attack, "passes per step": m.passes_per_step(c)})
    return pd.DataFrame(rows).set_index("method")


def budgets_markdown() -> str:
    """The budgets of the paper's robustness table and of its adversarially trained models, as Markdown."""
    linf = [f"{e * 255:g}/255" for n, e in THREATS if n == "linf"]
    l2 = [f"{e * 255:g}/255" for n, e in THREATS if n == "l2"]
    return (f"- Evaluated (the paper's table): L-inf {' and '.join(linf)}, L2 {' and '.join(l2)}.\n"
            f"- Trained (AT): L-inf {', '.join(f'{e}/255' for e in AT_LINF_EPS)}; "
            f"L2 {', '.join(f'{e}/255' for e in AT_L2_EPS)}.\n"
            f"- SAM's radii in the book's grids: rho = {', '.join(f'{r:g}' for r in SAM_RHOS)}.\n")


def protocols_markdown() -> str:
    """Each evaluation protocol of :data:`lib.protocols.PROTOCOLS`: its name and title, the first sentence of its
    documentation, the attacks it runs, its budgets and its default test images."""
    import re
    from .attacks import threat_label
    lines = []
    for p in PROTOCOLS.values():
        first = re.split(r"(?<=[.])\s+(?=[A-Z])", p.doc.strip())[0]
        attacks = "; ".join(a.describe() for a in p.attacks)
        n = "all test images" if p.n is None else f"the first {p.n:,} test images by default"
        lines.append(f"- **`{p.name}`** ({p.title}). {first} Attacks: {attacks}. Budgets: "
                     f"{', '.join(threat_label(t) for t in p.threat_names)}. Images: {n}.")
    return "\n".join(lines) + "\n"


def profiles_markdown() -> str:
    """Each profile of :data:`lib.config.PROFILES`: width, epochs, seeds and its description."""
    return "\n".join(f"- **`{p.name}`**: width {p.width}, {p.epochs} epochs, {len(p.seeds)} seed(s); {p.description}."
                     for p in PROFILES.values()) + "\n"
