"""The one training loop, for every method (the method is a :mod:`lib.methods` class).

Per epoch: shuffle and augment on the device, one method step per batch (metrics accumulate on the
device: no host sync inside the epoch), then one sync, a non-finite-loss check, a small fp32
evaluation for the learning curves, and an atomic checkpoint. Randomness is derived from (seed,
epoch), so a run resumed from its checkpoint is bit-for-bit the run that was never interrupted (on
the CPU). Arithmetic (:mod:`lib.runtime`): bf16 autocast and channels_last on CUDA and on CPUs with
fast bf16 units when the profile allows it, fp32 elsewhere; the run records which.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import runtime
from .attacks import step_budget
from .config import profile as get_profile
from .data import augment, batches, make_generator, to_float
from .errors import NonFiniteLossError, SambookError
from .evaluate import evaluate
from .io import atomic_write
from .methods import make_method
from .models import build_model
from .optim import SAM, asam_param_groups

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CURVE_BUDGET = step_budget("linf", 1 / 255, 4)     # the learning curves' robust column: L-inf 1/255, step eps/4


def lr_at(config, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based).

    ``step`` schedule (the paper's): lr, x0.1 from 75 % of the epochs, x0.01 from 90 %, changing at
    epoch boundaries. ``onecycle``: linear from 0 to lr over the first ``warmup`` fraction of the
    steps, then linear down to 0 at the last step (Smith & Topin 2019's shape without momentum cycling).
    """
    if config.schedule == "onecycle":
        total = config.epochs * steps_per_epoch
        up = max(1, round(config.warmup * total))
        if step < up:
            return config.lr * (step + 1) / up
        return config.lr * max(0.0, (total - step) / max(1, total - up))
    epoch = step // steps_per_epoch
    lr = config.lr
    for m in config.lr_milestones:
        if epoch >= m * config.epochs:
            lr *= 0.1
    return lr


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct, reproducible seed for each (run seed, epoch, random stream)."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


def build_optimizer(config, model, device):
    """SGD with the config's settings (fused on CUDA, foreach on a CPU), wrapped in SAM for SAM-based methods."""
    kw = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov)
    kw["fused" if torch.device(device).type == "cuda" else "foreach"] = True
    spec = config.spec
    if spec.sam:
        params = asam_param_groups(model) if spec.adaptive else model.parameters()
        return SAM(params, torch.optim.SGD, rho=config.rho, adaptive=spec.adaptive, **kw)
    return torch.optim.SGD(model.parameters(), **kw)


def train_epoch(net, method, opt, x_train, y_train, batch_size: int, data_gen, attack_gen,
                memory_format=torch.contiguous_format, on_step=None):
    """One pass over (x_train, y_train) already on the device: shuffle, augment, one method step per batch.

    Metrics accumulate on the device, so nothing here waits for the GPU. ``on_step(i)`` is called
    before batch i (the loop sets the learning rate there). Returns (loss_sum, correct): device
    tensors, the summed training loss and the number of correct predictions.
    """
    loss_sum = torch.zeros((), device=y_train.device)
    correct = torch.zeros((), device=y_train.device, dtype=torch.long)
    for i, (xb, yb) in enumerate(batches(x_train, y_train, batch_size, shuffle=True, generator=data_gen)):
        if on_step is not None:
            on_step(i)
        x = augment(to_float(xb), data_gen)
        if memory_format is not torch.contiguous_format:
            x = x.contiguous(memory_format=memory_format)
        loss, logits = method.step(net, opt, x, yb, attack_gen)
        loss_sum += loss.float() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum, correct


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list = field(default_factory=list)
    finished: bool = True
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    images_seen: int = 0
    precision: str = "fp32"


def _save_checkpoint(path: Path, model, opt, epoch, history, config, train_seconds, eval_seconds, images):
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
             "config_hash": config.config_hash(), "train_seconds": train_seconds, "eval_seconds": eval_seconds,
             "images_seen": images, "torch_rng": torch.get_rng_state()}
    atomic_write(path, lambda p: torch.save(state, p))


def train(config, data, device=None, run_dir=None, progress: bool = True, stop_after_epoch: int | None = None,
          compile_model: bool = False, curve: tuple[int, int] | None = None) -> TrainResult:
    """Train ``config`` on ``data`` (a :class:`lib.data.CifarData`, training split as the config says).

    Args:
        run_dir: where to checkpoint every epoch; an existing checkpoint of the same config is resumed.
        stop_after_epoch: return after this many epochs (for tests and for splitting long runs).
        compile_model: wrap the model in ``torch.compile`` on CUDA (measured in ``make bench``); a profile
            whose ``compile`` names the method compiles its training steps on any device (the learning curves
            stay eager).
        curve: (test images, PGD steps) of the per-epoch learning curve, default the profile's.

    Returns a :class:`TrainResult` whose ``history`` has one dict per epoch.
    """
    dev = runtime.device(device)
    prof = get_profile(config.profile)
    dtype = runtime.train_dtype(dev, prof.precision)
    fmt = runtime.memory_format(dev, dtype)
    data = data.to(dev)
    torch.manual_seed(config.seed)
    model = build_model(config.num_classes, config.width, config.dataset).to(dev, memory_format=fmt)
    opt = build_optimizer(config, model, dev)
    method = make_method(config, dtype)
    net = torch.compile(model) if (compile_model and dev.type == "cuda") or prof.compiles(config.method) else model

    history, start, train_s, eval_s, images = [], 0, 0.0, 0.0, 0
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location=dev, weights_only=False)
        except Exception as e:  # a damaged checkpoint is discarded, never half-used
            log.warning("ignoring unreadable checkpoint %s (%s); starting over", ckpt, e)
            state = None
        if state is not None and state.get("config_hash") == config.config_hash():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            history, start = state["history"], state["epoch"]
            train_s, eval_s, images = state["train_seconds"], state["eval_seconds"], state["images_seen"]
            torch.set_rng_state(state["torch_rng"])
            log.info("resumed %s at epoch %d", config.name, start)

    n_train = len(data.y_train)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    curve_images, curve_steps = curve if curve is not None else (prof.curve_images, prof.curve_steps)
    x_curve, y_curve = data.x_test[:curve_images], data.y_test[:curve_images]
    bar = tqdm(total=(config.epochs - start) * steps_per_epoch, desc=config.name, disable=not progress,
               leave=False, mininterval=1.0)

    def set_lr(epoch, i):
        for g in opt.param_groups:
            g["lr"] = lr_at(config, epoch * steps_per_epoch + i, steps_per_epoch)
        if i:
            bar.update(1)

    try:
        for epoch in range(start, config.epochs):
            data_gen = make_generator(dev, stream_seed(config.seed, epoch, 0))
            attack_gen = make_generator(dev, stream_seed(config.seed, epoch, 1))
            model.train()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            loss_sum, correct = train_epoch(net, method, opt, data.x_train, data.y_train, config.batch_size,
                                            data_gen, attack_gen, memory_format=fmt,
                                            on_step=lambda i, e=epoch: set_lr(e, i))
            train_loss = loss_sum.item() / n_train      # the one sync per epoch
            train_acc = 100.0 * correct.item() / n_train
            dt = time.perf_counter() - t0
            bar.update(1)
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({train_loss}) in epoch {epoch + 1} of {config.name}: "
                    f"lower lr or rho, or check the data; the last good checkpoint is kept")
            train_s += dt
            images += n_train
            t1 = time.perf_counter()
            c = evaluate(model, x_curve, y_curve, budgets=(CURVE_BUDGET,), steps=curve_steps, seed=config.seed)
            eval_s += time.perf_counter() - t1
            row = {"epoch": epoch + 1, "lr": lr_at(config, (epoch + 1) * steps_per_epoch - 1, steps_per_epoch),
                   "train_loss": train_loss, "train_acc": train_acc, "test_acc": c["natural"],
                   f"test_{CURVE_BUDGET.threat}": c[CURVE_BUDGET.name], "epoch_seconds": dt,
                   "images_per_second": n_train / dt}
            history.append(row)
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{c['natural']:.1f}")
            if ckpt is not None:
                _save_checkpoint(ckpt, model, opt, epoch + 1, history, config, train_s, eval_s, images)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
                return TrainResult(model, history, False, train_s, eval_s, images, runtime.precision_name(dtype))
    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
        raise SambookError(f"out of GPU memory in {config.name}: lower the batch size ({e})") from None
    finally:
        bar.close()
    return TrainResult(model, history, True, train_s, eval_s, images, runtime.precision_name(dtype))
