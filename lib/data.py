"""CIFAR-10 / CIFAR-100 held as uint8 tensors on the training device, augmented there on batches.

Three sources, tried in the order the caller gives:
- ``official``: the official python files through ``torchvision.datasets.CIFAR10/100`` under
  ``<root>`` (``cifar-10-batches-py/``, ``cifar-100-python/``); downloaded only when asked.
- ``imagefolder``: an ImageFolder layout ``train/<class>/*``, ``test/<class>/*``: ``<root>`` itself
  or ``<root>/<dataset>-jpeg75`` (e.g. the lossy JPEG copy of CIFAR-10 in ../shared/data).
- ``npz``: an ``.npz`` with x_train/y_train/x_test/y_test (uint8 NHWC): ``<root>`` itself if it is
  a file, else ``<root>/<dataset>-exact-subset.npz``.

The root is an argument or ``$SAMBOOK_DATA``. Decoded images are cached as uint8 ``.npz`` under
``$SAMBOOK_CACHE`` (decode once). Augmentation (random crop with 4-pixel reflect padding,
horizontal flip) runs on whole batches on the device: no per-sample CPU transforms.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import paths
from .errors import ConfigError, DataNotFoundError
from .io import atomic_write

log = logging.getLogger(__name__)

DATASETS = {"cifar10": 10, "cifar100": 100}
SOURCES = ("official", "imagefolder", "npz")
JPEG_NOTE = ("JPEG-compressed copy of CIFAR-10 (quality ~75, mean pixel error ~5.8/255 against the "
             "official pixels): numbers are not directly comparable with the paper's")


@dataclass
class CifarData:
    """A dataset split held as tensors: images uint8 (N, 3, 32, 32), labels int64 (N,)."""

    name: str
    source: str
    location: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list = field(default_factory=list)
    exact: bool = True
    note: str = ""
    # positions of the stored test images in the order an unsubsetted test split is used (None: as stored).
    # An ImageFolder stores them sorted by class, so "the first n test images" would be one or two classes:
    # it gets the official order (its order.csv) or else a fixed permutation (see test_order_for).
    test_order: torch.Tensor | None = None
    test_order_note: str = ""

    @property
    def num_classes(self) -> int:
        return DATASETS[self.name]

    def describe(self) -> str:
        """One sentence naming the data a result was computed on."""
        s = (f"{self.name.upper().replace('CIFAR', 'CIFAR-')} from the {self.source} source "
             f"'{Path(self.location).name}': {len(self.y_train)} training and {len(self.y_test)} test images")
        return s + (f"; {self.note}" if self.note else "")

    def to(self, device) -> "CifarData":
        """Move every split to ``device`` (e.g. the GPU) once; batches are then sliced there."""
        for k in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def subset(self, train_per_class: int | None = None, test_per_class: int | None = None,
               seed: int = 0) -> "CifarData":
        """First N images per class of each split (in file order), N=None keeps the split.

        The selection is deterministic (first N); ``seed`` only shuffles the order of the kept images.
        A whole test split (``test_per_class=None``) is put in ``test_order`` where the source has one
        (an ImageFolder's, class-sorted as stored), so that its first n images span the classes; the
        training split keeps its stored order (training shuffles it every epoch).
        """
        out = CifarData(**{**self.__dict__})
        if test_per_class is None and self.test_order is not None:
            order = self.test_order.to(self.y_test.device)
            out.x_test, out.y_test = self.x_test[order], self.y_test[order]
            out.test_order = None
        elif test_per_class is not None:
            out.test_order = None
            out.test_order_note = f"the first {test_per_class} test images of each class, shuffled (seed {seed})"
        else:
            out.test_order_note = self.test_order_note or "test images as stored"
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            if n is None:
                continue
            if n < 1:
                raise ConfigError(f"{split} subset must keep at least 1 image per class, got {n}")
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            keep = first_per_class(y, n)
            g = torch.Generator().manual_seed(seed)
            keep = keep[torch.randperm(len(keep), generator=g)]
            keep = keep.to(y.device)
            setattr(out, f"x_{split}", x[keep])
            setattr(out, f"y_{split}", y[keep])
        return out


_LOADED: dict = {}


def load_subset(dataset: str, source: str, root=None, train_per_class: int | None = None,
                test_per_class: int | None = None, device=None, download: bool = False) -> "CifarData":
    """The first ``train_per_class`` / ``test_per_class`` images per class from ``source``, in a fixed
    shuffled order (seed 0), loaded once per process and device."""
    key = (dataset, source, str(paths.data_root(root)), train_per_class, test_per_class, str(device))
    if key not in _LOADED:
        data = load_dataset(dataset, root, sources=(source,), download=download)
        data = data.subset(train_per_class, test_per_class, seed=0)
        _LOADED[key] = data.to(device) if device is not None else data
    return _LOADED[key]


def first_per_class(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted) of the first n examples of each class."""
    y = y.cpu()
    idx = [torch.nonzero(y == c).flatten()[:n] for c in torch.unique(y)]
    return torch.sort(torch.cat(idx)).values


def _candidates(dataset: str, root: Path) -> dict[str, list[Path]]:
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[dataset]
    return {
        "official": [root / folder],
        "imagefolder": [root, root / f"{dataset}-jpeg75"],
        "npz": [root, root / f"{dataset}-exact-subset.npz"],
    }


def _usable(source: str, path: Path) -> bool:
    if source == "official":
        return path.is_dir()
    if source == "imagefolder":
        return (path / "train").is_dir() and (path / "test").is_dir()
    return path.is_file() and path.suffix == ".npz"


def find_source(dataset: str = "cifar10", root=None, sources=SOURCES, download: bool = False) -> tuple[str, Path]:
    """The first usable (source, path) under the data root, or a DataNotFoundError naming every path tried."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    sources = tuple(sources)
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ConfigError(f"unknown data source {bad[0]!r}; valid sources: {', '.join(SOURCES)}")
    root = paths.data_root(root)
    cands = _candidates(dataset, root)
    tried = []
    for s in sources:
        for p in cands[s]:
            if _usable(s, p):
                return s, p
            tried.append(str(p))
    if download and "official" in sources:
        return "official", cands["official"][0]
    tried = list(dict.fromkeys(tried))
    raise DataNotFoundError(
        f"no {dataset} data found (sources {', '.join(sources)}); tried: {', '.join(tried)}. "
        f"Fix: download the official files with --download (or DOWNLOAD=1 for make; needs internet), "
        f"or point SAMBOOK_DATA (or --data-root) at a local copy")


def load_dataset(dataset: str = "cifar10", root=None, sources=SOURCES, download: bool = False,
                 device=None, cache: bool = True) -> CifarData:
    """Load a dataset from the first available source, as uint8 tensors (on ``device`` if given).

    Example: ``load_dataset("cifar10", root="../shared/data", sources=("npz",))``.
    """
    source, path = find_source(dataset, root, sources, download)
    data = _cached(dataset, source, path, download) if cache else _decode(dataset, source, path, download)
    if source == "imagefolder":
        data.test_order, data.test_order_note = test_order_for(path, data.y_test, data.classes)
    return data.to(device) if device is not None else data


ORDER_FILE = "order.csv"


def class_sorted_test(config, stamp) -> bool:
    """True where a result stamped ``stamp`` (the ``test_order`` of an evaluation record, probe record or
    run's metrics; None where it has none) was measured on an ImageFolder's whole test split in its stored,
    class-sorted order: made before that split was put in order, its "first n test images" are one or two
    classes. Results of profiles that subset the test split per class were never affected."""
    from .config import profile as get_profile
    return (not stamp and config.data_source == "imagefolder"
            and get_profile(config.profile).test_per_class is None)


def test_order_for(path: Path, y_test: torch.Tensor, classes: list) -> tuple[torch.Tensor, str]:
    """Where the test images of an ImageFolder (stored sorted by class folder, then file name) go when the
    whole split is used: the official order where ``<path>/order.csv`` maps each official test index to its
    file (columns split, index, label, path), else a fixed permutation (seed 0). Returns (positions, a note
    saying which). A present order.csv that does not describe this folder is an error naming it."""
    f = Path(path) / ORDER_FILE
    n = len(y_test)
    if not f.is_file():
        g = torch.Generator().manual_seed(0)
        return torch.randperm(n, generator=g), f"test images in a fixed random order (seed 0; no {ORDER_FILE})"
    import csv
    try:
        with open(f, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("split") == "test"]
        stored = sorted(((Path(r["path"]).parent.name, Path(r["path"]).name, int(r["index"]), int(r["label"]))
                         for r in rows))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DataNotFoundError(f"{f}: not a usable order file (split,index,label,path): {e}") from None
    index = np.array([s[2] for s in stored], dtype=np.int64)
    labels = np.array([s[3] for s in stored], dtype=np.int64)
    folders = [s[0] for s in stored]
    if (len(stored) != n or not np.array_equal(np.sort(index), np.arange(n))
            or not np.array_equal(labels, y_test.cpu().numpy())
            or any(classes[int(c)] != folder for c, folder in zip(labels, folders))):
        raise DataNotFoundError(f"{f}: does not describe the {n} test images of {path / 'test'} (count, indices, "
                                f"labels or class folders differ); remove it or replace the folder with a good copy")
    return torch.from_numpy(np.argsort(index, kind="stable")), f"test images in the official order ({ORDER_FILE})"


def _cache_file(dataset: str, source: str, path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha1(f"{dataset}|{source}|{path}|{st.st_mtime_ns}|{st.st_size}".encode()).hexdigest()[:12]
    return paths.cache_root() / "data" / f"{dataset}-{source}-{key}.npz"


def _cached(dataset: str, source: str, path: Path, download: bool) -> CifarData:
    if source == "npz":  # already uint8 arrays: nothing to decode
        return _decode(dataset, source, path, download)
    target = _cache_file(dataset, source, path) if path.exists() else None
    if target is not None and target.exists():
        try:
            with np.load(target, allow_pickle=False) as z:
                return _from_arrays(dataset, source, path, z["x_train"], z["y_train"], z["x_test"],
                                    z["y_test"], [str(c) for c in z["classes"]])
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring damaged data cache %s: %s", target, e)
    data = _decode(dataset, source, path, download)
    target = _cache_file(dataset, source, path)
    def write(p):
        with open(p, "wb") as f:
            np.savez(f, x_train=data.x_train.permute(0, 2, 3, 1).numpy(), y_train=data.y_train.numpy(),
                     x_test=data.x_test.permute(0, 2, 3, 1).numpy(), y_test=data.y_test.numpy(),
                     classes=np.array(data.classes))

    try:
        atomic_write(target, write)
    except OSError as e:
        log.warning("could not write the data cache %s: %s", target, e)
    return data


def _from_arrays(dataset, source, path, x_train, y_train, x_test, y_test, classes) -> CifarData:
    def imgs(a):
        a = np.asarray(a)
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] not in ((32, 32, 3), (3, 32, 32)):
            raise DataNotFoundError(f"{path}: expected uint8 images of shape (N, 32, 32, 3), got "
                                    f"{a.dtype} {a.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.permute(0, 3, 1, 2).contiguous() if a.shape[-1] == 3 else t

    def labels(a, n):
        t = torch.from_numpy(np.asarray(a).astype(np.int64))
        if t.shape != (n,) or (n and (t.min() < 0 or t.max() >= DATASETS[dataset])):
            raise DataNotFoundError(f"{path}: labels do not match {dataset} ({n} images)")
        return t

    xtr, xte = imgs(x_train), imgs(x_test)
    lossy = source == "imagefolder" and "jpeg" in path.name.lower()
    exact_subset = source == "npz"
    note = JPEG_NOTE if lossy else ("byte-exact official pixels, a subset of CIFAR-10" if exact_subset else "")
    return CifarData(dataset, source, str(path), xtr, labels(y_train, len(xtr)), xte, labels(y_test, len(xte)),
                     classes=list(classes), exact=not lossy, note=note)


def _decode(dataset: str, source: str, path: Path, download: bool) -> CifarData:
    if source == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        except (KeyError, ValueError, OSError) as e:
            raise DataNotFoundError(f"{path}: not a usable .npz with x_train/y_train/x_test/y_test ({e})") from None
        classes = [str(i) for i in range(DATASETS[dataset])]
        return _from_arrays(dataset, source, path, *arrays, classes)
    if source == "official":
        import torchvision

        cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[dataset]
        try:
            tr = cls(str(path.parent), train=True, download=download)
            te = cls(str(path.parent), train=False, download=download)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:  # "not found or corrupted"
            raise DataNotFoundError(f"{path}: {e} Fix: --download (needs internet) or point SAMBOOK_DATA at a "
                                    f"folder holding a good copy") from None
        return _from_arrays(dataset, source, path, tr.data, tr.targets, te.data, te.targets, tr.classes)
    return _decode_imagefolder(dataset, path)


def _decode_imagefolder(dataset: str, path: Path) -> CifarData:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    out = []
    classes = None
    for split in ("train", "test"):
        try:
            folder = ImageFolder(str(path / split))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataNotFoundError(f"{path / split}: not a usable ImageFolder ({e})") from None
        if len(folder.classes) != DATASETS[dataset]:
            raise DataNotFoundError(f"{path / split}: {len(folder.classes)} class folders, "
                                    f"{dataset} has {DATASETS[dataset]}")
        classes = folder.classes
        x = np.empty((len(folder.samples), 32, 32, 3), dtype=np.uint8)
        for i, (f, _) in enumerate(folder.samples):
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, SyntaxError) as e:     # PIL's errors for a truncated or foreign file
                raise DataNotFoundError(f"{f}: not a readable image ({e}); the data folder is corrupt: "
                                        f"replace it with a good copy") from None
            if a.shape != (32, 32, 3):
                raise DataNotFoundError(f"{f}: expected a 32x32 image, got {a.shape}")
            x[i] = a
        out += [x, np.array(folder.targets, dtype=np.int64)]
    return _from_arrays(dataset, "imagefolder", path, *out, classes)


# --------------------------------------------------------------------------------------------------
# On-device batches and augmentation


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x_uint8.float().div_(255)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop (reflect padding) and horizontal flip of a batch (B, C, H, W), on its device.

    Every image gets its own offsets in [0, 2*padding] and its own coin for the flip, drawn from
    ``generator`` (which must live on x's device).
    """
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
    off = torch.randint(0, 2 * padding + 1, (2, b), device=x.device, generator=generator)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    rows = off[0][:, None] + torch.arange(h, device=x.device)[None, :]              # (B, H)
    cols = off[1][:, None] + torch.arange(w, device=x.device)[None, :]              # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]           # (B, H, W, C)
    # contiguous NCHW: the CPU backward of a channels_last-strided odd-sized batch crashes (torch 2.14)
    return out.permute(0, 3, 1, 2).contiguous()


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False):
    """Yield (x, y) slices of tensors already on the device (shuffled with ``generator``)."""
    n = len(y)
    order = torch.randperm(n, device=x.device, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        if order is None:
            yield x[i:i + batch_size], y[i:i + batch_size]
        else:
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def make_generator(device, seed: int) -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g
