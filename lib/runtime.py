"""The runtime: which device, which arithmetic, how many CPU threads, and temporary changes to a model.

- Device: CUDA when visible, else the CPU (:func:`device`).
- Precision (:func:`train_dtype`): training may run under bf16 autocast on CUDA and on CPUs with
  fast bf16 units (AMX or AVX512-BF16, and oneDNN allowed to use them); fp32 elsewhere. Every run
  records which (:func:`precision_name`). Evaluation is always fp32 (:func:`fp32_evaluation`).
- Threads (:func:`threads`): a fixed torch thread count inside a block.
- Temporary model changes that are undone exactly: :func:`model_mode` (train/eval of every
  submodule) and :func:`perturbed` (weights moved by v, then restored from a copy, bit for bit),
  used by AWP, the duality probe and the flatness probe.
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Iterable

import torch
from torch import nn

from .errors import ConfigError, SambookError

PRECISIONS = ("auto", "fp32", "bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 convolutions still have native kernels
_BF16_ISA_WORDS = ("AMX", "BF16", "FP16", "AVX10", "ALL", "DEFAULT")


def device(name=None) -> torch.device:
    """``name`` as a torch.device, or CUDA when visible, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; valid devices: cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; valid devices: cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix units (AMX-BF16 or AVX512-BF16) that oneDNN may use."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and not any(w in cap for w in _BF16_ISA_WORDS):
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def train_dtype(dev: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of training on ``dev``: torch.bfloat16, or None for fp32.

    ``precision``: ``fp32``; ``bf16``; or ``auto``, bf16 on CUDA and on CPUs with fast bf16
    (:func:`cpu_has_fast_bf16`), else fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if dev.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def memory_format(dev: torch.device, dtype: torch.dtype | None):
    """The training layout: channels_last on CUDA and for bf16 on a CPU, else the default NCHW.

    Not for fp32 training on a CPU: with torch 2.14 the weight-gradient of a channels_last fp32
    convolution segfaults there for an odd batch size with more than one thread (tests/test_engine.py
    trains such a last batch). Evaluation and attacks (input gradients only) always use channels_last,
    which makes oneDNN's fp32 convolutions about 3x faster at these widths.
    """
    return torch.channels_last if (dev.type == "cuda" or dtype is not None) else torch.contiguous_format


def autocast(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def autocast_active() -> bool:
    """True inside any enabled torch.autocast region (CPU or CUDA)."""
    return any(torch.is_autocast_enabled(t) for t in ("cpu", "cuda"))


@contextlib.contextmanager
def fp32_evaluation():
    """Evaluation arithmetic: refuse to run under autocast; on CUDA, TF32 off for convolutions and matmuls.

    bf16 rounds the input of the first convolution to a spacing of about 0.25/255 (pixel units),
    the size of a whole L-inf 1/255 PGD step, so an attack under autocast optimises a different
    function from the one that classifies. TF32 (10-bit mantissa) has the same problem on CUDA.
    """
    if autocast_active():
        raise SambookError("evaluation runs in fp32 only: call it outside torch.autocast")
    cuda = torch.cuda.is_available()
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    try:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def threads(n: int | None):
    """Use ``n`` torch threads inside the block (None: leave the setting alone)."""
    if not n:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool):
    """Temporarily put the model in train or eval mode; restore every submodule's mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, t in saved:
            m.training = t


@contextlib.contextmanager
def perturbed(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]):
    """Move each parameter w by v inside the block; afterwards w is exactly what it was (restored from a copy).

    ``pairs``: (parameter, v) items. Restoring from a copy instead of subtracting v leaves no
    (w + v) - v rounding residue.
    """
    pairs = list(pairs)
    saved = [w.detach().clone() for w, _ in pairs]
    try:
        with torch.no_grad():
            for w, v in pairs:
                w.add_(v)
        yield
    finally:
        with torch.no_grad():
            for (w, _), w0 in zip(pairs, saved):
                w.copy_(w0)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels run (AVX2, AVX-512, AMX), as /proc/cpuinfo names them."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def describe(dev: torch.device) -> dict:
    """Provenance of the arithmetic: device name, CPU model and flags, threads, kernel caps, torch."""
    out = {"device_type": dev.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        out["device"] = torch.cuda.get_device_name(dev)
        out["cuda"] = torch.version.cuda
    else:
        out["device"] = f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    out["cpu"] = cpu_model()
    out["cpu_flags"] = cpu_flags()
    out["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if isa:
        out["onednn_max_cpu_isa"] = isa
    return out
