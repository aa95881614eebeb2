"""Frozen run configurations, named profiles and the paper's grid.

A run is a pure function of its :class:`RunConfig`; the config's hash names its cache folder.
Profiles are named instances of :class:`Profile`:

- ``smoke``: a CPU in minutes. Width-8 network, 200 training and 20 test images per class of the
  byte-exact CIFAR-10 subset, 3 epochs, at most 2 PGD steps in training and PGD-5 in evaluation;
  every method and every evaluation column is exercised. Its numbers only show that the code runs:
  they are labelled "smoke".
- ``fast``: one GPU, about an hour for the CIFAR-10 grid: the full network and data, 30 epochs.
- ``paper``: the protocol of the paper: 100 epochs, lr 0.1 (x0.1 at 75 %, x0.01 at 90 %), SGD
  momentum 0.9, weight decay 5e-4, batch 128, 3 seeds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .attacks import NORMS, PAPER_BUDGETS, Budget, validate_budget
from .data import DATASETS
from .errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    width: int                      # network width (64 = PreActResNet-18)
    epochs: int
    train_per_class: int | None     # None = the whole training split
    test_per_class: int | None      # None = the whole test split (the paper's evaluation)
    epoch_eval_size: int            # test images for the per-epoch curves
    max_train_attack_steps: int | None  # cap on PGD steps during training (smoke only)
    sources: tuple                  # data sources in order of preference
    seeds: tuple
    batch_size: int = 128
    eval_steps: int = 10            # PGD iterations of the evaluation (10 = the paper's PGD-10)
    # torch threads of a run on the CPU (None: torch's default). A fixed count makes a CPU run's
    # arithmetic, and so its numbers, the same on machines with different core counts, and lets
    # the local executor train several runs at once (one process per run).
    cpu_threads: int | None = None
    description: str = ""


PROFILES = {
    "smoke": Profile("smoke", width=8, epochs=3, train_per_class=200, test_per_class=20, epoch_eval_size=100,
                     max_train_attack_steps=2, sources=("npz", "official", "imagefolder"), seeds=(0,), eval_steps=5,
                     cpu_threads=1,
                     description="CPU in minutes; tiny network and data; numbers show only that the code runs"),
    "fast": Profile("fast", width=64, epochs=30, train_per_class=None, test_per_class=None, epoch_eval_size=1000,
                    max_train_attack_steps=None, sources=("official", "imagefolder"), seeds=(0,),
                    description="one GPU; full network and data; 30 epochs instead of 100"),
    "paper": Profile("paper", width=64, epochs=100, train_per_class=None, test_per_class=None,
                     epoch_eval_size=1000, max_train_attack_steps=None, sources=("official", "imagefolder"),
                     seeds=(0, 1, 2), description="the paper's protocol: 100 epochs, 3 seeds"),
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    adversarial: bool       # trains on PGD examples
    sam: bool               # SAM weight perturbation on the training loss
    passes: str             # forward/backward passes per step, in words
    description: str
    extra: tuple = ()       # names of extra hyperparameters the method uses


METHODS: dict[str, MethodSpec] = {
    "st": MethodSpec("st", False, False, "1", "standard training: SGD on clean cross-entropy"),
    "sam": MethodSpec("sam", False, True, "2", "SAM (Foret et al. 2021) with SGD, radius rho"),
    "asam": MethodSpec("asam", False, True, "2", "adaptive SAM (Kwon et al. 2021), radius rho"),
    "at": MethodSpec("at", True, False, "steps + 1", "PGD adversarial training (Madry et al. 2018)"),
    "sam_at": MethodSpec("sam_at", True, True, "steps + 2", "SAM on the PGD adversarial loss"),
}

# Paper's training attacks: L-inf eps -> (step, iterations); L2: step eps/2, 5 iterations.
LINF_TRAIN_ATTACK = {1: (0.5, 5), 2: (1.0, 5), 4: (1.0, 10), 8: (2.0, 10)}


def paper_train_attack(norm: str, eps: float) -> tuple[float, int]:
    """(alpha, steps) of the paper's PGD for training at this budget (eps as a pixel fraction)."""
    if norm == "linf":
        key = round(eps * 255, 6)
        if key in LINF_TRAIN_ATTACK:
            a, k = LINF_TRAIN_ATTACK[key]
            return a / 255, k
        return eps / 4, 10
    return eps / 2, 5


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result. Budgets are pixel fractions (8/255)."""

    dataset: str = "cifar10"
    method: str = "st"
    profile: str = "smoke"
    seed: int = 0
    # data and model
    data_source: str = "auto"       # resolved to official | imagefolder | npz before a run
    width: int = 64
    train_per_class: int | None = None
    test_per_class: int | None = None
    # optimisation (the paper's protocol)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple = (0.75, 0.9)   # fractions of the epochs; lr x0.1 at each
    # SAM / ASAM
    rho: float = 0.0
    # adversarial training attack
    norm: str = "linf"
    eps: float = 0.0
    alpha: float = 0.0
    steps: int = 0
    attack_bn_eval: bool = True     # BatchNorm in eval mode while generating training attacks
    # method-specific hyperparameters (see lib.methods), as sorted (name, value) pairs
    extra: tuple = ()
    # evaluation
    eval_steps: int = 10
    eval_budgets: tuple = PAPER_BUDGETS
    epoch_eval_size: int = 1000

    # -- derived --------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset]

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    def hparam(self, name: str, default=None):
        return dict(self.extra).get(name, default)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eval_budgets"] = [dataclasses.asdict(b) for b in self.eval_budgets]
        d["lr_milestones"] = list(self.lr_milestones)
        d["extra"] = {k: v for k, v in self.extra}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["eval_budgets"] = tuple(Budget(**b) for b in d["eval_budgets"])
        d["lr_milestones"] = tuple(d["lr_milestones"])
        d["extra"] = tuple(sorted(d.get("extra", {}).items()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        """A short human label: ``ST``, ``SAM rho=0.1``, ``AT L-inf 8/255``..."""
        m = self.method
        if m in ("st",):
            base = "ST"
        elif m in ("sam", "asam"):
            base = f"{m.upper()} rho={self.rho:g}"
        else:
            shown = {"arow": "ARoW"}.get(m, m.upper().replace('_', '+'))
            base = f"{shown} {'L-inf' if self.norm == 'linf' else 'L2'} {self.eps * 255:g}/255"
            if m == "sam_at":
                base += f" rho={self.rho:g}"
        for k, v in self._shown_hparams():
            base += f" {k}={v:g}"
        return base

    def _shown_hparams(self) -> list:
        """A method's extra hyperparameters worth a label: the first always, the others if not default."""
        from .methods import EXTRA_HPARAMS  # local: methods imports this module
        out = []
        for i, (k, (default, _)) in enumerate(EXTRA_HPARAMS.get(self.method, {}).items()):
            v = self.hparam(k, default)
            if i == 0 or v != default:
                out.append((k, v))
        return out

    @property
    def name(self) -> str:
        """Readable folder name: ``cifar10-sam-rho0.1-s0-smoke``."""
        m = self.method
        parts = [self.dataset, m]
        if METHODS[m].sam:
            parts.append(f"rho{self.rho:g}")
        if METHODS[m].adversarial:
            parts.append(f"{self.norm}{self.eps * 255:g}")
        parts += [f"{k}{v:g}" for k, v in self._shown_hparams()]
        parts += [f"s{self.seed}", self.profile]
        return "-".join(parts)

    def validate(self) -> "RunConfig":
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}; valid profiles: {', '.join(PROFILES)}")
        for k in ("epochs", "batch_size", "width"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be a positive integer, got {getattr(self, k)}")
        for k in ("lr", "momentum", "weight_decay", "rho", "eps", "alpha", "steps", "eval_steps", "seed"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k.replace('_', ' ')} must be >= 0, got {getattr(self, k)}")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        validate_budget(self.norm, self.eps, self.alpha, self.steps)
        spec = METHODS[self.method]
        if spec.adversarial and (self.eps <= 0 or self.steps < 1 or self.alpha <= 0):
            raise ConfigError(f"method {self.method!r} trains on PGD examples: it needs eps > 0, alpha > 0 "
                              f"and steps >= 1 (got eps={self.eps}, alpha={self.alpha}, steps={self.steps})")
        if not spec.sam and self.rho != 0:
            raise ConfigError(f"method {self.method!r} has no weight perturbation: rho must be 0 (use sam, asam "
                              f"or sam_at)")
        from .methods import validate_extra  # local: methods imports this module
        validate_extra(self)
        return self


def make_config(method: str = "st", profile: str = "smoke", dataset: str = "cifar10", seed: int = 0,
                **overrides) -> RunConfig:
    """A validated config: the profile's settings, the paper's attack for AT, then ``overrides``.

    Examples::

        make_config("sam", "fast", rho=0.1)
        make_config("at", "paper", norm="l2", eps=128/255)     # alpha eps/2, 5 steps (the paper's)
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    p = PROFILES[profile]
    base = dict(dataset=dataset, method=method, profile=profile, seed=seed, width=p.width, epochs=p.epochs,
                batch_size=p.batch_size, train_per_class=p.train_per_class, test_per_class=p.test_per_class,
                epoch_eval_size=p.epoch_eval_size, eval_steps=p.eval_steps)
    spec = METHODS[method]
    from .methods import default_extra
    extra = dict(default_extra(method))
    extra.update(overrides.pop("extra", {}) or {})
    for k in list(overrides):
        if k in extra:
            extra[k] = overrides.pop(k)
    if spec.sam:
        base["rho"] = 0.1 if method != "asam" else 1.0
    if spec.adversarial:
        norm = overrides.get("norm", "linf")
        eps = overrides.get("eps", 8 / 255 if norm == "linf" else 128 / 255)
        validate_budget(norm, eps)
        alpha, steps = paper_train_attack(norm, eps)
        if p.max_train_attack_steps is not None and steps > p.max_train_attack_steps:
            # fewer steps for smoke runs, with a step large enough to still reach the boundary
            steps = p.max_train_attack_steps
            alpha = max(alpha, eps / steps)
        base.update(norm=norm, eps=eps, alpha=alpha, steps=steps)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))} for method {method!r}")
    base.update(overrides)
    base["extra"] = tuple(sorted(extra.items()))
    return RunConfig(**base).validate()


SAM_RHOS = (0.05, 0.1, 0.2, 0.4)
AT_LINF_EPS = (1, 2, 4, 8)        # /255
AT_L2_EPS = (16, 32, 64, 128)     # /255


def paper_grid(profile: str = "smoke", dataset: str = "cifar10", seeds=None, rhos=SAM_RHOS) -> list[RunConfig]:
    """The configurations of the paper's tables: ST, SAM over ``rhos``, AT L-inf and AT L2 (x seeds)."""
    seeds = PROFILES[profile].seeds if seeds is None else seeds
    out = []
    for s in seeds:
        out.append(make_config("st", profile, dataset, s))
        out += [make_config("sam", profile, dataset, s, rho=r) for r in rhos]
        out += [make_config("at", profile, dataset, s, norm="linf", eps=e / 255) for e in AT_LINF_EPS]
        out += [make_config("at", profile, dataset, s, norm="l2", eps=e / 255) for e in AT_L2_EPS]
    return out


def beyond_grid(profile: str = "smoke", dataset: str = "cifar10", seeds=None) -> list[RunConfig]:
    """The methods beyond the paper (chapter 5; extra rows of chapter 4's tables), L-inf 8/255 where adversarial:
    ASAM, SAM+AT (rho 0.1), AWP (gamma 0.01), TRADES (beta 6), ARoW (lambda 3.5)."""
    seeds = PROFILES[profile].seeds if seeds is None else seeds
    out = []
    for s in seeds:
        out += [make_config("asam", profile, dataset, s), make_config("sam_at", profile, dataset, s, rho=0.1),
                make_config("awp", profile, dataset, s), make_config("trades", profile, dataset, s, beta=6.0),
                make_config("arow", profile, dataset, s, lam=3.5)]
    return out
