"""Data: the three sources, subsets, on-device augmentation and the missing-data error."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lib import data as D
from lib.errors import ConfigError, DataNotFoundError


def test_npz_source_is_the_real_exact_subset(exact):
    assert exact.source == "npz" and exact.exact
    assert exact.x_train.shape == (5085, 3, 32, 32) and exact.x_train.dtype == torch.uint8
    assert exact.x_test.shape == (1017, 3, 32, 32)
    assert set(exact.y_train.tolist()) == set(range(10))
    assert "cifar10-exact-subset.npz" in exact.describe()


def _png_folder(root, n_per_class=2, classes=10):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_imagefolder_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMBOOK_CACHE", str(tmp_path / "cache"))
    _png_folder(tmp_path / "cifar10-jpeg75")
    d = D.load_dataset("cifar10", tmp_path, sources=("imagefolder",))
    assert d.source == "imagefolder" and d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.y_train.tolist() == sorted(d.y_train.tolist()) and d.classes[0] == "class00"
    assert not d.exact and "JPEG" in d.describe()             # the folder name says it is the lossy copy
    again = D.load_dataset("cifar10", tmp_path, sources=("imagefolder",))   # from the decoded cache
    assert any((tmp_path / "cache" / "data").iterdir())
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)


def test_real_jpeg_folder_is_found_with_official_class_order():
    src, path = D.find_source("cifar10", None, ("imagefolder",))
    assert src == "imagefolder" and path.name == "cifar10-jpeg75"
    from torchvision.datasets.folder import find_classes
    classes, _ = find_classes(str(path / "train"))
    assert classes[:3] == ["airplane", "automobile", "bird"] and classes[-1] == "truck"


def _official_files(root, dataset):
    rng = np.random.default_rng(1)
    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            blob = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 3, 9, 1]}
            (folder / name).write_bytes(pickle.dumps(blob))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for name, n in (("train", 6), ("test", 3)):
            blob = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                    "coarse_labels": [0] * n}
            (folder / name).write_bytes(pickle.dumps(blob))
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    return folder


@pytest.mark.parametrize("dataset,n_train,n_test", [("cifar10", 20, 4), ("cifar100", 6, 3)])
def test_official_layout_through_torchvision(tmp_path, monkeypatch, dataset, n_train, n_test):
    import torchvision
    # Hand-written files cannot match torchvision's md5 sums: skip only that check, keep its reader.
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[dataset]
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setenv("SAMBOOK_CACHE", str(tmp_path / "cache"))
    _official_files(tmp_path, dataset)
    d = D.load_dataset(dataset, tmp_path, sources=("official",))
    assert d.num_classes == (10 if dataset == "cifar10" else 100)
    assert d.x_train.shape == (n_train, 3, 32, 32) and d.x_test.shape == (n_test, 3, 32, 32)
    raw = pickle.loads((tmp_path / ("cifar-10-batches-py/data_batch_1" if dataset == "cifar10"
                                    else "cifar-100-python/train")).read_bytes())["data"][0]
    assert torch.equal(d.x_train[0].flatten(), torch.from_numpy(raw))   # CHW order preserved, no rescaling


def test_missing_data_error_names_paths_and_fixes(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        D.load_dataset("cifar10", tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere/cifar-10-batches-py" in msg and "nowhere/cifar10-jpeg75" in msg
    assert "--download" in msg and "SAMBOOK_DATA" in msg


def test_corrupt_npz_is_a_clear_error(tmp_path):
    bad = tmp_path / "cifar10-exact-subset.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(DataNotFoundError, match="not a usable .npz"):
        D.load_dataset("cifar10", tmp_path, sources=("npz",))


def test_unknown_dataset_and_source_are_refused():
    with pytest.raises(ConfigError, match="valid datasets: cifar10, cifar100"):
        D.find_source("mnist")
    with pytest.raises(ConfigError, match="valid sources"):
        D.find_source("cifar10", None, ("ftp",))


def test_subset_keeps_the_first_n_per_class(exact):
    sub = exact.subset(train_per_class=7, test_per_class=3, seed=5)
    assert sub.x_train.shape[0] == 70 and sub.x_test.shape[0] == 30
    assert torch.bincount(sub.y_train).tolist() == [7] * 10
    first = D.first_per_class(exact.y_train, 7)
    assert sorted(map(bytes, sub.x_train.numpy())) == sorted(map(bytes, exact.x_train[first].numpy()))
    again = exact.subset(train_per_class=7, test_per_class=3, seed=5)
    assert torch.equal(again.x_train, sub.x_train)          # deterministic
    with pytest.raises(ConfigError):
        exact.subset(train_per_class=0)


def test_augment_is_a_crop_of_the_reflect_padded_image_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = D.augment(x, g)
    assert out.shape == x.shape and out.is_contiguous()
    padded = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    flips = 0
    for i in range(len(x)):
        found = False
        for flip in (False, True):
            src = padded[i].flip(2) if flip else padded[i]
            for r in range(9):
                for c in range(9):
                    if torch.equal(src[:, r:r + 32, c:c + 32], out[i]):
                        found, flips = True, flips + flip
                        break
                if found:
                    break
            if found:
                break
        assert found, f"image {i} is not a crop of its padded original"
    assert 10 < flips < 54                               # both orientations occur


def test_augment_is_reproducible_with_a_seeded_generator():
    x = torch.rand(16, 3, 32, 32)
    a = D.augment(x, torch.Generator().manual_seed(1))
    b = D.augment(x, torch.Generator().manual_seed(1))
    c = D.augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batches_cover_every_example_once():
    x = torch.arange(10).view(10, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in D.batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b) for _, b in D.batches(x, y, 3, drop_last=True)] == [3, 3, 3]


def test_random_crops_differ_between_the_samples_of_one_batch():
    """One image repeated 64 times in a batch: each copy gets its own offsets and flip (162 possible
    outcomes), so a batch-wide offset, a common bug of batched augmentation, would leave one or two."""
    x = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()
    out = D.augment(x, torch.Generator().manual_seed(0))
    assert len({o.numpy().tobytes() for o in out}) > 30


def test_a_subset_of_the_jpeg_copy_keeps_the_same_test_images_for_every_run(exact):
    """The test subset does not depend on the run's seed: every run of a profile is evaluated on the
    same images, in the same order (the per-example outcomes of the evaluation stage refer to them)."""
    a = exact.subset(test_per_class=5, seed=0)
    b = exact.subset(test_per_class=5, seed=0)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    from lib.data import load_subset
    s1 = load_subset("cifar10", "npz", None, 10, 5)
    s2 = load_subset("cifar10", "npz", None, 20, 5)
    assert torch.equal(s1.y_test, s2.y_test)         # the training subset does not move the test images


# --------------------------------------------------------------------------------------------------
# The order of a whole test split: "the first n test images" must not be one class


def _write_order(root, rows):
    with open(root / "order.csv", "w") as f:
        f.write("split,index,label,path\n")
        for split, index, label, path in rows:
            f.write(f"{split},{index},{label},{path}\n")


def test_whole_imagefolder_test_split_follows_its_order_file(tmp_path, monkeypatch):
    """An ImageFolder stores its images sorted by class folder; used whole, the test split follows order.csv
    (official index -> file), so its first images span the classes; a per-class subset is as before."""
    monkeypatch.setenv("SAMBOOK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cifar10-jpeg75"
    _png_folder(root, n_per_class=3)
    # official order: class 9's first image, then class 0's, then round-robin down the classes
    official = [(c, i) for i in range(3) for c in range(9, -1, -1)]
    _write_order(root, [("test", k, c, f"test/class{c:02d}/{i}.png") for k, (c, i) in enumerate(official)])
    d = D.load_dataset("cifar10", tmp_path, sources=("imagefolder",))
    assert d.y_test.tolist() == sorted(d.y_test.tolist())              # stored: sorted by class
    whole = d.subset(None, None)
    assert whole.y_test.tolist() == [c for c, _ in official]
    assert set(whole.y_test[:10].tolist()) == set(range(10)) and "official order" in whole.test_order_note
    from PIL import Image
    k = 13                                                              # official index 13: class 6, file 1
    c, i = official[k]
    img = np.asarray(Image.open(root / "test" / f"class{c:02d}" / f"{i}.png").convert("RGB"))
    assert torch.equal(whole.x_test[k], torch.from_numpy(img.copy()).permute(2, 0, 1))
    assert torch.equal(whole.x_train, d.x_train)                        # training split: stored order, untouched
    per_class = d.subset(None, 2, seed=0)                               # a per-class subset ignores the order file
    keep = D.first_per_class(d.y_test, 2)
    keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(per_class.y_test, d.y_test[keep]) and torch.equal(per_class.x_test, d.x_test[keep])


def test_whole_imagefolder_test_split_without_order_file_is_shuffled_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMBOOK_CACHE", str(tmp_path / "cache"))
    _png_folder(tmp_path / "cifar10-jpeg75", n_per_class=5)
    d = D.load_dataset("cifar10", tmp_path, sources=("imagefolder",))
    a, b = d.subset(None, None), D.load_dataset("cifar10", tmp_path, sources=("imagefolder",)).subset(None, None)
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_test, b.x_test)     # a fixed order
    assert len(set(a.y_test[:10].tolist())) >= 5 and "fixed random order" in a.test_order_note
    assert sorted(map(bytes, a.x_test.numpy())) == sorted(map(bytes, d.x_test.numpy()))   # the same images


def test_an_order_file_that_does_not_fit_its_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMBOOK_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cifar10-jpeg75"
    _png_folder(root, n_per_class=2)
    # labels swapped between two files: the order file describes another folder
    rows = [("test", 2 * c + i, c, f"test/class{c:02d}/{i}.png") for c in range(10) for i in range(2)]
    rows[0] = ("test", 0, 1, "test/class00/0.png")
    _write_order(root, rows)
    with pytest.raises(DataNotFoundError, match="order.csv: does not describe"):
        D.load_dataset("cifar10", tmp_path, sources=("imagefolder",))


def test_real_jpeg_test_split_in_official_order_matches_the_exact_pixels(exact):
    """The real JPEG copy's order.csv puts its test images in the official order: its first images are the
    exact subset's (official indices 0..), up to JPEG error, and span every class."""
    from PIL import Image
    from torchvision.datasets import ImageFolder
    _, path = D.find_source("cifar10", None, ("imagefolder",))
    folder = ImageFolder(str(path / "test"))                 # lists the files; decodes none
    order, note = D.test_order_for(path, torch.tensor(folder.targets), folder.classes)
    assert "official order" in note
    first = [folder.samples[int(i)] for i in order[:100]]
    assert [y for _, y in first] == exact.y_test[:100].tolist()
    assert set(exact.y_test[:100].tolist()) == set(range(10))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in first]).astype(float)
    ref = exact.x_test[:100].permute(0, 2, 3, 1).numpy().astype(float)
    assert np.abs(x - ref).mean() < 10                        # JPEG error: about 5.8/255
    assert np.abs(x[1:] - ref[:-1]).mean() > 40               # a neighbour's pixels: about 70/255


def test_a_committed_record_on_fewer_test_images_is_the_prefix_of_the_ordering():
    """The paired change across training lengths (lib.tables.gap_change_paired) compares a run evaluated on the
    first 2,000 test images with one evaluated on all 10,000: each committed cpu-long paper record's labels
    digest must be that of the first n labels of the ImageFolder test split in its official order."""
    import json

    from torchvision.datasets import ImageFolder

    from lib import paths
    from lib.protocols import labels_digest
    src, path = D.find_source("cifar10", None, ("imagefolder",))
    folder = ImageFolder(str(path / "test"))            # lists the files, decodes nothing
    y = torch.tensor(folder.targets)
    order, note = D.test_order_for(path, y, folder.classes)
    y = y[order]
    recs = sorted(paths.committed_runs_root().glob("*-cpu-long-*/eval/paper-*.json"))
    ns = set()
    for f in recs:
        rec = json.loads(f.read_text())
        assert rec["test_order"] == note, f
        assert rec["labels_digest"] == labels_digest(y[:rec["n"]]), f"{f}: not the first {rec['n']} test images"
        ns.add(rec["n"])
    assert len(ns) >= 2, f"the check needs records on different numbers of images, found {sorted(ns)}"
