"""The one training loop, for every method (the method is a :mod:`lib.methods` strategy).

Per epoch: shuffle and augment on the device, one strategy step per batch (metrics accumulate on the
device: no host sync inside the epoch), then one sync, a non-finite-loss check, a small evaluation
for the learning curves, and an atomic checkpoint. Randomness is derived from (seed, epoch), so a
run resumed from its checkpoint is bit-for-bit the run that was never interrupted (on the CPU).
On CUDA: bf16 autocast and channels_last; on the CPU: fp32.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .attacks import PAPER_BUDGETS
from .data import augment, batches, make_generator, to_float
from .errors import NonFiniteLossError, SambookError
from .evaluate import evaluate
from .io import atomic_write
from .methods import make_strategy
from .models import build_model
from .optim import SAM

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_at(config, epoch: int) -> float:
    """The paper's step schedule: lr, x0.1 from 75 % of the epochs, x0.01 from 90 % (epoch is 0-based)."""
    lr = config.lr
    for m in config.lr_milestones:
        if epoch >= m * config.epochs:
            lr *= 0.1
    return lr


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct, reproducible seed for each (run seed, epoch, random stream)."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


def build_optimizer(config, model, device):
    kw = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if device.type == "cuda":
        kw["fused"] = True
    else:
        kw["foreach"] = True
    if config.spec.sam:
        return SAM(model.parameters(), torch.optim.SGD, rho=config.rho, adaptive=config.method == "asam", **kw)
    return torch.optim.SGD(model.parameters(), **kw)


def train_epoch(net, strategy, opt, x_train, y_train, batch_size: int, data_gen, attack_gen,
                channels_last: bool = False, on_step=None):
    """One pass over (x_train, y_train) already on the device: shuffle, augment, one strategy step per batch.

    Metrics accumulate on the device, so nothing here waits for the GPU. Returns (loss_sum, correct):
    device tensors, the summed training loss and the number of correct predictions.
    """
    loss_sum = torch.zeros((), device=y_train.device)
    correct = torch.zeros((), device=y_train.device, dtype=torch.long)
    for xb, yb in batches(x_train, y_train, batch_size, shuffle=True, generator=data_gen):
        x = augment(to_float(xb), data_gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = strategy.step(net, opt, x, yb, attack_gen)
        loss_sum += loss.float() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        if on_step is not None:
            on_step()
    return loss_sum, correct


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list = field(default_factory=list)
    finished: bool = True
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    images_seen: int = 0


def _save_checkpoint(path: Path, model, opt, epoch, history, config, train_seconds, eval_seconds, images):
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
             "config_hash": config.config_hash(), "train_seconds": train_seconds, "eval_seconds": eval_seconds,
             "images_seen": images, "torch_rng": torch.get_rng_state()}
    atomic_write(path, lambda p: torch.save(state, p))


def train(config, data, device=None, run_dir=None, progress: bool = True, stop_after_epoch: int | None = None,
          compile_model: bool = False) -> TrainResult:
    """Train ``config`` on ``data`` (a :class:`lib.data.CifarData` already subset as the config says).

    Args:
        run_dir: where to checkpoint every epoch; an existing checkpoint of the same config is resumed.
        stop_after_epoch: return after this many epochs (for tests and for splitting long runs).
        compile_model: wrap the model in ``torch.compile`` (CUDA only; measured in ``make bench``).

    Returns a :class:`TrainResult` whose ``history`` has one dict per epoch.
    """
    device = torch.device(device) if device is not None else default_device()
    cuda = device.type == "cuda"
    data = data.to(device)
    torch.manual_seed(config.seed)
    model = build_model(config.num_classes, config.width, config.dataset)
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    opt = build_optimizer(config, model, device)
    strategy = make_strategy(config, torch.bfloat16 if cuda else None)
    net = torch.compile(model) if (compile_model and cuda) else model

    history, start, train_s, eval_s, images = [], 0, 0.0, 0.0, 0
    ckpt = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location=device, weights_only=False)
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
    x_curve, y_curve = data.x_test[:config.epoch_eval_size], data.y_test[:config.epoch_eval_size]
    bar = tqdm(total=(config.epochs - start) * steps_per_epoch, desc=config.name, disable=not progress,
               leave=False, mininterval=1.0)
    try:
        for epoch in range(start, config.epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at(config, epoch)
            data_gen = make_generator(device, stream_seed(config.seed, epoch, 0))
            attack_gen = make_generator(device, stream_seed(config.seed, epoch, 1))
            model.train()
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss_sum, correct = train_epoch(net, strategy, opt, data.x_train, data.y_train, config.batch_size,
                                            data_gen, attack_gen, channels_last=cuda, on_step=lambda: bar.update(1))
            train_loss = loss_sum.item() / n_train      # the one sync per epoch
            train_acc = 100.0 * correct.item() / n_train
            dt = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({train_loss}) in epoch {epoch + 1} of {config.name}: "
                    f"lower lr or rho, or check the data; the last good checkpoint is kept")
            train_s += dt
            images += n_train
            t1 = time.perf_counter()
            curve = evaluate(model, x_curve, y_curve, budgets=PAPER_BUDGETS[:1], steps=config.eval_steps,
                             seed=config.seed, autocast_dtype=torch.bfloat16 if cuda else None)
            eval_s += time.perf_counter() - t1
            row = {"epoch": epoch + 1, "lr": lr_at(config, epoch), "train_loss": train_loss, "train_acc": train_acc,
                   "test_acc": curve["natural"], f"test_{PAPER_BUDGETS[0].name}": curve[PAPER_BUDGETS[0].name],
                   "epoch_seconds": dt, "images_per_second": n_train / dt}
            history.append(row)
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{curve['natural']:.1f}")
            if ckpt is not None:
                _save_checkpoint(ckpt, model, opt, epoch + 1, history, config, train_s, eval_s, images)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
                return TrainResult(model, history, False, train_s, eval_s, images)
    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
        raise SambookError(f"out of GPU memory in {config.name}: lower the batch size ({e})") from None
    finally:
        bar.close()
    return TrainResult(model, history, True, train_s, eval_s, images)
