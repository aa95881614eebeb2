"""Speed benchmark: the lib engine against a reference-style loop, side by side (``python -m lib bench``).

Both run in one process, on the same device, with the same network (PreActResNet-18 of a profile's
width), the same initial weights and the same batch size:

- **reference** (written here, the way much research code is written): a torchvision ``DataLoader``
  serving one PIL image at a time through ``RandomCrop(32, padding=4, padding_mode="reflect")``,
  ``RandomHorizontalFlip`` and ``ToTensor`` on the CPU; fp32; PGD through ``loss.backward()``
  (weight gradients too) reading the input's ``.grad``; ``.item()`` after every step.
- **engine** (:mod:`lib`): the :mod:`lib.methods` classes driven by :func:`lib.train.train_epoch`
  on data already on the device, :func:`lib.data.augment` on whole batches, input-only PGD
  gradients, one host sync per repeat, the training loop's layout (channels_last on CUDA and with bf16; NCHW
  for fp32 on a CPU) and the profile's training precision (bf16
  autocast on CUDA and on CPUs with AMX/AVX512-BF16). Evaluation is fp32 on both sides.

Workloads: ST, SAM and PGD-10 AT (L-inf 8/255) steps, and PGD-10 evaluation at four budgets. The
sides alternate within each repeat, after untimed warm-up; reported: median images/s, the ratio
engine / reference (with its range), TFLOP/s (1.11 GFLOP per image forward at width 64, scaled by
(width/64)^2; passes from :meth:`lib.methods.Method.forward_equivalents`, a backward PGD step
counting 3) and, on a known GPU, the fraction of its bf16 peak; with ``--compile`` also
torch.compile (CUDA; compile time apart). tests/test_bench.py asserts that both sides compute the
same thing. On a CPU (2 shared cores here) read only the ratios. Example::

    python -m lib bench                     # CPU: the cpu profile's network, ratios only
    python -m lib bench --device cuda --compile --out /tmp/bench
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import paths, runtime
from .attacks import CONVERGED_BUDGETS, random_start
from .config import make_config, profile as get_profile
from .data import make_generator
from .errors import ConfigError
from .evaluate import evaluate
from .io import write_json, write_text
from .methods import make_method
from .models import build_model
from .optim import frozen_bn_stats
from .train import build_optimizer, train_epoch

GFLOP_FORWARD_W64 = 1.11      # GFLOP per 32x32 image, one forward pass of PreActResNet-18 (width 64)
STEPS = 10                    # PGD-10, in training (AT) and in the evaluation
EPOCH_IMAGES, EVAL_IMAGES = 50_000, 10_000
# dense bf16 peak in TFLOP/s, by a substring of the device name (first match wins)
BF16_PEAK_TFLOPS = (("H100 PCIE", 756.0), ("H100", 990.0), ("H200", 990.0), ("A100", 312.0))
# goals on one H100/H200 at the paper's batch size: seconds per epoch (eval: 10,000 images), fractions, ratios
TARGETS = {"st": {"seconds": 0.6, "peak_fraction": 0.25, "ratio": 20.0}, "sam": {"seconds": 1.2},
           "at": {"seconds": 4.5, "ratio": 20.0}, "eval": {"seconds": 10.0}}
WORKLOADS = ("st", "sam", "at", "eval")
COMPILE_GAIN = 1.2      # torch.compile is adopted only where it is at least this much faster (issue 32)
LABELS = {"st": "ST step", "sam": "SAM step (rho 0.1)", "at": "PGD-10 AT step (L-inf 8/255)",
          "eval": "PGD-10 evaluation, 4 budgets (fp32)"}


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures. Make one with :func:`default_config`."""

    device: str = "cpu"
    profile: str = "cpu"           # the engine's precision and the network's width come from it
    width: int = 16
    batch_size: int = 128
    steps: int = 2                 # batches per repeat of a training workload
    repeats: int = 3               # timed repeats; medians are reported
    warmup: int = 1                # untimed repeats before them
    eval_images: int = 128         # test images per repeat of the evaluation workload
    eval_batch_size: int = 500
    compile: bool = False          # also time torch.compile of the model (ST, SAM, AT steps, PGD evaluation)
    threads: int | None = None     # CPU threads for the run (None: leave torch's setting)
    quick: bool = False
    seed: int = 0

    def validate(self) -> "BenchConfig":
        bad = [k for k in ("width", "batch_size", "steps", "repeats", "eval_images", "eval_batch_size", "threads")
               if getattr(self, k) is not None and getattr(self, k) < 1] + (["warmup"] if self.warmup < 0 else [])
        if bad:
            raise ConfigError(f"bench {bad[0].replace('_', '-')} must be >= {0 if bad[0] == 'warmup' else 1}, "
                              f"got {getattr(self, bad[0])}")
        get_profile(self.profile)
        return self


def default_config(device=None, quick: bool = False, profile: str | None = None, **overrides) -> BenchConfig:
    """The default configuration: the ``fast`` profile's network on CUDA, the ``cpu`` profile's on a CPU.

    ``quick`` is a tiny configuration for tests (seconds). ``overrides`` set any field (None = default).
    On a CPU the run uses one thread, as each run of the cpu profile does.
    """
    dev = runtime.device(device)
    profile = profile or ("fast" if dev.type == "cuda" else "cpu")
    p = get_profile(profile)
    if quick:
        base = dict(width=4, batch_size=16, steps=1, repeats=2, warmup=0, eval_images=8)
    elif dev.type == "cuda":
        base = dict(width=p.width, batch_size=p.batch_size, steps=20, repeats=5, warmup=2, eval_images=1000)
    else:
        base = dict(width=p.width, batch_size=p.batch_size, steps=2, repeats=3, warmup=1, eval_images=128)
    if dev.type != "cuda":
        base["threads"] = p.cpu_threads or 1
    fields = {f.name for f in dataclasses.fields(BenchConfig)} - {"device", "profile", "quick"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown benchmark setting {unknown[0]!r}; valid settings: {', '.join(sorted(fields))}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return BenchConfig(device=str(dev), profile=profile, quick=quick, **base).validate()


def forward_flop(width: int) -> float:
    """FLOP of one forward pass of one 32x32 image through PreActResNet-18 of this width."""
    return GFLOP_FORWARD_W64 * 1e9 * (width / 64) ** 2


def forward_equivalents(workload: str, side: str, config=None) -> int:
    """Passes per image of ``workload`` on ``side`` ("engine" or "reference"), in forward passes.

    Training workloads read the method's own count (:meth:`lib.methods.Method.forward_equivalents`);
    the reference's PGD steps go through ``loss.backward()`` and cost 3, not 2. Evaluation: one clean
    forward plus, per budget, PGD-10 and one forward.
    """
    pgd_step = 2 if side == "engine" else 3
    if workload == "eval":
        return 1 + len(CONVERGED_BUDGETS) * (STEPS * pgd_step + 1)
    config = config or _run_config(workload, 64, 128)
    fe = config.spec.forward_equivalents(config)
    return fe + (config.spec.attack_steps(config) if side == "reference" else 0)


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU (TFLOP/s), else None (a CPU or an unknown device)."""
    name = device_name.upper()
    if name.startswith("CPU"):
        return None
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def device_kind(dev: torch.device) -> str:
    """A short file-name tag: ``cpu``, ``h100``, ``h200``, ``a100``, or the GPU name, lower-case."""
    if dev.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(dev).lower()
    m = re.search(r"\b([a-z]+\d{2,4}[a-z]*)\b", name.replace("nvidia", ""))
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cuda"


def _run_config(method: str, width: int, batch_size: int):
    over = dict(width=width, batch_size=batch_size)
    if method == "at":
        over.update(eps=8 / 255, alpha=2 / 255, steps=STEPS)
    return make_config(method, "paper", **over)


# --------------------------------------------------------------------------------------------------
# The reference-style loop (the baseline the engine is compared with)


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 images (N, 32, 32, 3) served one PIL image at a time through ``transform``, as torchvision's CIFAR10."""

    def __init__(self, x_nhwc: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x_nhwc, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_loader(x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool = True,
                     seed: int = 0) -> torch.utils.data.DataLoader:
    """A torchvision-style DataLoader (no workers, as the paper's code) over uint8 images (N, 3, 32, 32)."""
    from torchvision import transforms as T
    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(), T.ToTensor()]) \
        if train else T.ToTensor()
    ds = ArrayDataset(x_uint8.permute(0, 2, 3, 1).contiguous().cpu().numpy(), y.cpu().numpy(), tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train,
                                       generator=torch.Generator().manual_seed(seed))


def reference_pgd(model, x, y, eps: float, alpha: float, steps: int, norm: str = "linf", generator=None):
    """PGD the common research-code way: fp32, ``loss.backward()`` (weight gradients too), read ``delta.grad``.

    The random start is :func:`lib.attacks.random_start` (same generator, same draw), so for the same
    start this computes the same ``x_adv`` as :func:`lib.attacks.pgd`; only the cost differs.
    """
    delta = random_start(x, eps, norm, generator)
    for _ in range(steps):
        delta.requires_grad_(True)
        F.cross_entropy(model(x + delta), y).backward()
        grad, delta = delta.grad.detach(), delta.detach()
        if norm == "linf":
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        else:
            delta = delta + alpha * grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
            n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * torch.where(n > eps, eps / (n + 1e-12), torch.ones_like(n))
        delta = (x + delta).clamp(0, 1) - x
    model.zero_grad(set_to_none=True)
    return (x + delta).detach()


def reference_step(method: str, model, opt, x, y, config, generator=None) -> tuple[float, int]:
    """One step, reference style: "st", "sam" (per-parameter loops, BN frozen on its second pass) or "at"
    (PGD with BN in eval mode); returns (loss, correct) read back with ``.item()``."""
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
            scale = config.rho / (torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2) + 1e-12)
            e_ws = [p.grad * scale for p in params]
            for p, e in zip(params, e_ws):
                p.add_(e)
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


def reference_evaluate(model, loader, budgets=CONVERGED_BUDGETS, steps: int = STEPS, seed: int = 0,
                       device="cpu") -> dict:
    """Clean and PGD accuracy (%), reference style: loader batches, backward PGD, ``.item()`` per batch."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    model.eval()
    n, clean, robust = 0, 0, {b.name: 0 for b in budgets}
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        clean += ok.sum().item()
        for b in budgets:          # only examples correct when clean can count as robust (as lib.evaluate)
            x_adv = reference_pgd(model, x[ok], y[ok], b.eps, b.alpha, steps, b.norm, gen)
            with torch.no_grad():
                robust[b.name] += (model(x_adv).argmax(1) == y[ok]).sum().item()
        n += len(y)
    return {"natural": 100.0 * clean / n, **{k: 100.0 * v / n for k, v in robust.items()}}


# --------------------------------------------------------------------------------------------------
# Timing


def time_interleaved(fns: dict, dev: torch.device, repeats: int, warmup: int) -> dict:
    """name -> seconds of each of ``repeats`` timed calls after ``warmup`` untimed ones (the order rotates,
    so no side always runs first), plus ``"_warmup"``: name -> seconds of its first (warm-up) call."""
    names, out = list(fns), {k: [] for k in fns}
    out["_warmup"] = {}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda d: None)
    for r in range(warmup + repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            sync(dev)
            t0 = time.perf_counter()
            fns[k]()
            sync(dev)
            (out[k].append if r >= warmup else lambda t, k=k: out["_warmup"].setdefault(k, t))(time.perf_counter() - t0)
    return out


def bench_data(cfg: BenchConfig):
    """Random uint8 images and labels sized for ``cfg``, on the CPU: the speed does not depend on the pixels."""
    g = torch.Generator().manual_seed(cfg.seed)
    n, m = cfg.steps * cfg.batch_size, cfg.eval_images
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g),
            torch.randint(0, 256, (m, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(0, 10, (m,), generator=g))


class Bench:
    """The workloads of one benchmark run, each a pair of callables timed side by side."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.dev = runtime.device(cfg.device)
        self.dtype = runtime.train_dtype(self.dev, get_profile(cfg.profile).precision)
        self.layout = runtime.memory_format(self.dev, self.dtype)
        self.cpu = bench_data(cfg)
        self.x, self.y, self.xte, self.yte = (t.to(self.dev) for t in self.cpu)
        torch.manual_seed(cfg.seed)
        self.init = build_model(10, cfg.width).state_dict()

    def model(self, engine: bool):
        m = build_model(10, self.cfg.width)
        m.load_state_dict(self.init)
        # the engine's layout is the training loop's (runtime.memory_format): NCHW for fp32 on a CPU
        return m.to(self.dev, memory_format=self.layout if engine else torch.contiguous_format)

    def times(self, fns: dict, min_warmup: int = 0) -> dict:
        return time_interleaved(fns, self.dev, self.cfg.repeats, max(self.cfg.warmup, min_warmup))

    def engine_epoch(self, method: str, model=None):
        """One repeat (``steps`` batches) of the engine, ending with its one sync."""
        rc = _run_config(method, self.cfg.width, self.cfg.batch_size)
        model = model if model is not None else self.model(engine=True)
        opt, m = build_optimizer(rc, model, self.dev), make_method(rc, self.dtype)
        gens = make_generator(self.dev, self.cfg.seed + 1), make_generator(self.dev, self.cfg.seed + 2)
        return lambda: train_epoch(model, m, opt, self.x, self.y, self.cfg.batch_size, *gens,
                                   memory_format=self.layout)[0].item()

    def reference_epoch(self, method: str):
        rc = _run_config(method, self.cfg.width, self.cfg.batch_size)
        model = self.model(engine=False)
        opt = reference_optimizer(rc, model)
        loader = reference_loader(self.cpu[0], self.cpu[1], self.cfg.batch_size, True, self.cfg.seed)
        gen = make_generator(self.dev, self.cfg.seed + 2)

        def run():
            for x, y in loader:
                reference_step(method, model, opt, x.to(self.dev), y.to(self.dev), rc, gen)
        return run

    def workload(self, name: str) -> dict:
        c = self.cfg
        if name == "eval":
            eng, ref = self.model(True), self.model(False)
            loader = reference_loader(self.cpu[2], self.cpu[3], c.eval_batch_size, train=False)
            fns = {"reference": lambda: reference_evaluate(ref, loader, CONVERGED_BUDGETS, STEPS, c.seed, self.dev),
                   "engine": lambda: evaluate(eng, self.xte, self.yte, CONVERGED_BUDGETS, STEPS, c.eval_batch_size,
                                              c.seed)}
            images = len(self.yte)
        else:
            fns = {"reference": self.reference_epoch(name), "engine": self.engine_epoch(name)}
            images = len(self.y)
        t = self.times(fns)
        out = {"workload": name, "label": LABELS[name], "images_per_call": images}
        peak = bf16_peak_tflops(runtime.describe(self.dev)["device"])
        rc = None if name == "eval" else _run_config(name, c.width, c.batch_size)
        for side in ("reference", "engine"):
            ips = statistics.median(images / s for s in t[side])
            fe = forward_equivalents(name, side, rc)
            tflops = ips * fe * forward_flop(c.width) / 1e12
            out[side] = {"seconds": t[side], "images_per_second": ips, "forward_equivalents": fe, "tflops": tflops,
                         "peak_fraction": tflops / peak if peak else None}
        paired = [a / b for a, b in zip(t["reference"], t["engine"])]
        out.update(ratio=out["engine"]["images_per_second"] / out["reference"]["images_per_second"],
                   ratio_min=min(paired), ratio_max=max(paired))
        if self.dev.type == "cuda":
            n = EVAL_IMAGES if name == "eval" else EPOCH_IMAGES
            out["projected_seconds"] = {s: n / out[s]["images_per_second"] for s in ("reference", "engine")}
            out["targets"] = TARGETS.get(name, {})
        return out

    def compiled(self, workloads=("st", "sam", "at", "eval")) -> dict:
        """torch.compile of the model on vs off for the engine's ST, SAM and PGD-10 AT steps and its PGD-10
        evaluation (inductor: CUDA, or C++ on a CPU), timed side by side, with a check that both give the same
        numbers: the first repeat's training loss from the same weights and batches, and the evaluation's accuracies.
        The choice is ``compile`` where every training step and the evaluation gain at least ``COMPILE_GAIN``."""
        out = {"measured": True, "workloads": {}}
        try:
            for w in workloads:
                if w == "eval":
                    def ev(m):
                        return lambda: evaluate(m, self.xte, self.yte, CONVERGED_BUDGETS, STEPS,
                                                self.cfg.eval_batch_size, self.cfg.seed)
                    eager, comp = self.model(True).eval(), self.model(True).eval()
                    fns, images = {"eager": ev(eager), "compiled": ev(torch.compile(comp))}, len(self.yte)
                else:
                    fns = {"eager": self.engine_epoch(w), "compiled": self.engine_epoch(w, model=torch.compile(
                        self.model(True)))}
                    images = len(self.y)
                first, compile_s = {}, {}
                for k, f in fns.items():                        # compiles; the same start, so the same numbers
                    t0 = time.perf_counter()
                    first[k] = f()
                    compile_s[k] = time.perf_counter() - t0
                if w == "eval":
                    agree = max(abs(first["eager"][k] - first["compiled"][k]) for k in first["eager"])
                    agree_what = "largest difference in accuracy, points"
                else:
                    agree = abs(first["eager"] - first["compiled"]) / abs(first["eager"])
                    agree_what = "relative difference of the first repeat's training loss"
                t = self.times(fns)
                ips = {k: statistics.median(images / x for x in t[k]) for k in ("eager", "compiled")}
                out["workloads"][w] = {"label": LABELS[w], "images_per_second": ips,
                                       "ratio": ips["compiled"] / ips["eager"], "seconds": t,
                                       "compile_seconds": compile_s["compiled"] - compile_s["eager"],
                                       "agreement": agree,
                                       "agreement_measures": agree_what}
        except Exception as e:  # noqa: BLE001 - a missing compiler must not end the benchmark
            return {"measured": False, "choice": "eager", "error": f"{type(e).__name__}: {e}"[:500]}
        out["ratio"] = min(v["ratio"] for v in out["workloads"].values())
        out["choice"] = compile_choice({k: v["ratio"] for k, v in out["workloads"].items()})
        return out


def compile_choice(ratios: dict) -> str:
    """``compile`` where every workload's compiled / eager ratio is at least :data:`COMPILE_GAIN`, else ``eager``.
    Per workload is the caller's reading: the long CPU profile compiles its training steps only (``lib.config``)."""
    return "compile" if ratios and min(ratios.values()) >= COMPILE_GAIN else "eager"


def run_bench(cfg: BenchConfig, out_dir=None, progress: bool = False) -> dict:
    """Run the benchmark; write ``bench-<device-kind>.json`` and ``.md`` under ``out_dir`` (default
    ``<outputs>/bench``), rewritten after every section (``"complete": false`` until the end)."""
    import torchvision

    from .runs import git_commit
    cfg = cfg.validate()
    out_dir = Path(out_dir) if out_dir is not None else paths.outputs_root() / "bench"
    with runtime.threads(cfg.threads):
        b = Bench(cfg)
        stem = out_dir / f"bench-{device_kind(b.dev)}"
        head = {"device_kind": device_kind(b.dev), "cuda": b.dev.type == "cuda", **runtime.describe(b.dev),
                "torchvision": torchvision.__version__, "python": platform.python_version(),
                "commit": git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "config": dataclasses.asdict(cfg), "data": "random uint8 images (the speed does not depend on the pixels)",
                "engine_precision": runtime.precision_name(b.dtype),
                "engine_layout": "channels_last" if b.layout == torch.channels_last else "NCHW", "peak_bf16_tflops": None,
                "forward_gflop_per_image": forward_flop(cfg.width) / 1e9,
                "files": [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]}
        head["peak_bf16_tflops"] = bf16_peak_tflops(head["device"])
        t0, body = time.perf_counter(), {"workloads": []}

        def save(complete=False):
            result = {**head, **body, "complete": complete, "bench_seconds": time.perf_counter() - t0}
            write_json(stem.with_suffix(".json"), result)
            write_text(stem.with_suffix(".md"), to_markdown(result))
            return result

        from tqdm.auto import tqdm
        for w in tqdm(WORKLOADS, desc="bench", leave=False, disable=not progress):
            body["workloads"].append(b.workload(w))
            save()
        if cfg.compile:
            body["compile"] = b.compiled()
        return save(complete=True)


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def to_markdown(r: dict) -> str:
    """The benchmark as a Markdown page: a header, the workload table, torch.compile."""
    c, cuda = r["config"], r["cuda"]
    ips = "images/s" if cuda else "images/s (CPU, noisy: ratios only)"
    lines = [f"# Speed benchmark: lib engine vs a reference-style loop ({r['device_kind']})", "",
             f"- device: {r['device']}; torch {r['torch']}, torchvision {r['torchvision']}; commit {r['commit']}; "
             f"{r['date']}",
             f"- configuration: the {c['profile']} profile's PreActResNet-18 (width {c['width']}, "
             f"{r['forward_gflop_per_image']:.3g} GFLOP/image forward), batch {c['batch_size']}, {c['steps']} batches "
             f"per repeat, median of {c['repeats']} repeats after {c['warmup']} warm-up; evaluation: "
             f"{c['eval_images']} test images",
             f"- data: {r['data']}; reference: DataLoader with per-sample PIL transforms, fp32, backward PGD, .item() "
             f"every step; engine: lib.train.train_epoch, on-device data and augmentation, input-only PGD, one sync per "
             f"repeat, {r.get('engine_layout', 'channels_last')}, {r['engine_precision']} training, fp32 evaluation", ""]
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
    lines += ["", "Passes per image in forward-equivalents (lib.methods): ST 3, SAM 6, AT-10 23 (engine) / 33 "
              "(reference), evaluation 85 / 125."]
    comp = r.get("compile")
    if comp and comp.get("measured"):
        lines += ["", "## torch.compile", "", "| workload | eager images/s | compiled images/s | compiled / eager | "
                  "first call's extra s (compiling) | agreement |", "|---|---|---|---|---|---|"]
        for w in comp["workloads"].values():
            lines.append(f"| {w['label']} | {w['images_per_second']['eager']:.0f} | "
                         f"{w['images_per_second']['compiled']:.0f} | {w['ratio']:.2f}x | "
                         f"{_f(w.get('compile_seconds'), '{:.0f}')} | {w['agreement']:.2g} ({w['agreement_measures']}) |")
        gain = [w["label"] for w in comp["workloads"].values() if w["ratio"] >= COMPILE_GAIN]
        rest = [w["label"] for w in comp["workloads"].values() if w["ratio"] < COMPILE_GAIN]
        lines += ["", f"Choice for all workloads together: **{comp['choice']}** (adopted only at {COMPILE_GAIN}x or "
                  f"more on every one). Workloads that gain {COMPILE_GAIN}x or more: {', '.join(gain) or 'none'}; "
                  f"that do not: {', '.join(rest) or 'none'}."]
    elif comp:
        lines += ["", "## torch.compile", "",
                  f"Not measured ({comp.get('note') or comp.get('error', '')}); choice: {comp.get('choice')}."]
    if not cuda:
        lines += ["", "CPU timings on shared cores are noisy: only the ratios mean anything here."]
    return "\n".join(lines) + "\n"
