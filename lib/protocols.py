"""Evaluation as a stage of its own: named protocols run over a finished run's weights, cached in its folder.

A :class:`Protocol` is a frozen description: the threat models (norm, eps) it measures, the attacks
it runs at each, and the test images it runs on (the first ``n`` of the profile's test set, in a
fixed shuffled order, so a prefix is a random sample). An example is robust at a threat under a
protocol when it is classified correctly clean and no attack of the protocol breaks it.

:func:`evaluate_run` writes ``eval/<protocol>-n<N>.json`` into the run folder: the accuracies and,
compactly (bit-packed, base64), which test images each attack left correct. It is cached by (run
weights, protocol, n): a new protocol never retrains and a finished evaluation never reruns.
:func:`worst_case` takes, per example, the union over every protocol run on the model: the
strongest evidence there is, an upper bound on the true robust accuracy. :func:`common_worst` takes
the union over a fixed set of protocols on the images they all covered: the same attacks and images
for every model, for comparing models like with like.

Protocols (``PROTOCOLS``; each has its ``doc``):

- ``paper``: the paper's evaluation, exactly: PGD-10, random start, last iterate; L-inf step eps/4,
  L2 step eps/8; L-inf 1/255, 2/255, L2 16/255, 32/255.
- ``converged``: PGD-10 with step eps/4 under both norms (the paper's L2 step has not converged).
- ``strong``: cross-entropy PGD-50 with 2 restarts and margin (CW) PGD-50, steps eps/8, any
  misclassified iterate counts: for finding where PGD-10 is weak, on a subset.
- ``autoattack``: standard AutoAttack (Croce & Hein 2020; the optional extra) at the same budgets,
  on a subset by default; ``apgd-ce``: its first attack alone (the smoke profile's cheap check).
- ``linf8``: PGD-20, L-inf 8/255, step 2/255: the evaluation of AWP's paper (chapter 5).
- ``autoattack-linf8``: standard AutoAttack at L-inf 8/255, the check of ``linf8`` (on request).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .attacks import LOSSES, THREATS, step_budget, threat_label
from .errors import ConfigError, SambookError
from .evaluate import evaluate
from .io import read_json, write_json

log = logging.getLogger(__name__)

EVAL_DIR = "eval"


@dataclass(frozen=True)
class Attack:
    """One attack of a protocol, run at each of its threat models.

    ``kind`` ``pgd``: PGD with ``steps`` iterations of size eps/``linf_div`` (L-inf) or eps/``l2_div``
    (L2), ``restarts`` random starts, on ``loss`` (``ce`` or ``margin``); ``any_iterate``: an example
    is broken as soon as any iterate is misclassified (else the last iterate decides, as in the paper).
    ``kind`` ``autoattack``: AutoAttack's ``version`` (the optional extra).
    """

    kind: str = "pgd"
    steps: int = 10
    linf_div: float = 4.0
    l2_div: float = 4.0
    restarts: int = 1
    loss: str = "ce"
    any_iterate: bool = False
    version: str = "standard"

    def budget(self, norm: str, eps: float):
        return step_budget(norm, eps, self.linf_div if norm == "linf" else self.l2_div)

    def key(self, norm: str, eps: float, seed: int) -> str:
        """A name unique per (attack, threat, seed): the cache key of its per-example outcome."""
        if self.kind == "autoattack":
            return f"{norm}_{eps * 255:g}-autoattack-{self.version}-seed{seed}"
        b = self.budget(norm, eps)
        return (f"{b.name}-pgd{self.steps}-r{self.restarts}-{self.loss}" + ("-any" if self.any_iterate else "")
                + f"-seed{seed}")

    def describe(self) -> str:
        if self.kind == "autoattack":
            return f"AutoAttack ({self.version})"
        steps = f"step eps/{self.linf_div:g} (L-inf), eps/{self.l2_div:g} (L2)"
        if self.linf_div == self.l2_div:
            steps = f"step eps/{self.linf_div:g}"
        return (f"PGD-{self.steps} on {'cross-entropy' if self.loss == 'ce' else 'the margin loss'}, {steps}, "
                f"{self.restarts} random start{'s' if self.restarts > 1 else ''}, "
                + ("any misclassified iterate counts" if self.any_iterate else "last iterate"))


@dataclass(frozen=True)
class Protocol:
    """A named evaluation: threat models, attacks, default subset size, seed, and where it comes from."""

    name: str
    title: str
    doc: str
    attacks: tuple
    threats: tuple = THREATS
    n: int | None = None          # default: the first n test images (None: all)
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["threats"] = [list(t) for t in self.threats]
        return d

    def digest(self) -> str:
        """Hash of everything that determines the protocol's numbers (not its prose)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("title", "doc", "n")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def threat_names(self) -> list[str]:
        return [f"{n}_{e * 255:g}" for n, e in self.threats]


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("paper", "the paper's protocol",
             "PGD-10 with a random start, the last iterate, L-inf step eps/4 and L2 step eps/8, at L-inf "
             "1/255, 2/255 and L2 16/255, 32/255, on the whole test set: the evaluation of Wei, Zhu and "
             "Zhang (2023), Section 5, as their released code runs it (without its bugs).",
             attacks=(Attack("pgd", 10, linf_div=4, l2_div=8),)),
    Protocol("converged", "PGD-10, step eps/4",
             "The paper's PGD-10 with step eps/4 under both norms: with the paper's L2 step eps/8, ten "
             "steps travel only 1.25 eps and the attack has not converged (doubling the steps lowers "
             "accuracy; chapter 2 draws it). With eps/4, ten steps travel 2.5 eps and accuracy no longer falls.",
             attacks=(Attack("pgd", 10, linf_div=4, l2_div=4),)),
    Protocol("strong", "PGD-50, 2 losses, 3 starts",
             "A stronger white-box evaluation in the spirit of Carlini et al. (2019), 'On Evaluating "
             "Adversarial Robustness': cross-entropy PGD-50 with 2 random starts and margin-loss (Carlini-"
             "Wagner) PGD-50, step eps/8, where any misclassified iterate breaks an example. Sized for a "
             "CPU: a subset of the test set by default.",
             attacks=(Attack("pgd", 50, linf_div=8, l2_div=8, restarts=2, loss="ce", any_iterate=True),
                      Attack("pgd", 50, linf_div=8, l2_div=8, restarts=1, loss="margin", any_iterate=True)),
             n=1000),
    Protocol("autoattack", "AutoAttack (standard)",
             "The field's reference evaluation: standard AutoAttack (Croce & Hein, ICML 2020: APGD-CE, "
             "APGD-T, FAB-T, Square) through the optional pyautoattack extra, at the table's four budgets. "
             "About 100 times the cost of PGD-10: a subset by default, the whole test set with n=None.",
             attacks=(Attack("autoattack", version="standard"),), n=1000),
    Protocol("apgd-ce", "APGD-CE (AutoAttack's first attack)",
             "AutoAttack's first attack alone (APGD on cross-entropy, 100 iterations, 1 restart; Croce & Hein "
             "2020) through the optional extra: an independent implementation at a fraction of the standard "
             "ensemble's cost, for the smoke profile (where the ensemble's fixed per-iteration costs dominate).",
             attacks=(Attack("autoattack", version="apgd-ce"),), n=1000),
    Protocol("linf8", "PGD-20, L-inf 8/255",
             "PGD-20 at L-inf 8/255 with step 2/255 and a random start, the last iterate: the evaluation "
             "Wu, Xia and Wang (2020) report for AWP, used in chapter 5 for the methods trained at 8/255.",
             attacks=(Attack("pgd", 20, linf_div=4, l2_div=4),), threats=(("linf", 8 / 255),)),
    Protocol("autoattack-linf8", "AutoAttack (standard), L-inf 8/255",
             "Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at L-inf 8/255, the budget chapter 5's "
             "adversarial methods train at and the one RobustBench ranks them by: the reference check of the "
             "linf8 protocol's PGD-20 on the same images. On request (not in a profile's list): a subset.",
             attacks=(Attack("autoattack", version="standard"),), threats=(("linf", 8 / 255),), n=200),
)}


def protocol(name: str) -> Protocol:
    """The protocol called ``name``, or a one-line error naming the valid ones."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}") from None


# --------------------------------------------------------------------------------------------------
# Per-example outcomes, compactly


def pack(mask) -> str:
    """A boolean vector as base64 of its packed bits (1,000 examples -> 168 characters)."""
    a = np.asarray(mask, dtype=bool)
    return base64.b64encode(np.packbits(a).tobytes()).decode()


def unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def labels_digest(y) -> str:
    """Identifies the test images an outcome refers to (their labels in order)."""
    return hashlib.sha1(np.asarray(y.cpu() if hasattr(y, "cpu") else y, dtype=np.int64).tobytes()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Running a protocol on a model


def attack_outcome(model, x, y, attack: Attack, norm: str, eps: float, seed: int) -> np.ndarray:
    """Per example: True where the example is correct clean and survives ``attack`` at (norm, eps)."""
    if attack.kind == "autoattack":
        from .autoattack import autoattack_accuracy
        version, attacks = (attack.version, None) if attack.version in ("standard", "plus", "rand") \
            else ("custom", attack.version.split("+"))
        _, ok = autoattack_accuracy(model, x, y, norm=norm, eps=eps, n=None, version=version, attacks=attacks,
                                    seed=seed, per_example=True)
        return ok.cpu().numpy()
    if attack.kind != "pgd" or attack.loss not in LOSSES:
        raise ConfigError(f"unknown attack {attack.kind}/{attack.loss}")
    b = attack.budget(norm, eps)
    # the seed of each attack depends on its key, so an outcome does not depend on what ran before it
    s = int(hashlib.sha1(attack.key(norm, eps, seed).encode()).hexdigest()[:8], 16)
    r = evaluate(model, x, y, budgets=(b,), steps=attack.steps, seed=s, restarts=attack.restarts,
                 loss=attack.loss, any_iterate=attack.any_iterate, per_example=True)
    return r[f"{b.name}_correct"].numpy()


def run_protocol(model, x, y, proto: Protocol, known: dict | None = None, progress=None) -> dict:
    """Run ``proto`` on (x, y); returns the evaluation record (see :func:`evaluate_run`).

    ``known``: outcomes already computed for some attack keys (reused, not recomputed).
    """
    known = known or {}
    t0 = time.perf_counter()
    with torch.no_grad():
        clean = np.concatenate([(model(xb).argmax(1) == yb).cpu().numpy() for xb, yb in _batches(model, x, y)])
    attacks, threats = {}, {}
    for norm, eps in proto.threats:
        robust = clean.copy()
        keys = []
        for a in proto.attacks:
            key = a.key(norm, eps, proto.seed)
            keys.append(key)
            if key in known:
                ok = known[key]["ok"]
                attacks[key] = {"robust": known[key]["robust"], "acc": known[key]["acc"], "seconds": 0.0,
                                "reused": True, "attack": a.describe()}
            else:
                t = time.perf_counter()
                ok = attack_outcome(model, x, y, a, norm, eps, proto.seed) & clean
                attacks[key] = {"robust": pack(ok), "acc": 100.0 * ok.mean(), "seconds": time.perf_counter() - t,
                                "attack": a.describe()}
            robust &= ok
            if progress:
                progress(key)
        name = f"{norm}_{eps * 255:g}"
        threats[name] = {"acc": 100.0 * robust.mean(), "robust": pack(robust), "attacks": keys,
                         "label": threat_label(name)}
    return {"natural": 100.0 * clean.mean(), "clean": pack(clean), "threats": threats, "attacks": attacks,
            "seconds": time.perf_counter() - t0}


def _batches(model, x, y, batch_size=500):
    from .evaluate import clean_batches
    from .runtime import fp32_evaluation, model_mode
    with fp32_evaluation(), model_mode(model, training=False):
        for xb, yb, _ in clean_batches(model, x, y, batch_size):
            yield xb, yb


# --------------------------------------------------------------------------------------------------
# The stage over a finished run


def eval_path(run_path: Path, name: str, n: int | None) -> Path:
    return Path(run_path) / EVAL_DIR / f"{name}-n{'all' if n is None else n}.json"


def _load_valid(path: Path, proto: Protocol | None, weights: str | None, config=None):
    """The record at ``path`` if it passes :func:`check_record` (else None: it is computed again)."""
    try:
        rec = check_record(path, read_json(path), weights, config)
    except (OSError, ValueError, SambookError):
        return None
    if proto is not None and rec.get("protocol_digest") != proto.digest():
        return None
    return rec


class ResultError(SambookError):
    """A committed or cached result that cannot be used as it is: unreadable, or inconsistent with its run."""


def _restore_hint(path: Path) -> str:
    return (f"restore it from git (git checkout -- {path}) or evaluate again "
            f"(python -m lib evaluate --run {path.parent.parent} --protocol <name> --force, which needs the weights)")


def check_record(path: Path, rec, weights: str | None, config=None) -> dict:
    """``rec`` (read from ``path``) if it is a whole evaluation record of this run's weights (and, given the
    run's ``config``, of its test images in their present order); else a :class:`ResultError` naming the file,
    what is wrong and what to do. Never a silent skip: a dropped record would drop a seed from every mean and
    paired difference without a word."""
    from .data import class_sorted_test
    path = Path(path)
    if not isinstance(rec, dict) or not {"protocol", "n", "natural", "threats", "clean"} <= set(rec):
        raise ResultError(f"{path}: not an evaluation record (keys missing); {_restore_hint(path)}")
    if config is not None and class_sorted_test(config, rec.get("test_order")):
        raise ResultError(f"{path}: measured on the test split in its stored class order (made before that split "
                          f"was put in the official order), so its per-example outcomes refer to other images and "
                          f"its first {rec['n']:,} are one or two classes; evaluate again (python -m lib evaluate "
                          f"--run {path.parent.parent} --protocol {rec['protocol']} --force, which needs the weights)")
    if weights and rec.get("weights_sha") != weights:
        raise ResultError(f"{path}: made from other weights ({rec.get('weights_sha')}) than its run's metrics.json "
                          f"names ({weights}); {_restore_hint(path)}")
    name = rec["protocol"]
    if name not in PROTOCOLS or rec.get("protocol_digest") != PROTOCOLS[name].digest():
        raise ResultError(f"{path}: protocol {name!r} is unknown or was defined differently when this record was "
                          f"made (digest {rec.get('protocol_digest')}); {_restore_hint(path)}")
    stem = f"{name}-n{'all' if rec['n'] == rec.get('test_images') else rec['n']}"
    if path.stem != stem and not (rec["n"] == rec.get("test_images") and path.stem == f"{name}-n{rec['n']}"):
        raise ResultError(f"{path}: holds {rec['n']} of {rec.get('test_images')} test images, which its name does "
                          f"not say; {_restore_hint(path)}")
    try:
        masks = [unpack(rec["clean"], rec["n"])] + [unpack(v["robust"], rec["n"]) for v in rec["threats"].values()]
    except (ValueError, TypeError, KeyError) as e:
        raise ResultError(f"{path}: per-example outcomes unreadable ({e}); {_restore_hint(path)}") from None
    if any(len(m) != rec["n"] for m in masks):
        raise ResultError(f"{path}: per-example outcomes cover fewer than its {rec['n']} images; {_restore_hint(path)}")
    if abs(100.0 * masks[0].mean() - rec["natural"]) > 1e-6:
        raise ResultError(f"{path}: its clean accuracy does not match its per-example outcomes; {_restore_hint(path)}")
    return rec


def evaluations(run, strict: bool = True) -> list[dict]:
    """Every evaluation record in a run's folder, each checked (:func:`check_record`): an unreadable,
    truncated or inconsistent record is an error naming the file, never a record quietly left out.
    ``strict=False`` (for :func:`evaluate_run`, which recomputes what is damaged): such a record is skipped."""
    folder = Path(run.path) / EVAL_DIR
    weights = run.metrics.get("weights_sha")
    if not strict:
        return [r for r in (_load_valid(f, None, weights, run.config) for f in sorted(folder.glob("*.json")))
                if r is not None] if folder.is_dir() else []
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = read_json(f)
        except (OSError, ValueError) as e:
            raise ResultError(f"{f}: unreadable ({type(e).__name__}: {str(e)[:80]}); {_restore_hint(f)}") from None
        out.append(check_record(f, rec, weights, run.config))
    return out


def evaluate_run(run, name: str = "paper", n: int | None = "default", data_root=None, device=None,
                 force: bool = False, cached_only: bool = False) -> dict:
    """Evaluate a finished run under protocol ``name`` on its first ``n`` test images; cached in the run folder.

    ``n``: ``"default"`` (the profile's subset for this protocol, else the protocol's), an int, or
    None for the whole test set. Returns the record: ``natural``, ``threats`` ({threat: {acc, robust
    (packed mask), attacks}}), ``attacks`` ({key: {acc, robust, seconds}}), ``n``, provenance.
    A cached record is used when the weights and the protocol are unchanged; the weights (model.pt)
    are needed only when something must be computed. ``cached_only``: never compute (a SambookError
    when no cached record exists), for readers of committed results that must not add to them.
    """
    from . import runs
    from .config import profile as get_profile
    proto = protocol(name)
    if n == "default":
        n = {p[0]: p[1] for p in get_profile(run.config.profile).protocols_for(run.config)}.get(name, proto.n)
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(f"n must be a positive number of test images or all, got {n!r}")
    weights = run.metrics.get("weights_sha")
    path = eval_path(run.path, name, n)
    if not force and path.exists():
        rec = _load_valid(path, proto, weights, run.config)
        if rec is not None:
            return rec
        if cached_only:         # say what is wrong with the file, not only that no result is here
            try:
                check_record(path, read_json(path), weights, run.config)
            except (OSError, ValueError) as e:
                raise ResultError(f"{path}: unreadable ({type(e).__name__}); {_restore_hint(path)}") from None
    if cached_only:
        raise SambookError(f"{run.path.name}: not evaluated under protocol {name!r} with "
                           f"n={n if n is not None else 'all'} (cached results only here)")
    if not (Path(run.path) / runs.MODEL).exists():
        raise SambookError(f"{run.path.name}: no weights (model.pt) to evaluate under protocol {name!r} "
                           f"with n={n if n is not None else 'all'}; only cached evaluations can be read")
    from .runtime import device as pick_device, describe
    dev = pick_device(device)
    model = runs.load_model(run, dev)
    data = runs.load_data(run.config, data_root, device=dev)
    x, y = (data.x_test, data.y_test) if n is None else (data.x_test[:n], data.y_test[:n])
    known = {}      # attacks other protocols already ran on these images; --force recomputes everything
    # (only records that pass the checks: a damaged one is recomputed here, and readers name it)
    for rec in ([] if force else evaluations(run, strict=False)):
        if rec["n"] == len(y) and rec.get("labels_digest") == labels_digest(y):
            for key, a in rec["attacks"].items():
                known[key] = {"ok": unpack(a["robust"], len(y)), "robust": a["robust"], "acc": a["acc"]}
    if any(a.kind == "autoattack" for a in proto.attacks):
        from .autoattack import package
        extra = {"package": package()}
    else:
        extra = {}
    with _threads_for(run.config, dev):
        rec = run_protocol(model, x, y, proto, known)
        env = describe(dev)
    rec.update(protocol=name, protocol_digest=proto.digest(), description=proto.to_dict(), n=len(y),
               test_images=len(data.y_test), labels_digest=labels_digest(y), test_order=data.test_order_note,
               weights_sha=weights,
               run=run.path.name, commit=runs.git_commit(),
               date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **env, **extra)
    rec = json.loads(json.dumps(rec, default=str))     # exactly what a later read of the file gives
    try:
        write_json(path, rec)
    except OSError as e:
        raise SambookError(f"cannot write {path}: {e.strerror or e}") from None
    log.info("%s: %s on %d images in %.1f s", run.path.name, name, len(y), rec["seconds"])
    return rec


def _threads_for(config, dev):
    from .config import profile as get_profile
    from .runtime import threads
    return threads(None if dev.type == "cuda" else get_profile(config.profile).cpu_threads)


def common_worst(run, names, threats=None, n: int | None = None, recs=None) -> dict:
    """Per threat: the accuracy when an example counts as broken if any of the protocols ``names`` broke it,
    on the first ``n`` test images (at most the smallest subset among them, which is the default):
    {threat: {"acc", "n"}}.

    Unlike :func:`worst_case`, which counts every protocol run on the model (AutoAttack on one model, not
    on another), this measures every model that has ``names`` with the same attacks on the same images:
    the like-for-like number for comparing models. A threat some protocol of ``names`` did not measure
    on the model is left out. ``recs``: the run's :func:`evaluations`, when the caller has read them.
    ``ok``: the per-example outcome (True: no protocol broke the image), for intervals over test images.
    """
    chosen = {}
    for r in evaluations(run) if recs is None else recs:      # a protocol run on several subsets: its largest
        if r["protocol"] in names and r["n"] > chosen.get(r["protocol"], {"n": -1})["n"]:
            chosen[r["protocol"]] = r
    if set(names) - set(chosen):
        return {}
    m = min([r["n"] for r in chosen.values()] + ([n] if n else []))
    out = {}
    for t in threats or sorted({t for r in chosen.values() for t in r["threats"]}):
        if not all(t in r["threats"] for r in chosen.values()):
            continue
        ok = np.ones(m, dtype=bool)
        for r in chosen.values():
            ok &= unpack(r["threats"][t]["robust"], r["n"])[:m]
        out[t] = {"acc": 100.0 * ok.mean(), "n": m, "ok": ok}
    return out


def worst_case(run, threats=None, recs=None) -> dict:
    """Per threat: the robust accuracy when every protocol run on the model counts (per-example union).

    Returns {threat: {"acc": % of all test images no protocol broke (examples outside a protocol's
    subset are judged by the protocols that did run on them), "n_common": images every protocol
    covered (the first n_common), "protocols": names, "on_common": {protocol: accuracy there},
    "worst_on_common": the union's accuracy there, "paper_on_common", and "gap" = paper_on_common -
    worst_on_common (how much the paper's attack misses on this model)}}.
    """
    recs = evaluations(run) if recs is None else recs      # the caller's, when it has read them
    out = {}
    names = threats or sorted({t for r in recs for t in r["threats"]})
    for t in names:
        covering = [r for r in recs if t in r["threats"]]
        if not covering:
            continue
        total = max(r["test_images"] for r in covering)
        broken = np.zeros(total, dtype=bool)
        seen = np.zeros(total, dtype=bool)
        for r in covering:
            ok = unpack(r["threats"][t]["robust"], r["n"])
            broken[:r["n"]] |= ~ok
            seen[:r["n"]] = True
        n_common = min(r["n"] for r in covering)
        entry = {"protocols": sorted({r["protocol"] for r in covering}), "n_common": n_common,
                 "n": int(seen.sum()), "acc": 100.0 * (~broken[seen]).mean(),
                 "worst_on_common": 100.0 * (~broken[:n_common]).mean(),
                 "on_common": {r["protocol"]: 100.0 * unpack(r["threats"][t]["robust"], r["n"])[:n_common].mean()
                               for r in covering}}
        if "paper" in entry["on_common"]:
            entry["paper_on_common"] = entry["on_common"]["paper"]
            entry["gap"] = entry["paper_on_common"] - entry["worst_on_common"]
        out[t] = entry
    return out
