"""Speed benchmark: the lib engine against a reference-style loop, side by side (``python -m lib bench``).

Both run in one process, on the same device, with the same network (PreActResNet-18 of the chosen
width), the same initial weights and the same batch size:

- **reference** (written here, the way much research code is written): a torchvision ``DataLoader``
  over a ``Dataset`` that serves one PIL image at a time through ``RandomCrop(32, padding=4,
  padding_mode="reflect")``, ``RandomHorizontalFlip`` and ``ToTensor`` on the CPU; fp32; PGD that
  calls ``loss.backward()`` (so weight gradients are computed too) and reads the input's ``.grad``;
  ``.item()`` after every step.
- **engine** (:mod:`lib`): the :mod:`lib.methods` strategies driven by :func:`lib.train.train_epoch`
  on data already on the device, :func:`lib.data.augment` on whole batches, input-only PGD
  gradients, one host sync per repeat; on CUDA also bf16 autocast and channels_last.

Workloads: ST, SAM and PGD-10 AT (L-inf 8/255) training steps, and the paper's evaluation
(:func:`lib.evaluate.evaluate`: PGD-10 at the four budgets). Each repeat of each side runs in turn
(the order alternates), after untimed warm-up repeats; the median images/s is reported with the
ratio engine / reference, the achieved TFLOP/s and, on a known GPU, the fraction of its bf16 peak.
Separately, the gains that a CPU can measure are timed in isolation (input-only PGD gradients vs
``loss.backward()``; on-device batch augmentation vs per-sample DataLoader transforms), and on CUDA
also bf16 + channels_last, a per-step host sync, ``cudnn.benchmark`` and (``--compile``)
``torch.compile``. On CUDA it also counts host syncs inside the engine's steps and PGD (torch's sync
debug mode; expected 0), and on every device it checks, in fp32 from the same start, that both sides
compute the same PGD examples and the same update (maximum differences, expected 0).

Arithmetic (docs/performance.md): PreActResNet-18 of width 64 costs 1.11 GFLOP per 32x32 image
forward, scaled by (width/64)^2. Passes counted in forward-equivalents: a training pass 3, an
input-only PGD step 2, a PGD step through ``loss.backward()`` 3; SAM = 2 training passes; AT-10 =
10 PGD steps + 1 training pass; evaluation = 1 clean forward + per budget (10 PGD steps + 1 forward).

Timings on a CPU (2 shared cores here) are noisy: read only the ratios there.

Example::

    python -m lib bench                     # CPU: a small configuration, ratios only
    python -m lib bench --device cuda --compile --out /tmp/bench
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import paths
from .attacks import PAPER_BUDGETS, pgd, random_start
from .config import make_config
from .data import augment, batches, load_dataset, make_generator, to_float
from .errors import ConfigError, DataNotFoundError
from .evaluate import evaluate
from .io import write_json, write_text
from .methods import make_strategy
from .models import build_model
from .optim import frozen_bn_stats
from .train import build_optimizer, train_epoch

log = logging.getLogger(__name__)

GFLOP_FORWARD_W64 = 1.11      # GFLOP per 32x32 image, one forward pass of PreActResNet-18 (width 64)
ATTACK_STEPS = 10             # PGD-10, in training (AT) and in the evaluation
TRAIN_EPS, TRAIN_ALPHA = 8 / 255, 2 / 255
EPOCH_IMAGES, EVAL_IMAGES = 50_000, 10_000   # CIFAR-10 training epoch; test set
# dense bf16 peak in TFLOP/s, by a substring of the device name (first match wins)
BF16_PEAK_TFLOPS = (("H100 PCIE", 756.0), ("H100", 990.0), ("H200", 990.0), ("A100", 312.0))
# goals on one H100 at the paper's batch size (issue 5): seconds, or fractions / ratios
TARGETS = {"st": {"seconds": 0.6, "peak_fraction": 0.25, "ratio": 20.0}, "sam": {"seconds": 1.2},
           "at": {"seconds": 4.5, "ratio": 20.0}, "eval": {"seconds": 10.0}}
WORKLOADS = ("st", "sam", "at", "eval")
LABELS = {"st": "ST step", "sam": "SAM step (rho 0.1)", "at": "PGD-10 AT step (L-inf 8/255)",
          "eval": "PGD-10 evaluation, 4 budgets"}


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures. Make one with :func:`default_config`."""

    device: str = "cpu"
    width: int = 8                 # PreActResNet-18 width (64 = the paper's network)
    batch_size: int = 128          # training batch size, both sides
    steps: int = 2                 # batches per repeat of a training workload
    repeats: int = 3               # timed repeats; medians are reported
    warmup: int = 1                # untimed repeats before them
    eval_images: int = 64          # test images per repeat of the evaluation workload
    eval_batch_size: int = 500     # evaluation batch size, both sides (lib.evaluate's default)
    loader_workers: int = 0        # the reference DataLoader's worker processes (0 as in the paper's code)
    compile: bool = False          # also time torch.compile of the model for the ST step (CUDA only)
    compile_mode: str = "default"  # torch.compile mode
    data: str = "auto"             # auto: CIFAR-10 (npz or official files) if found, else synthetic
    threads: int | None = None     # CPU threads for the run (None: leave torch's setting)
    quick: bool = False
    seed: int = 0

    def validate(self) -> "BenchConfig":
        for k in ("width", "batch_size", "steps", "repeats", "eval_images", "eval_batch_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"bench {k.replace('_', '-')} must be >= 1, got {getattr(self, k)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"bench threads must be >= 1, got {self.threads}")
        if self.warmup < 0 or self.loader_workers < 0:
            raise ConfigError("bench warmup and loader-workers must be >= 0")
        if self.data not in ("auto", "synthetic"):
            raise ConfigError(f"bench data must be auto or synthetic, got {self.data!r}")
        return self


def default_config(device=None, quick: bool = False, **overrides) -> BenchConfig:
    """The default configuration for ``device``: the paper's network on CUDA, a small one on a CPU.

    ``quick`` is a tiny configuration for tests (seconds). ``overrides`` set any field (None = default).
    On a CPU the run uses one thread: on shared cores, two OpenMP threads that are descheduled in turn
    can make every step ten times slower, and the noise swamps the ratios.
    Example: ``default_config("cpu", width=16)``.
    """
    device = torch.device(device) if device is not None else _default_device()
    if quick:
        base = dict(width=4, batch_size=16, steps=1, repeats=2, warmup=0, eval_images=8)
    elif device.type == "cuda":
        base = dict(width=64, batch_size=128, steps=20, repeats=5, warmup=2, eval_images=1000)
    else:
        base = dict(width=8, batch_size=128, steps=2, repeats=3, warmup=1, eval_images=64)
    if device.type != "cuda":
        base["threads"] = 1
    base.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(device=str(device), quick=quick, **base).validate()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------
# Arithmetic


def forward_flop(width: int) -> float:
    """FLOP of one forward pass of one 32x32 image through PreActResNet-18 of this width."""
    return GFLOP_FORWARD_W64 * 1e9 * (width / 64) ** 2


def forward_equivalents(workload: str, side: str, attack_steps: int = ATTACK_STEPS,
                        n_budgets: int = len(PAPER_BUDGETS)) -> int:
    """Passes per image of ``workload`` on ``side`` ("engine" or "reference"), in forward passes.

    A training pass is 3; a PGD step is 2 with input-only gradients (engine) and 3 through
    ``loss.backward()`` (reference). Example: ``forward_equivalents("at", "engine") == 23``.
    """
    pgd_step = 2 if side == "engine" else 3
    if workload == "st":
        return 3
    if workload == "sam":
        return 6
    if workload == "at":
        return attack_steps * pgd_step + 3
    if workload == "eval":
        return 1 + n_budgets * (attack_steps * pgd_step + 1)
    raise ValueError(f"unknown workload {workload!r}")


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU (TFLOP/s), else None (a CPU or an unknown device)."""
    name = device_name.upper()
    if name.startswith("CPU"):
        return None
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_kind(device: torch.device) -> str:
    """A short file-name tag: ``cpu``, ``h100``, ``h200``, ``a100``, or the GPU name, lower-case."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    m = re.search(r"\b([a-z]+\d{2,4}[a-z]*)\b", name.replace("nvidia", ""))
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cuda"


# --------------------------------------------------------------------------------------------------
# The reference-style loop (the baseline the engine is compared with)


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 images (N, 32, 32, 3) and labels served one PIL image at a time, as torchvision's CIFAR10 does."""

    def __init__(self, x_nhwc: np.ndarray, y: np.ndarray, transform=None):
        self.x, self.y, self.transform = x_nhwc, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.fromarray(self.x[i])
        return (self.transform(img) if self.transform is not None else img), int(self.y[i])


def reference_transforms(train: bool = True):
    """Per-sample CPU transforms: random crop (4-pixel reflect padding) and flip, then ToTensor."""
    from torchvision import transforms as T
    if not train:
        return T.ToTensor()
    return T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(), T.ToTensor()])


def reference_loader(x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool = True,
                     workers: int = 0, seed: int = 0) -> torch.utils.data.DataLoader:
    """A torchvision-style DataLoader over uint8 images (N, 3, 32, 32) held on the CPU."""
    x_nhwc = x_uint8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    ds = ArrayDataset(x_nhwc, y.cpu().numpy(), reference_transforms(train))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def reference_pgd(model, x, y, eps: float, alpha: float, steps: int, norm: str = "linf", generator=None):
    """PGD the common research-code way: fp32, ``loss.backward()`` (weight gradients too), read ``delta.grad``.

    The random start is :func:`lib.attacks.random_start` (same generator, same draw), so for the same
    start this computes the same ``x_adv`` as :func:`lib.attacks.pgd`; only the cost differs.
    """
    delta = random_start(x, eps, norm, generator)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        delta = delta.detach()
        if norm == "linf":
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        else:
            g = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta + alpha * grad / (g + 1e-12)
            n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * torch.where(n > eps, eps / (n + 1e-12), torch.ones_like(n))
        delta = (x + delta).clamp(0, 1) - x
    model.zero_grad(set_to_none=True)
    return (x + delta).detach()


def reference_step(method: str, model, opt, x, y, config, generator=None) -> tuple[float, int]:
    """One training step, reference style; returns (loss, correct) read back with ``.item()``.

    ``method``: "st", "sam" (SAM with per-parameter loops, BN statistics frozen on its second pass) or
    "at" (PGD examples with BN in eval mode, as ``config.attack_bn_eval``).
    """
    if method == "at":
        model.eval()
        x = reference_pgd(model, x, y, config.eps, config.alpha, config.steps, config.norm, generator)
    model.train()
    opt.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    if method == "sam":
        params = [p for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            grad_norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
            e_ws = []
            for p in params:
                e = p.grad * (config.rho / (grad_norm + 1e-12))
                p.add_(e)
                e_ws.append(e)
        opt.zero_grad()
        with frozen_bn_stats(model):
            F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, e in zip(params, e_ws):
                p.sub_(e)
    opt.step()
    return loss.item(), (logits.argmax(1) == y).sum().item()


def reference_optimizer(config, model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def reference_evaluate(model, loader, budgets=PAPER_BUDGETS, steps: int = ATTACK_STEPS, seed: int = 0,
                       device="cpu") -> dict:
    """Clean and PGD accuracy (%), reference style: loader batches, backward PGD, ``.item()`` per batch.

    With the same seed and batches it returns what :func:`lib.evaluate.evaluate` returns.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    model.eval()
    n, clean, robust = 0, 0, {b.name: 0 for b in budgets}
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        clean += ok.sum().item()
        for b in budgets:
            x_adv = reference_pgd(model, x, y, b.eps, b.alpha, steps, b.norm, gen)
            with torch.no_grad():
                robust[b.name] += ((model(x_adv).argmax(1) == y) & ok).sum().item()
        n += len(y)
    return {"natural": 100.0 * clean / n, **{k: 100.0 * v / n for k, v in robust.items()}}


# --------------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    """Wait for the device to finish queued work (CUDA is asynchronous; timers must not run ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int, on_repeat=None) -> dict:
    """Seconds of each of ``fns`` (name -> callable), ``repeats`` times after ``warmup`` untimed runs.

    Every repeat runs every callable once; the order rotates so no side always runs first (warm
    caches, clock boosts and neighbours' load are shared fairly). Returns name -> list of seconds,
    plus ``"_warmup"``: name -> seconds of the first warm-up run (compile time shows there).
    """
    names = list(fns)
    out = {k: [] for k in names}
    first = {}
    for r in range(warmup + repeats):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            t = time_call(fns[k], device)
            if r >= warmup:
                out[k].append(t)
            elif k not in first:
                first[k] = t
        if on_repeat is not None:
            on_repeat()
    out["_warmup"] = first
    return out


def _summary(seconds: list, images: int) -> dict:
    ips = [images / s for s in seconds]
    return {"seconds": seconds, "images_per_call": images, "images_per_second": statistics.median(ips)}


def _compare(name: str, times: dict, baseline: str, faster: str, images: int, **info) -> dict:
    a, b = _summary(times[baseline], images), _summary(times[faster], images)
    paired = [ta / tb for ta, tb in zip(times[baseline], times[faster])]
    return {"name": name, "baseline": baseline, "faster": faster, "baseline_images_per_second":
            a["images_per_second"], "faster_images_per_second": b["images_per_second"],
            "ratio": b["images_per_second"] / a["images_per_second"], "ratio_min": min(paired),
            "ratio_max": max(paired), "seconds": {baseline: a["seconds"], faster: b["seconds"]},
            "images_per_call": images, **info}


# --------------------------------------------------------------------------------------------------
# Data and models


def bench_data(cfg: BenchConfig, device: torch.device, data_root=None):
    """(x_train, y_train, x_test, y_test, description): uint8 images on the CPU, sized for ``cfg``.

    ``auto`` uses CIFAR-10 from the npz or official source when one is found, else synthetic images
    (the speed does not depend on the pixels). Short splits are tiled to the sizes needed.
    """
    n_train, n_test = cfg.steps * cfg.batch_size, cfg.eval_images
    data = None
    if cfg.data == "auto":
        try:
            data = load_dataset("cifar10", data_root, sources=("npz", "official"))
        except DataNotFoundError as e:
            log.info("bench: no CIFAR-10 found (%s); using synthetic images", e)
    if data is None:
        g = torch.Generator().manual_seed(cfg.seed)
        xtr = torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8)
        xte = torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
        ytr = torch.randint(0, 10, (n_train,), generator=g)
        yte = torch.randint(0, 10, (n_test,), generator=g)
        return xtr, ytr, xte, yte, "synthetic uint8 images (speed does not depend on the pixels)"

    def take(x, y, n):
        idx = torch.arange(n) % len(y)
        return x[idx].cpu(), y[idx].cpu()

    xtr, ytr = take(data.x_train, data.y_train, n_train)
    xte, yte = take(data.x_test, data.y_test, n_test)
    return xtr, ytr, xte, yte, data.describe()


def _model(state: dict, width: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    m = build_model(10, width)
    m.load_state_dict(state)
    return m.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def _run_config(method: str, cfg: BenchConfig):
    over = dict(width=cfg.width, batch_size=cfg.batch_size)
    if method == "at":
        over.update(eps=TRAIN_EPS, alpha=TRAIN_ALPHA, steps=ATTACK_STEPS)
    return make_config(method, "paper", **over)


# --------------------------------------------------------------------------------------------------
# The benchmark


class _Bench:
    def __init__(self, cfg: BenchConfig, data_root=None, progress: bool = False):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("bench --device cuda: no CUDA device is available here")
        self.cuda = self.device.type == "cuda"
        self.amp = torch.bfloat16 if self.cuda else None
        xtr, ytr, xte, yte, self.data_note = bench_data(cfg, self.device, data_root)
        self.x_cpu, self.y_cpu, self.xte_cpu, self.yte_cpu = xtr, ytr, xte, yte
        self.x_dev, self.y_dev = xtr.to(self.device), ytr.to(self.device)
        self.xte_dev, self.yte_dev = xte.to(self.device), yte.to(self.device)
        torch.manual_seed(cfg.seed)
        self.init = build_model(10, cfg.width).state_dict()
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            n = len(WORKLOADS) + 2 + (3 if self.cuda else 0) + (1 if cfg.compile and self.cuda else 0)
            self.bar = tqdm(total=n * (cfg.warmup + cfg.repeats), desc="bench", leave=False)

    def _tick(self):
        if self.bar is not None:
            self.bar.update(1)

    def _times(self, fns: dict, min_warmup: int = 0) -> dict:
        c = self.cfg
        return time_interleaved(fns, self.device, c.repeats, max(c.warmup, min_warmup), on_repeat=self._tick)

    # -- engine pieces ----------------------------------------------------------------------------
    def engine_epoch(self, method: str, model=None, amp="default", channels_last=None, on_step=None,
                     audit: bool = False):
        """A callable running one repeat (``steps`` batches) of the engine, ending with one sync."""
        rc = _run_config(method, self.cfg)
        cl = self.cuda if channels_last is None else channels_last
        model = model if model is not None else _model(self.init, self.cfg.width, self.device, cl)
        opt = build_optimizer(rc, model, self.device)
        strategy = make_strategy(rc, self.amp if amp == "default" else amp)
        data_gen = make_generator(self.device, self.cfg.seed + 1)
        attack_gen = make_generator(self.device, self.cfg.seed + 2)

        def run():
            loss_sum, _ = train_epoch(model, strategy, opt, self.x_dev, self.y_dev, self.cfg.batch_size,
                                      data_gen, attack_gen, channels_last=cl, on_step=on_step)
            return loss_sum if audit else loss_sum.item()    # the one sync per epoch of lib.train
        return run

    def reference_epoch(self, method: str):
        rc = _run_config(method, self.cfg)
        model = _model(self.init, self.cfg.width, self.device, False)
        opt = reference_optimizer(rc, model)
        loader = reference_loader(self.x_cpu, self.y_cpu, self.cfg.batch_size, True, self.cfg.loader_workers,
                                  self.cfg.seed)
        gen = make_generator(self.device, self.cfg.seed + 2)

        def run():
            for x, y in loader:
                x, y = x.to(self.device), y.to(self.device)
                reference_step(method, model, opt, x, y, rc, gen)
        return run

    # -- workloads --------------------------------------------------------------------------------
    def workload(self, name: str) -> dict:
        c = self.cfg
        if name == "eval":
            eng = _model(self.init, c.width, self.device, self.cuda)
            ref = _model(self.init, c.width, self.device, False)
            loader = reference_loader(self.xte_cpu, self.yte_cpu, c.eval_batch_size, train=False)
            fns = {"reference": lambda: reference_evaluate(ref, loader, PAPER_BUDGETS, ATTACK_STEPS, c.seed,
                                                           self.device),
                   "engine": lambda: evaluate(eng, self.xte_dev, self.yte_dev, PAPER_BUDGETS, ATTACK_STEPS,
                                              c.eval_batch_size, c.seed, self.amp)}
            images = len(self.yte_dev)
        else:
            fns = {"reference": self.reference_epoch(name), "engine": self.engine_epoch(name)}
            images = len(self.y_dev)
        t = self._times(fns)
        out = {"workload": name, "label": LABELS[name], "images_per_call": images}
        flop = forward_flop(c.width)
        peak = bf16_peak_tflops(device_name(self.device))
        for side in ("reference", "engine"):
            s = _summary(t[side], images)
            fe = forward_equivalents(name, side)
            s["forward_equivalents"] = fe
            s["tflops"] = s["images_per_second"] * fe * flop / 1e12
            s["peak_fraction"] = s["tflops"] / peak if peak else None
            out[side] = s
        paired = [a / b for a, b in zip(t["reference"], t["engine"])]
        out["ratio"] = out["engine"]["images_per_second"] / out["reference"]["images_per_second"]
        out["ratio_min"], out["ratio_max"] = min(paired), max(paired)
        if self.cuda:
            n = EVAL_IMAGES if name == "eval" else EPOCH_IMAGES
            out["projected_images"] = n
            out["projected_seconds"] = {side: n / out[side]["images_per_second"] for side in ("reference", "engine")}
            tg = TARGETS.get(name, {})
            out["targets"] = tg
            out["meets"] = {
                k: (out["projected_seconds"]["engine"] <= v if k == "seconds" else
                    (out["engine"]["peak_fraction"] or 0) >= v if k == "peak_fraction" else out["ratio"] >= v)
                for k, v in tg.items()}
        return out

    # -- isolated gains ---------------------------------------------------------------------------
    def isolated_pgd_gradient(self) -> dict:
        """PGD-10 (L-inf 8/255) on one batch, fp32, same model and start: input-only vs loss.backward()."""
        c = self.cfg
        model = _model(self.init, c.width, self.device, False).eval()
        x = to_float(self.x_dev[:c.batch_size])
        y = self.y_dev[:c.batch_size]
        gen = make_generator(self.device, c.seed)

        def many(fn):
            def run():
                for _ in range(c.steps):
                    fn()
            return run
        fns = {"loss.backward PGD": many(lambda: reference_pgd(model, x, y, TRAIN_EPS, TRAIN_ALPHA, ATTACK_STEPS,
                                                              "linf", gen)),
               "input-only PGD": many(lambda: pgd(model, x, y, TRAIN_EPS, TRAIN_ALPHA, ATTACK_STEPS, "linf",
                                                  generator=gen, bn_eval=True, autocast_dtype=None))}
        return _compare("input-only PGD gradient vs loss.backward()", self._times(fns), "loss.backward PGD",
                        "input-only PGD", c.steps * len(y), precision="fp32", attack="PGD-10 L-inf 8/255")

    def isolated_augmentation(self) -> dict:
        """Producing augmented batches on the device: DataLoader per-sample transforms vs lib.data.augment."""
        c = self.cfg
        loader = reference_loader(self.x_cpu, self.y_cpu, c.batch_size, True, c.loader_workers, c.seed)
        gen = make_generator(self.device, c.seed)

        def ref():
            for x, y in loader:
                x, y = x.to(self.device), y.to(self.device)

        def eng():
            for xb, yb in batches(self.x_dev, self.y_dev, c.batch_size, shuffle=True, generator=gen):
                x = augment(to_float(xb), gen)
                if self.cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
        return _compare("on-device batch augmentation vs DataLoader per-sample transforms",
                        self._times({"DataLoader transforms": ref, "on-device augment": eng}),
                        "DataLoader transforms", "on-device augment", len(self.y_dev),
                        loader_workers=c.loader_workers)

    def isolated_cuda(self) -> list:
        """CUDA only: bf16 + channels_last vs fp32, a per-step host sync vs none, cudnn.benchmark."""
        out = []
        t = self._times({"fp32": self.engine_epoch("st", amp=None, channels_last=False),
                         "bf16 + channels_last": self.engine_epoch("st")})
        out.append(_compare("bf16 autocast + channels_last vs fp32 (engine ST step)", t, "fp32",
                            "bf16 + channels_last", len(self.y_dev)))
        dev = self.device
        t = self._times({"sync every step": self.engine_epoch("st", on_step=lambda: torch.cuda.synchronize(dev)),
                         "one sync per epoch": self.engine_epoch("st")})
        out.append(_compare("no per-step host sync vs a sync every step (engine ST step)", t, "sync every step",
                            "one sync per epoch", len(self.y_dev)))
        saved = torch.backends.cudnn.benchmark
        on, off = self.engine_epoch("st"), self.engine_epoch("st")

        def with_flag(fn, flag):
            def run():
                torch.backends.cudnn.benchmark = flag
                try:
                    fn()
                finally:
                    torch.backends.cudnn.benchmark = saved
            return run
        t = self._times({"cudnn.benchmark off": with_flag(off, False), "cudnn.benchmark on": with_flag(on, True)})
        out.append(_compare("cudnn.benchmark on vs off (engine ST step)", t, "cudnn.benchmark off",
                            "cudnn.benchmark on", len(self.y_dev)))
        return out

    def compile_comparison(self) -> dict:
        """torch.compile of the model on vs off for the engine ST step; records the choice."""
        c = self.cfg
        if not self.cuda:
            return {"measured": False, "choice": "eager",
                    "note": "torch.compile is used on CUDA only (lib.train ignores compile_model on a CPU)"}
        model = _model(self.init, c.width, self.device, True)
        try:
            net = torch.compile(model, mode=c.compile_mode)
            # at least one warm-up: compilation happens there and is reported apart
            t = self._times({"eager": self.engine_epoch("st"), "compiled": self.engine_epoch("st", model=net)},
                            min_warmup=1)
        except Exception as e:  # noqa: BLE001 - a missing compiler must not end the benchmark
            return {"measured": False, "choice": "eager", "error": f"{type(e).__name__}: {e}"[:500]}
        r = _compare(f"torch.compile (mode {c.compile_mode}) vs eager (engine ST step)", t, "eager", "compiled",
                     len(self.y_dev))
        r.update(measured=True, mode=c.compile_mode, warmup_seconds=t["_warmup"].get("compiled"),
                 choice="compile" if r["ratio"] >= 1.05 else "eager")
        return r

    def sync_audit(self) -> dict:
        """CUDA only: host syncs inside the engine's steps and PGD, counted by torch's sync debug mode.

        Runs after the timed workloads (lazy initialisation is done). Expected: 0 everywhere.
        """
        import warnings
        out = {}
        x, y = to_float(self.x_dev[:self.cfg.batch_size]), self.y_dev[:self.cfg.batch_size]
        x = x.contiguous(memory_format=torch.channels_last)
        model = _model(self.init, self.cfg.width, self.device, True)
        jobs = {m: self.engine_epoch(m, on_step=None, audit=True) for m in ("st", "sam", "at")}
        jobs["pgd eval (restarts=1)"] = lambda: pgd(model, x, y, 8 / 255, 2 / 255, ATTACK_STEPS,
                                                    generator=make_generator(self.device, 0),
                                                    autocast_dtype=self.amp)
        for name, fn in jobs.items():
            fn()            # once outside the audit (first-call setup)
            sync(self.device)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            msgs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
            out[name] = {"syncs": len(msgs), "first": msgs[0][:300] if msgs else None}
        return out

    def consistency(self) -> dict:
        """Same computation check (fp32, on this device): reference vs engine from the same start."""
        c = self.cfg
        n = min(c.batch_size, 64)
        x, y = to_float(self.x_dev[:n]), self.y_dev[:n]
        model = _model(self.init, c.width, self.device, False).eval()
        out = {}
        for norm, eps, alpha in (("linf", TRAIN_EPS, TRAIN_ALPHA), ("l2", 128 / 255, 64 / 255)):
            a = reference_pgd(model, x, y, eps, alpha, 3, norm, make_generator(self.device, 5))
            b = pgd(model, x, y, eps, alpha, 3, norm, generator=make_generator(self.device, 5), autocast_dtype=None)
            out[f"pgd_{norm}_max_abs_diff"] = (a - b).abs().max().item()
        rc = _run_config("st", c)
        m1, m2 = _model(self.init, c.width, self.device, False), _model(self.init, c.width, self.device, False)
        reference_step("st", m1, reference_optimizer(rc, m1), x, y, rc)
        make_strategy(rc, None).step(m2, build_optimizer(rc, m2, self.device), x, y, None)
        out["st_step_max_abs_weight_diff"] = max((p - q).abs().max().item()
                                                 for p, q in zip(m1.parameters(), m2.parameters()))
        return out

    def sections(self):
        """(key, compute) pairs in the order they run; ``compute()`` returns that section's entry or entries."""
        c = self.cfg
        out = [("workloads", lambda w=w: self.workload(w)) for w in WORKLOADS]
        out += [("isolated", self.isolated_pgd_gradient), ("isolated", self.isolated_augmentation)]
        if self.cuda:
            out.append(("isolated", self.isolated_cuda))
        out.append(("compile", self.compile_comparison if c.compile else
                    lambda: {"measured": False, "choice": "eager", "note": "not asked for (--compile)"}))
        out.append(("consistency", self.consistency))
        if self.cuda:
            out.append(("sync_audit", self.sync_audit))
        return out

    def run(self, on_section=None) -> dict:
        """Every section in turn; ``on_section(partial_result)`` after each (to save progress)."""
        res = {"workloads": [], "isolated": []}
        try:
            for key, compute in self.sections():
                v = compute()
                if key in ("workloads", "isolated"):
                    res[key] += v if isinstance(v, list) else [v]
                else:
                    res[key] = v
                if on_section is not None:
                    on_section(res)
        finally:
            if self.bar is not None:
                self.bar.close()
        return res


def run_bench(cfg: BenchConfig, out_dir=None, data_root=None, progress: bool = False) -> dict:
    """Run the benchmark; write ``bench-<device-kind>.json`` and ``.md`` under ``out_dir``.

    ``out_dir`` defaults to ``<outputs>/bench``. Both files are rewritten after every section
    (``"complete": false`` until the end), so a run stopped early keeps what it measured.
    Returns the result dict (with ``files``).
    Example: ``run_bench(default_config("cpu", quick=True), out_dir="/tmp/bench")``.
    """
    import torchvision

    from .runs import git_commit
    cfg = cfg.validate()
    out_dir = Path(out_dir) if out_dir is not None else paths.outputs_root() / "bench"
    saved_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        b = _Bench(cfg, data_root, progress)
        dev, dev_name = b.device, device_name(b.device)
        stem = out_dir / f"bench-{device_kind(dev)}"
        head = {
            "device": dev_name, "device_kind": device_kind(dev), "cuda": b.cuda,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": dataclasses.asdict(cfg), "data": b.data_note,
            "cudnn_benchmark": torch.backends.cudnn.benchmark if b.cuda else None,
            "peak_bf16_tflops": bf16_peak_tflops(dev_name),
            "forward_gflop_per_image": forward_flop(cfg.width) / 1e9,
            "reference": ("torchvision DataLoader ({} workers) with per-sample RandomCrop(32, padding=4, reflect), "
                          "RandomHorizontalFlip, ToTensor; fp32; PGD through loss.backward(); .item() every step"
                          ).format(cfg.loader_workers),
            "engine": ("lib.methods strategies via lib.train.train_epoch; uint8 data on the device, "
                       "lib.data.augment; input-only PGD gradients; one sync per repeat" +
                       ("; bf16 autocast + channels_last" if b.cuda else "; fp32")),
            "files": [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))],
        }
        t0 = time.perf_counter()

        def save(body: dict, complete: bool = False) -> dict:
            result = {**head, **body, "complete": complete, "bench_seconds": time.perf_counter() - t0}
            write_json(stem.with_suffix(".json"), result)
            write_text(stem.with_suffix(".md"), to_markdown(result))
            return result

        body = b.run(on_section=save)
        return save(body, complete=True)
    finally:
        torch.set_num_threads(saved_threads)


# --------------------------------------------------------------------------------------------------
# Markdown


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def to_markdown(r: dict) -> str:
    """The benchmark as a Markdown page: a header, the workload table, the isolated gains."""
    c, cuda = r["config"], r["cuda"]
    ips = "images/s" if cuda else "images/s (CPU, noisy, ratios only)"
    lines = [f"# Speed benchmark: lib engine vs a reference-style loop ({r['device_kind']})", "",
             f"- device: {r['device']}; torch {r['torch']}, torchvision {r['torchvision']}; commit {r['commit']}; "
             f"{r['date']}",
             f"- configuration: PreActResNet-18 width {c['width']} ({r['forward_gflop_per_image']:.3g} GFLOP/image "
             f"forward), batch {c['batch_size']}, {c['steps']} batches per repeat, median of {c['repeats']} repeats "
             f"after {c['warmup']} warm-up; evaluation: {c['eval_images']} test images, batch {c['eval_batch_size']}",
             f"- data: {r['data']}",
             f"- reference: {r['reference']}",
             f"- engine: {r['engine']}", ""]
    if not r.get("complete", True):
        lines += ["**Incomplete: the run stopped (or is still running) before every section was measured.**", ""]
    head = ["workload", f"reference {ips}", f"engine {ips}", "engine / reference"]
    if cuda:
        head += ["engine TFLOP/s", "% of bf16 peak", "engine s per epoch (50k) / eval (10k)", "target s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in r["workloads"]:
        row = [w["label"], _f(w["reference"]["images_per_second"], "{:.0f}"),
               _f(w["engine"]["images_per_second"], "{:.0f}"),
               f"{w['ratio']:.2f}x ({w['ratio_min']:.2f}-{w['ratio_max']:.2f})"]
        if cuda:
            pf = w["engine"]["peak_fraction"]
            row += [_f(w["engine"]["tflops"], "{:.1f}"), _f(None if pf is None else 100 * pf, "{:.1f}"),
                    _f(w["projected_seconds"]["engine"]), _f(w["targets"].get("seconds"), "{:g}")]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Passes per image in forward-equivalents: ST 3, SAM 6, AT-10 23 (engine) / 33 (reference), "
              "evaluation 85 / 125; TFLOP/s counts the passes each side actually runs.", "",
              "## Gains in isolation", "",
              "| comparison | baseline | faster | ratio (min-max) |", "|---|---|---|---|"]
    for i in r["isolated"]:
        lines.append(f"| {i['name']} | {i['baseline']} | {i['faster']} | {i['ratio']:.2f}x "
                     f"({i['ratio_min']:.2f}-{i['ratio_max']:.2f}) |")
    comp = r.get("compile") or {}
    if comp:
        lines += ["", "## torch.compile", ""]
    if comp.get("measured"):
        lines.append(f"ST step, mode {comp['mode']}: {comp['ratio']:.2f}x vs eager (first compiled repeat "
                     f"{_f(comp.get('warmup_seconds'))} s); choice: **{comp['choice']}**.")
    elif comp:
        lines.append(f"Not measured ({comp.get('note') or comp.get('error', '')}); choice: {comp.get('choice')}.")
    audit = r.get("sync_audit")
    if audit:
        lines += ["", "## Host syncs inside the engine (torch.cuda sync debug mode)", "",
                  "; ".join(f"{k}: {v['syncs']}" for k, v in audit.items()) +
                  " (one epoch of steps each, without the epoch's final read-back)."]
    cons = r.get("consistency", {})
    if cons:
        lines += ["", "## Same computation", "",
                  "Reference vs engine in fp32 from the same start: " +
                  ", ".join(f"{k} = {v:.2g}" for k, v in cons.items()) + "."]
    if not cuda:
        lines += ["", "CPU timings on shared cores are noisy: only the ratios mean anything here; absolute times "
                  "and fractions of peak come from a GPU run."]
    return "\n".join(lines) + "\n"
