"""Frozen run configurations, named profiles and the grids of the book.

A run is a pure function of its :class:`RunConfig` (training settings only: evaluation is a stage
of its own, :mod:`lib.protocols`, so a new evaluation never retrains); the config's hash names its
cache folder. Profiles are named instances of :class:`Profile`:

- ``smoke``: a CPU in minutes. Width-8 network, 200 training and 20 test images per class of the
  byte-exact CIFAR-10 subset, 3 epochs, at most 2 PGD steps in training, fp32; every method and
  every evaluation protocol is exercised. Its numbers only show that the code runs: "smoke".
- ``cpu``: real models trained on a 2-core CPU (bf16 where the CPU has AMX/AVX512-BF16): the
  PreActResNet-18 topology at width 16, the full JPEG CIFAR-10 training set, 2 epochs of a
  one-cycle schedule, 2,000 test images. Chosen by a measured pilot (README, "The cpu profile").
  Its results are committed; the book renders them without training.
- ``fast``: one GPU, about an hour for the CIFAR-10 grid: the full network and data, 30 epochs.
- ``paper``: the protocol of the paper: 100 epochs, lr 0.1 (x0.1 at 75 %, x0.01 at 90 %), SGD
  momentum 0.9, weight decay 5e-4, batch 128, 3 seeds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from .attacks import NORMS, validate_budget
from .data import DATASETS
from .errors import ConfigError
from .methods import METHODS, method as method_class

SCHEDULES = ("step", "onecycle")


@dataclass(frozen=True)
class Profile:
    name: str
    width: int                      # network width (64 = PreActResNet-18)
    epochs: int
    train_per_class: int | None     # None = the whole training split
    test_per_class: int | None      # test images per class for every evaluation (None: the whole split)
    sources: tuple                  # data sources in order of preference
    seeds: tuple
    batch_size: int = 128
    lr: float = 0.1
    schedule: str = "step"          # the paper's step schedule, or one-cycle
    nesterov: bool = False
    max_train_attack_steps: int | None = None   # cap on PGD steps during training (smoke only)
    precision: str = "auto"         # training arithmetic: auto (bf16 where fast) | fp32 | bf16
    # torch threads of a run on the CPU (None: torch's default). A fixed count makes a CPU run's
    # arithmetic the same on machines with different core counts, and lets the local executor
    # train several runs at once (one process per run).
    cpu_threads: int | None = None
    curve_images: int = 1000        # test images for the per-epoch learning curves
    curve_steps: int = 10           # PGD steps of the per-epoch curve (L-inf 1/255)
    # evaluation protocols run when a run finishes: (name, test images or None for all, seeds or None for all)
    protocols: tuple = (("paper", None, None), ("converged", None, None), ("strong", 1000, None),
                        ("autoattack", 1000, None))
    train_in_book: bool = True      # the book trains missing runs (False: it shows committed results only)
    # the training methods whose steps run under torch.compile (inductor), on any device; evaluation always
    # runs eager. On the EPYC (python -m lib bench --compile, outputs/bench/bench-cpu.md) the bf16 ST and SAM
    # steps ran at 1.47x and 1.52x eager, a PGD-10 AT step at 0.91x (7 interleaved repeats, 2026-12-07) and the
    # fp32 PGD evaluation at 0.64x: so only ST and SAM compile. Recorded in each run's metrics (``compiled``).
    compile: tuple = ()

    def compiles(self, method: str) -> bool:
        """Whether ``method``'s training steps run under torch.compile in this profile."""
        return method in self.compile
    # the protocols of a run trained for other than ``epochs`` (the training-length axis, which chapter 4 reads
    # under the paper protocol only); None: ``protocols``. On cpu-long, the paper protocol on 10,000 images
    # and strong on 1,000 took 1,117 s and 979 s of a 10-epoch ST run's 3,909 s (one EPYC thread, shared).
    length_protocols: tuple | None = None
    description: str = ""

    def protocols_for(self, config) -> tuple:
        """The protocols a finished run of this profile is evaluated under (``length_protocols`` for a run of
        the training-length axis)."""
        return self.length_protocols if config.on_length_axis and self.length_protocols is not None else self.protocols


PROFILES = {
    "smoke": Profile("smoke", width=8, epochs=3, train_per_class=200, test_per_class=20,
                     sources=("npz", "official", "imagefolder"), seeds=(0,), max_train_attack_steps=2,
                     precision="fp32", cpu_threads=1, curve_images=100, curve_steps=5,
                     # the subset protocols on 20 images: on 50, strong and apgd-ce took 336 s of the 20
                     # smoke runs' 1,000 s, on 20 they take 219 s (fixed per-iteration costs dominate);
                     # CI pays it twice (make test, make test-isa)
                     protocols=(("paper", None, None), ("converged", None, None), ("strong", 20, None),
                                ("apgd-ce", 20, None), ("linf8", None, None)),
                     description="CPU in minutes; tiny network and data; numbers show only that the code runs"),
    "cpu": Profile("cpu", width=16, epochs=2, train_per_class=None, test_per_class=200,
                   sources=("imagefolder",), seeds=(0, 1, 2), lr=0.4, schedule="onecycle",
                   nesterov=True, precision="auto", cpu_threads=1, curve_images=500, curve_steps=10,
                   # AutoAttack (standard, 100 images, seed 0) runs after the grid, not when a run finishes:
                   # python -m lib evaluate --profile cpu --grid core --seeds 0 --protocol autoattack --n 100
                   # linf8 (about 25 s a run) on every seed: weights are not committed, so an evaluation left
                   # for later is lost with the machine that trained the run
                   protocols=(("paper", None, None), ("converged", 500, None), ("strong", 200, None),
                              ("linf8", 500, None)),
                   train_in_book=False,
                   description="real models on a 2-core CPU: width 16, the full JPEG training set, one-cycle "
                               "schedule, bf16 training where the CPU has AVX-512 BF16 or AMX"),
    # the longer CPU scale (issue 32): the cpu profile's network, data, optimiser and schedule trained for
    # 10 epochs (ST reached 84.5% clean after 8 in a one-seed pilot; the target is 85%), evaluated as the
    # paper does on all 10,000 test images, with the stronger protocols on the first 1,000. The runs of the
    # training-length axis are this profile's configurations with fewer epochs (``length_grid``).
    "cpu-long": Profile("cpu-long", width=16, epochs=10, train_per_class=None, test_per_class=None,
                        sources=("imagefolder",), seeds=(0, 1, 2), lr=0.4, schedule="onecycle",
                        nesterov=True, precision="auto", cpu_threads=1, curve_images=1000, curve_steps=10,
                        protocols=(("paper", None, None), ("converged", 1000, None), ("strong", 1000, None),
                                   ("linf8", 500, None)),
                        # the length axis (4 and 6 epochs): the paper protocol on the first 2,000 test images
                        length_protocols=(("paper", 2000, None),),
                        train_in_book=False, compile=("st", "sam"),
                        description="real models on a 2-core CPU trained 5x longer: the cpu profile's network, "
                                    "data and one-cycle schedule for 10 epochs, all 10,000 test images"),
    "fast": Profile("fast", width=64, epochs=30, train_per_class=None, test_per_class=None,
                    sources=("official", "imagefolder"), seeds=(0,),
                    description="one GPU; full network and data; 30 epochs instead of 100"),
    "paper": Profile("paper", width=64, epochs=100, train_per_class=None, test_per_class=None,
                     sources=("official", "imagefolder"), seeds=(0, 1, 2),
                     description="the paper's protocol: 100 epochs, 3 seeds"),
}


def profile(name: str) -> Profile:
    """The profile called ``name``, or a one-line error naming the valid profiles."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}") from None


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
    """Everything that determines a trained network. Budgets are pixel fractions (8/255)."""

    dataset: str = "cifar10"
    method: str = "st"
    profile: str = "smoke"
    seed: int = 0
    # data and model
    data_source: str = "auto"       # resolved to official | imagefolder | npz before a run
    width: int = 64
    train_per_class: int | None = None
    # optimisation (the paper's protocol by default)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"               # step: x0.1 at each milestone; onecycle: linear up, linear to 0
    lr_milestones: tuple = (0.75, 0.9)   # fractions of the epochs (step schedule)
    warmup: float = 0.15                 # fraction of the steps spent warming up (one-cycle schedule)
    # SAM / ASAM
    rho: float = 0.0
    # adversarial training attack
    norm: str = "linf"
    eps: float = 0.0
    alpha: float = 0.0
    steps: int = 0
    attack_bn_eval: bool = True     # BatchNorm in eval mode while generating training attacks
    attack_fp32: bool = False       # training attacks in fp32 even when training runs in bf16
    # method-specific hyperparameters (see lib.methods), as sorted (name, value) pairs
    extra: tuple = ()

    # -- derived --------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset]

    @property
    def spec(self):
        """The method's class (:mod:`lib.methods`): its facts and its step."""
        return method_class(self.method)

    def hparam(self, name: str, default=None):
        return dict(self.extra).get(name, default)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["extra"] = {k: v for k, v in self.extra}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["lr_milestones"] = tuple(d.get("lr_milestones", (0.75, 0.9)))
        d["extra"] = tuple(sorted(d.get("extra", {}).items()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        """A short human label: ``ST``, ``SAM rho=0.1``, ``AT L-inf 8/255``, ``AT L-inf 2/255 fp32-attack``..."""
        return self.spec.label(self) + (" fp32-attack" if self.attack_fp32 else "")

    @property
    def on_length_axis(self) -> bool:
        """Trained for other than its profile's epochs: a run of the training-length axis."""
        return self.profile in PROFILES and self.epochs != PROFILES[self.profile].epochs

    @property
    def name(self) -> str:
        """Readable folder name: ``cifar10-sam-rho0.1-s0-smoke``."""
        spec = self.spec
        parts = [self.dataset, self.method]
        if spec.sam:
            parts.append(f"rho{self.rho:g}")
        if spec.adversarial:
            parts.append(f"{self.norm}{self.eps * 255:g}")
        parts += [f"{k}{v:g}" for k, v in spec.shown_hparams(dict(self.extra))]
        if self.attack_fp32:
            parts.append("fp32attack")
        if self.on_length_axis:
            parts.append(f"e{self.epochs}")     # a run of the training-length axis
        parts += [f"s{self.seed}", self.profile]
        return "-".join(parts)

    def validate(self) -> "RunConfig":  # noqa: C901 - one check per field
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")
        spec = method_class(self.method)
        profile(self.profile)
        for k in ("epochs", "batch_size", "width"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{k.replace('_', ' ')} must be a positive integer, got {v!r}")
        for k in ("lr", "momentum", "weight_decay", "rho", "eps", "alpha", "steps", "seed", "warmup"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
                raise ConfigError(f"{k.replace('_', ' ')} must be >= 0, got {v!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.train_per_class is not None and (not isinstance(self.train_per_class, int) or self.train_per_class < 1):
            raise ConfigError(f"train per class must be a positive integer or None, got {self.train_per_class!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        validate_budget(self.norm, self.eps, self.alpha, self.steps)
        if spec.adversarial and (self.eps <= 0 or self.steps < 1 or self.alpha <= 0):
            raise ConfigError(f"method {self.method!r} trains on PGD examples: it needs eps > 0, alpha > 0 "
                              f"and steps >= 1 (got eps={self.eps}, alpha={self.alpha}, steps={self.steps})")
        if not spec.sam and self.rho != 0:
            sam_like = ", ".join(n for n, m in METHODS.items() if m.sam)
            raise ConfigError(f"method {self.method!r} has no weight perturbation: rho must be 0 (use {sam_like})")
        spec.validate(dict(self.extra))
        return self


def make_config(method: str = "st", profile: str = "smoke", dataset: str = "cifar10", seed: int = 0,
                **overrides) -> RunConfig:
    """A validated config: the profile's settings, the paper's attack for AT, then ``overrides``.

    A method's own hyperparameters can be given by name (``beta=6.0``) or as ``extra={...}``.

    Examples::

        make_config("sam", "fast", rho=0.1)
        make_config("at", "paper", norm="l2", eps=128/255)     # alpha eps/2, 5 steps (the paper's)
        make_config("trades", "smoke", beta=6.0)
    """
    p = PROFILES.get(profile) if isinstance(profile, str) else None
    if p is None:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    spec = method_class(method)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    base = dict(dataset=dataset, method=method, profile=profile, seed=seed, width=p.width, epochs=p.epochs,
                batch_size=p.batch_size, lr=p.lr, schedule=p.schedule, nesterov=p.nesterov,
                train_per_class=p.train_per_class)
    extra = spec.defaults()
    extra.update(overrides.pop("extra", {}) or {})
    for k in list(overrides):
        if k in extra:
            extra[k] = overrides.pop(k)
    if spec.sam:
        base["rho"] = spec.default_rho.get(dataset, 0.1)
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
CORE_LINF_EPS = (1, 2)            # the core grid's AT runs (issue: the paper's training attacks)
CORE_L2_EPS = (16, 32)


def _seeds(profile_name: str, seeds):
    return profile(profile_name).seeds if seeds is None else tuple(seeds)


def paper_grid(profile: str = "smoke", dataset: str = "cifar10", seeds=None, rhos=SAM_RHOS,
               linf=AT_LINF_EPS, l2=AT_L2_EPS) -> list[RunConfig]:
    """The configurations of the paper's tables: ST, SAM over ``rhos``, AT L-inf and AT L2 (x seeds)."""
    out = []
    for s in _seeds(profile, seeds):
        out.append(make_config("st", profile, dataset, s))
        out += [make_config("sam", profile, dataset, s, rho=r) for r in rhos]
        out += [make_config("at", profile, dataset, s, norm="linf", eps=e / 255) for e in linf]
        out += [make_config("at", profile, dataset, s, norm="l2", eps=e / 255) for e in l2]
    return out


def core_grid(profile: str = "cpu", dataset: str = "cifar10", seeds=None) -> list[RunConfig]:
    """ST, SAM at four radii, AT L-inf 1 and 2/255, AT L2 16 and 32/255: what the claims need."""
    return paper_grid(profile, dataset, seeds, linf=CORE_LINF_EPS, l2=CORE_L2_EPS)


def beyond_grid(profile: str = "smoke", dataset: str = "cifar10", seeds=None) -> list[RunConfig]:
    """The methods beyond the paper (chapter 5; extra rows of chapter 4's tables), L-inf 8/255 where adversarial:
    ASAM (Kwon et al.'s rho), SAM+AT (rho 0.1), AWP (gamma 0.01), TRADES (beta 6), ARoW (lambda 3.5)."""
    out = []
    for s in _seeds(profile, seeds):
        out += [make_config("asam", profile, dataset, s), make_config("sam_at", profile, dataset, s, rho=0.1),
                make_config("awp", profile, dataset, s), make_config("trades", profile, dataset, s),
                make_config("arow", profile, dataset, s)]
    return out


def attack_precision_grid(profile: str = "cpu", dataset: str = "cifar10", seeds=None) -> list[RunConfig]:
    """AT L-inf 2/255 and AT L2 32/255 with their training attacks in fp32 (``attack_fp32``): beside the core
    grid's bf16-attack runs, the measured comparison that decides whether bf16 training attacks are allowed."""
    return [make_config("at", profile, dataset, s, norm=n, eps=e / 255, attack_fp32=True)
            for s in _seeds(profile, seeds) for n, e in (("linf", 2), ("l2", 32))]


LENGTHS = (4, 6)                  # epochs of the training-length axis between the cpu (2) and cpu-long (10) ends


def length_grid(profile: str = "cpu-long", dataset: str = "cifar10", seeds=None, lengths=LENGTHS,
                rhos=(0.1, 0.4)) -> list[RunConfig]:
    """The training-length axis: ST and SAM at ``rhos`` trained for each of ``lengths`` epochs (each with its
    own full schedule), at the profile's other settings; the profile's own length and the ``cpu`` runs are its ends."""
    return [make_config("st", profile, dataset, s, epochs=e) if r is None else
            make_config("sam", profile, dataset, s, epochs=e, rho=r)
            for e in lengths for s in _seeds(profile, seeds) for r in (None,) + tuple(rhos)]


GRIDS = {"paper": paper_grid, "core": core_grid, "beyond": beyond_grid, "fp32attack": attack_precision_grid,
         "length": length_grid}


def grid(name: str, profile: str, dataset: str = "cifar10", seeds=None) -> list[RunConfig]:
    """A named grid (paper | core | beyond | fp32attack | length | all) for a profile, or several joined by
    commas (``"all,fp32attack"``: every run of each, each run once, in the order named)."""
    if "," in name:
        parts = [n.strip() for n in name.split(",")]
        if not all(parts):
            raise ConfigError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)}, all")
        return list(dict.fromkeys(c for n in parts for c in grid(n, profile, dataset, seeds)))
    if name == "all":
        return paper_grid(profile, dataset, seeds) + beyond_grid(profile, dataset, seeds)
    if name not in GRIDS:
        raise ConfigError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)}, all")
    return GRIDS[name](profile, dataset, seeds)
