"""Command line over the library: ``python -m lib --help``.

Every user mistake ends with a one-line ``error: ...`` on stderr and exit status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from fractions import Fraction

from .config import METHODS, PROFILES, make_config, paper_grid
from .data import DATASETS, SOURCES
from .errors import SambookError


def fraction(text: str) -> float:
    """Parse '8/255', '0.03' or '1e-2' as a float."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r} (try 8/255)") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASETS)} (default cifar10)")
    p.add_argument("--profile", default="smoke", help=f"one of {', '.join(PROFILES)} (default smoke)")
    p.add_argument("--data-root", default=None, help="data folder (default $SAMBOOK_DATA, else <repo>/data)")
    p.add_argument("--source", default="auto", help=f"data source: auto or one of {', '.join(SOURCES)}")
    p.add_argument("--download", action="store_true", help="download the official files if missing (internet)")
    p.add_argument("--runs-root", default=None, help="run cache folder (default $SAMBOOK_RUNS, else outputs/runs)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lib", description=(
        "Train and evaluate ST, SAM and adversarial training on CIFAR (PreActResNet-18); "
        "runs are cached under outputs/runs/."))
    ap.add_argument("--list-methods", action="store_true", help="list the training methods and exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train and evaluate one configuration (reuses a finished run)")
    t.add_argument("--method", default="st", help="training method (see --list-methods)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None, help="override the profile's number of epochs")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--rho", type=float, default=None, help="SAM radius (sam, asam, sam_at)")
    t.add_argument("--norm", default=None, help="training attack norm: linf or l2")
    t.add_argument("--eps", type=fraction, default=None, help="training attack budget, e.g. 8/255")
    t.add_argument("--alpha", type=fraction, default=None, help="training attack step, e.g. 2/255")
    t.add_argument("--steps", type=int, default=None, help="training attack PGD steps")
    t.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="method hyperparameter, e.g. --hp beta=6 (repeatable)")
    t.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    t.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_common(t)

    g = sub.add_parser("grid", help="run the paper's grid (ST, SAM sweep, AT L-inf and L2) for a profile")
    g.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    g.add_argument("--only", default=None, help="comma-separated methods to keep (e.g. st,sam)")
    _add_common(g)

    sw = sub.add_parser("sweep", help="run the paper's grid through an executor (local or ray), without the chapters")
    sw.add_argument("--executor", default=None, help="local | ray (default $EXECUTOR, else local)")
    sw.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    sw.add_argument("--only", default=None, help="comma-separated methods to keep (e.g. st,sam)")
    sw.add_argument("--max-retries", type=int, default=2, help="further attempts of a failed run (default 2)")
    sw.add_argument("--cpus-per-run", type=int, default=1, help="CPUs per Ray task on a cluster without GPUs")
    sw.add_argument("--gpus-per-run", type=float, default=1.0, help="GPUs per Ray task (0.5: two runs per GPU)")
    _add_common(sw)

    sub.add_parser("list-methods", help="list the training methods")

    b = sub.add_parser("bench", help="speed benchmark: the engine vs a reference-style loop (writes outputs/bench/)")
    b.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    b.add_argument("--width", type=int, default=None, help="network width (default 64 on CUDA, 8 on a CPU)")
    b.add_argument("--batch-size", type=int, default=None, help="batch size of both sides (default 128)")
    b.add_argument("--steps", type=int, default=None, help="batches per repeat (default 20 on CUDA, 2 on a CPU)")
    b.add_argument("--repeats", type=int, default=None, help="timed repeats; medians are reported")
    b.add_argument("--warmup", type=int, default=None, help="untimed repeats first")
    b.add_argument("--eval-images", type=int, default=None, help="test images per evaluation repeat")
    b.add_argument("--loader-workers", type=int, default=None, help="reference DataLoader workers (default 0)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on a CPU: shared cores)")
    b.add_argument("--compile", action="store_true", help="also time torch.compile of the model (CUDA only)")
    b.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    b.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10 (same speed)")
    b.add_argument("--quick", action="store_true", help="a tiny configuration (seconds; for tests)")
    b.add_argument("--out", default=None, help="output folder (default outputs/bench)")
    b.add_argument("--data-root", default=None, help="data folder (default $SAMBOOK_DATA, else <repo>/data)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    c = sub.add_parser("check-data", help="say which data a profile would use, or fail with the data error")
    c.add_argument("--profile", default="auto", help="smoke | fast | paper | auto")
    c.add_argument("--dataset", default="cifar10")
    c.add_argument("--data-root", default=None)
    c.add_argument("--download", action="store_true")
    return ap


def list_methods() -> str:
    lines = [f"{m:8s} {s.description} (passes per step: {s.passes})" for m, s in METHODS.items()]
    return "\n".join(lines)


def _hparams(items) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise SambookError(f"--hp expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = float(Fraction(v)) if "/" in v else float(v)
        except (ValueError, ZeroDivisionError):
            raise SambookError(f"--hp {k}: not a number: {v!r}") from None
    return out


def _train(args) -> int:
    from . import runs
    over = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, rho=args.rho,
                                  norm=args.norm, eps=args.eps, alpha=args.alpha, steps=args.steps).items()
            if v is not None}
    if args.source != "auto":
        over["data_source"] = args.source
    cfg = make_config(args.method, args.profile, args.dataset, args.seed, extra=_hparams(args.hp), **over)
    res = runs.run(cfg, data_root=args.data_root, runs_root=args.runs_root, device=args.device,
                   download=args.download, progress=not args.no_progress, retrain=args.retrain)
    m = res.metrics
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
    else:
        cols = ["natural"] + [b.name for b in cfg.eval_budgets]
        print(f"{m['label']} [{m['profile']} profile] -> {res.path}")
        print(f"  data: {m['data']}")
        print("  " + "  ".join(f"{c} {m[c]:.2f}%" for c in cols))
        print(f"  train {m['train_seconds']:.1f} s, {m['images_per_second']:.0f} images/s on {m['device']}")
    return 0


def _parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise SambookError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise SambookError(f"--seeds must be non-negative integers, got {text!r}")
    return seeds


def _grid(args) -> int:
    from . import runs
    seeds = _parse_seeds(args.seeds)
    cfgs = paper_grid(args.profile, args.dataset, seeds=seeds)
    if args.only:
        keep = set(args.only.split(","))
        bad = keep - set(METHODS)
        if bad:
            raise SambookError(f"unknown method(s) {', '.join(sorted(bad))}; valid methods: {', '.join(METHODS)}")
        cfgs = [c for c in cfgs if c.method in keep]
    if args.source != "auto":
        from dataclasses import replace
        cfgs = [replace(c, data_source=args.source) for c in cfgs]
    for c in cfgs:
        r = runs.run(c, data_root=args.data_root, runs_root=args.runs_root, device=args.device,
                     download=args.download, progress=not args.no_progress)
        m = r.metrics
        print(f"{m['label']:24s} natural {m['natural']:6.2f}  " +
              "  ".join(f"{b.name} {m[b.name]:6.2f}" for b in c.eval_budgets))
    return 0


def _profile(name: str) -> str:
    """A profile name, ``auto`` resolved (fast with a GPU, else smoke)."""
    if name == "auto":
        from .book import default_profile
        name = default_profile()
    if name not in PROFILES:
        raise SambookError(f"unknown profile {name!r}; valid profiles: auto, {', '.join(PROFILES)}")
    return name


def _check_data(args) -> int:
    from .data import find_source
    profile = _profile(args.profile)
    source, path = find_source(args.dataset, args.data_root, PROFILES[profile].sources, args.download)
    print(f"data: {args.dataset} for the {profile} profile from the {source} source at {path}")
    return 0


def _sweep_configs(args) -> list:
    profile = _profile(args.profile)
    seeds = _parse_seeds(args.seeds)
    cfgs = paper_grid(profile, args.dataset, seeds=seeds)
    if args.only:
        keep = {m.strip() for m in args.only.split(",") if m.strip()}
        bad = keep - set(METHODS)
        if bad:
            raise SambookError(f"unknown method(s) {', '.join(sorted(bad))}; valid methods: {', '.join(METHODS)}")
        cfgs = [c for c in cfgs if c.method in keep]
        if not cfgs:
            raise SambookError(f"the {profile} grid has no run of method(s) {args.only} (it has st, sam, at)")
    if args.source != "auto":
        from dataclasses import replace
        cfgs = [replace(c, data_source=args.source) for c in cfgs]
    return cfgs


def _sweep(args) -> int:
    from .executor import run_grid
    cfgs = _sweep_configs(args)
    report = run_grid(cfgs, executor=args.executor, data_root=args.data_root, runs_root=args.runs_root,
                      device=args.device, max_retries=args.max_retries, progress=not args.no_progress,
                      download=args.download, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    for c, r in zip(report.configs, report.results):
        if r is None:
            continue
        m = r.metrics
        print(f"{m['label']:24s} s{c.seed} natural {m['natural']:6.2f}  " +
              "  ".join(f"{b.name} {m[b.name]:6.2f}" for b in c.eval_budgets if b.name in m))
    print(report.summary())
    if report.missing:
        print(f"error: {len(report.missing)} run(s) did not finish (run the sweep again to retry them; finished "
              f"runs are kept and unfinished ones resume from their last epoch):", file=sys.stderr)
        for name in report.missing:
            print(f"  {name}: {report.failed.get(name, 'not run')}", file=sys.stderr)
        return 1
    return 0


def _bench(args) -> int:
    from . import bench
    cfg = bench.default_config(
        args.device, quick=args.quick, width=args.width, batch_size=args.batch_size, steps=args.steps,
        repeats=args.repeats, warmup=args.warmup, eval_images=args.eval_images, loader_workers=args.loader_workers,
        threads=args.threads, compile=args.compile or None, compile_mode=args.compile_mode, data="synthetic" if args.synthetic else None)
    res = bench.run_bench(cfg, out_dir=args.out, data_root=args.data_root, progress=not args.no_progress)
    print(bench.to_markdown(res))
    print("written: " + ", ".join(res["files"]))
    return 0


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.list_methods or args.command == "list-methods":
            print(list_methods())
            return 0
        if args.command == "train":
            return _train(args)
        if args.command == "check-data":
            return _check_data(args)
        if args.command == "grid":
            return _grid(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "sweep":
            return _sweep(args)
        ap.print_help()
        return 0
    except SambookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished runs are kept and an unfinished run resumes from its last epoch",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
