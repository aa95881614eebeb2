"""Command line over the library: ``python -m lib --help``.

Every user mistake (an unknown name, a wrong type, a missing value, missing or corrupt data, an
outputs folder that cannot be written) ends with one line ``error: ...`` on stderr that names the
valid choices, and exit status 2; never a traceback, and nothing finished is touched.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from fractions import Fraction

from . import paths
from .config import PROFILES, grid as make_grid, make_config, profile as get_profile
from .data import DATASETS, SOURCES
from .errors import SambookError
from .methods import METHODS


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``error: ...``) and exit status 2."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


DATA_ROOT_HELP = ("data folder (default $SAMBOOK_DATA, else <repo>/data, else ../shared/data; "
                  "--download writes into $SAMBOOK_DATA or <repo>/data, never into ../shared/data)")


def fraction(text: str) -> float:
    """Parse '8/255', '0.03' or '1e-2' as a float."""
    try:
        v = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r} (try 8/255)") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def count_or_all(text: str):
    """A number of test images, ``all``, or ``default`` (the profile's subset)."""
    if text.strip().lower() == "all":
        return None
    if text == "default":
        return "default"
    return positive_int(text)


def _choice(name: str, valid):
    valid = list(valid)

    def parse(text: str) -> str:
        if text not in valid:
            raise argparse.ArgumentTypeError(f"unknown {name} {text!r}; valid {name}s: {', '.join(valid)}")
        return text
    return parse


def _choices(name: str, valid):
    """One of ``valid``, or several joined by commas (each checked)."""
    one = _choice(name, valid)

    def parse(text: str) -> str:
        parts = [part.strip() for part in text.split(",")]
        for part in parts:
            one(part)
        return ",".join(parts)
    return parse


def _add_data(p, profile_default="smoke", auto=False):
    profiles = (["auto"] if auto else []) + list(PROFILES)
    p.add_argument("--profile", default=profile_default, type=_choice("profile", profiles),
                   help=f"one of {', '.join(profiles)} (default {profile_default})")
    p.add_argument("--dataset", default="cifar10", type=_choice("dataset", DATASETS),
                   help=f"one of {', '.join(DATASETS)} (default cifar10)")
    p.add_argument("--data-root", default=None,
                   help=DATA_ROOT_HELP)
    p.add_argument("--download", action="store_true", help="download the official files if missing (internet)")


def _add_common(p, profile_default="smoke", auto=False):
    _add_data(p, profile_default, auto=auto)
    p.add_argument("--source", default="auto", type=_choice("source", ("auto",) + SOURCES),
                   help=f"data source: auto or one of {', '.join(SOURCES)}")
    p.add_argument("--runs-root", default=None, help="run cache folder (default $SAMBOOK_RUNS, else outputs/runs)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_selection(p):
    p.add_argument("--grid", default="paper", type=_choices("grid", ("paper", "core", "beyond", "fp32attack", "length", "all")),
                   help="paper (Table 2's runs), core (ST, SAM x4, AT 1, 2/255 and 16, 32/255), beyond (chapter "
                        "5's methods), fp32attack (AT with fp32 training attacks), length (ST, SAM 0.1, 0.4 at "
                        "4 and 6 epochs: the training-length axis) or all; several joined by commas, e.g. all,fp32attack "
                        "(default paper)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    p.add_argument("--only", default=None, help=f"comma-separated methods to keep (of {', '.join(METHODS)})")


def build_parser() -> argparse.ArgumentParser:
    from .protocols import PROTOCOLS
    ap = ArgumentParser(prog="python -m lib", description=(
        "Train and evaluate ST, SAM and adversarial training on CIFAR (PreActResNet-18); "
        "runs are cached under outputs/runs/."))
    ap.add_argument("--list-methods", action="store_true", help="list the training methods and exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", parser_class=ArgumentParser)

    t = sub.add_parser("train", help="train one configuration (reuses a finished run), then evaluate it")
    t.add_argument("--method", default="st", type=_choice("method", METHODS), help="training method (--list-methods)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=positive_int, default=None, help="override the profile's number of epochs")
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--lr", type=fraction, default=None)
    t.add_argument("--rho", type=fraction, default=None, help="SAM radius (sam, asam, sam_at)")
    t.add_argument("--norm", default=None, type=_choice("norm", ("linf", "l2")), help="training attack norm")
    t.add_argument("--eps", type=fraction, default=None, help="training attack budget, e.g. 8/255")
    t.add_argument("--alpha", type=fraction, default=None, help="training attack step, e.g. 2/255")
    t.add_argument("--steps", type=int, default=None, help="training attack PGD steps")
    t.add_argument("--attack-fp32", action="store_true", help="training attacks in fp32 when training runs in bf16")
    t.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="method hyperparameter, e.g. --hp beta=6 (repeatable)")
    t.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation protocols and probes")
    t.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_common(t)

    for name, helptext in (("sweep", "train a grid through an executor (local or ray), then evaluate each run"),
                           ("grid", "the same as sweep with the local executor")):
        sw = sub.add_parser(name, help=helptext)
        _add_selection(sw)
        if name == "sweep":
            sw.set_defaults(auto_profile=True)
        if name == "sweep":
            sw.add_argument("--executor", default=None, type=_choice("executor", ("local", "ray")),
                            help="local | ray (default $EXECUTOR, else local)")
        sw.add_argument("--jobs", type=positive_int, default=None, help="runs at once (local executor)")
        sw.add_argument("--max-retries", type=int, default=2, help="further attempts of a failed run (default 2)")
        sw.add_argument("--cpus-per-run", type=positive_int, default=1, help="CPUs per Ray task without GPUs")
        sw.add_argument("--gpus-per-run", type=fraction, default=1.0, help="GPUs per Ray task (0.5: two per GPU)")
        _add_common(sw, auto=name == "sweep")

    e = sub.add_parser("evaluate", help="evaluate finished runs under named protocols (never trains)")
    e.add_argument("--protocol", default="paper", type=_choice("protocol", list(PROTOCOLS) + ["all"]),
                   help=f"one of {', '.join(PROTOCOLS)}, or all (the profile's list)")
    e.add_argument("--n", default="default", type=count_or_all,
                   help="test images (the first N; 'all' for the whole test set; default the profile's subset)")
    e.add_argument("--run", default=None, help="one run folder (default: the selected grid's finished runs)")
    e.add_argument("--force", action="store_true", help="compute again even if a cached evaluation exists")
    _add_selection(e)
    _add_common(e, auto=True)

    r = sub.add_parser("restore", help="train a finished run's missing weights again and install them only if "
                                       "they are bit-identical to the recorded ones (weights are never committed)")
    r.add_argument("--run", required=True, help="the run folder, e.g. outputs/runs/cifar10-st-s1-cpu-long-cb28467254")
    r.add_argument("--scratch", default=None, help="where to retrain (default: a temporary folder, removed after)")
    r.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)
    r.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sub.add_parser("list-methods", help="list the training methods")
    sub.add_parser("list-protocols", help="list the evaluation protocols")

    b = sub.add_parser("bench", help="speed benchmark: the engine vs a reference-style loop (writes outputs/bench/)")
    b.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    b.add_argument("--profile", default=None, type=_choice("profile", PROFILES),
                   help="take width, batch and precision from a profile (default: cpu on a CPU, fast on CUDA)")
    b.add_argument("--width", type=positive_int, default=None, help="network width")
    b.add_argument("--batch-size", type=positive_int, default=None, help="batch size of both sides (default 128)")
    b.add_argument("--steps", type=positive_int, default=None, help="batches per repeat")
    b.add_argument("--repeats", type=positive_int, default=None, help="timed repeats; medians are reported")
    b.add_argument("--warmup", type=int, default=None, help="untimed repeats first")
    b.add_argument("--eval-images", type=positive_int, default=None, help="test images per evaluation repeat")
    b.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default 1 on a CPU)")
    b.add_argument("--compile", action="store_true", help="also time torch.compile of the model (ST, SAM, PGD evaluation; inductor on CUDA or the CPU)")
    b.add_argument("--quick", action="store_true", help="a tiny configuration (seconds; for tests)")
    b.add_argument("--out", default=None, help="output folder (default outputs/bench)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    g = sub.add_parser("gpu-session", help="the prepared GPU session: provenance, CUDA checks, bench, fast-profile runs")
    g.add_argument("--budget-s", type=positive_int, default=None,
                   help="stop cleanly before this many seconds (default 420; 60 with --dry-run)")
    g.add_argument("--max-runs", type=positive_int, default=None,
                   help="stop the run queue after this many trained runs (default: as many as the budget allows)")
    g.add_argument("--out", default=None, help="folder for the results (packed into one archive at the end)")
    g.add_argument("--import", dest="import_archive", default=None, metavar="ARCHIVE",
                   help="unpack a session's gpu-session.tar.gz into outputs/ (runs, bench, provenance) to commit")
    g.add_argument("--dry-run", action="store_true", help="the same code path on the CPU, smoke profile")
    g.add_argument("--data-root", default=None,
                   help=DATA_ROOT_HELP)

    c = sub.add_parser("check-data", help="say which data a profile would use, or fail with the data error")
    _add_data(c, profile_default="auto", auto=True)
    return ap


def list_methods() -> str:
    return "\n".join(f"{m:8s} {s.description} (passes per step: {s.passes_text()})" for m, s in METHODS.items())


def list_protocols() -> str:
    from .protocols import PROTOCOLS
    width = max(map(len, PROTOCOLS))
    return "\n".join(f"{p.name:{width}s} {p.title}: {p.doc}" for p in PROTOCOLS.values())


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


def resolve_profile(name: str) -> str:
    """A profile name, ``auto`` resolved to the most real scale for this machine: ``fast`` with a GPU, else
    the README's scale (``cpu-long`` today; its results are committed: the book renders them without
    training). ``smoke`` is asked for
    by name."""
    if name == "auto":
        from .book import default_profile
        name = default_profile()
    return get_profile(name).name


_profile = resolve_profile


def profile_arg(p) -> None:
    """``--profile`` with ``auto`` (the default: fast with a GPU, else the README's committed scale), checked at parse time."""
    names = ["auto", *PROFILES]
    p.add_argument("--profile", default="auto", type=_choice("profile", names), help=" | ".join(names))


def parse(ap, argv):
    """``ap.parse_args(argv)``, or the exit status of a parse error (already reported in one line)."""
    try:
        return ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _row(res, rec) -> str:
    return (f"{res.metrics['label']:28s} s{res.config.seed} clean {rec['natural']:6.2f}  " +
            "  ".join(f"{t} {v['acc']:6.2f}" for t, v in rec["threats"].items()))


def _train(args) -> int:
    from . import protocols, runs
    from .executor import finish_run
    from .runtime import device
    device(args.device)             # an unknown device is refused before anything is written
    over = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, rho=args.rho,
                                  norm=args.norm, eps=args.eps, alpha=args.alpha, steps=args.steps).items()
            if v is not None}
    if args.attack_fp32:
        over["attack_fp32"] = True
    if args.source != "auto":
        over["data_source"] = args.source
    cfg = make_config(args.method, args.profile, args.dataset, args.seed, extra=_hparams(args.hp), **over)
    res = runs.run(cfg, data_root=args.data_root, runs_root=args.runs_root, device=args.device,
                   download=args.download, progress=not args.no_progress, retrain=args.retrain)
    if not args.no_eval:
        finish_run(res, args.data_root, args.device)
    m = dict(res.metrics)
    if not args.no_eval:
        m["evaluations"] = {r["protocol"]: {"n": r["n"], "natural": r["natural"],
                                            **{t: v["acc"] for t, v in r["threats"].items()}}
                            for r in protocols.evaluations(res)}
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    print(f"{m['label']} [{m['profile']} profile] -> {res.path}")
    print(f"  data: {m['data']}")
    print(f"  train {m['train_seconds']:.1f} s, {m['images_per_second']:.0f} images/s on {m['device']}, "
          f"{m['precision']}")
    for name, ev in m.get("evaluations", {}).items():
        print(f"  {name:10s} (n={ev['n']}): " + "  ".join(f"{k} {v:.2f}%" for k, v in ev.items() if k != "n"))
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


def _selected(args) -> list:
    profile = _profile(args.profile)
    cfgs = make_grid(args.grid, profile, args.dataset, seeds=_parse_seeds(args.seeds))
    if args.only:
        keep = {m.strip() for m in args.only.split(",") if m.strip()}
        bad = keep - set(METHODS)
        if bad:
            raise SambookError(f"unknown method(s) {', '.join(sorted(bad))}; valid methods: {', '.join(METHODS)}")
        cfgs = [c for c in cfgs if c.method in keep]
        if not cfgs:
            have = sorted({c.method for c in make_grid(args.grid, profile, args.dataset)})
            raise SambookError(f"the {args.grid} grid has no run of method(s) {args.only} (it has {', '.join(have)})")
    if args.source != "auto":
        from dataclasses import replace
        cfgs = [replace(c, data_source=args.source) for c in cfgs]
    return cfgs


def _sweep(args) -> int:
    from . import protocols
    from .executor import run_grid
    cfgs = _selected(args)
    if args.max_retries < 0:
        raise SambookError(f"--max-retries must be >= 0, got {args.max_retries}")
    report = run_grid(cfgs, executor=getattr(args, "executor", None) or ("local" if args.command == "grid" else None),
                      data_root=args.data_root, runs_root=args.runs_root, device=args.device,
                      max_retries=args.max_retries, progress=not args.no_progress, download=args.download,
                      cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, jobs=args.jobs)
    for r in report.finished:
        for rec in protocols.evaluations(r):
            if rec["protocol"] == "paper":
                print(_row(r, rec))
    print(report.summary())
    if report.missing:
        print(f"error: {len(report.missing)} run(s) did not finish (run the sweep again to retry them; finished "
              f"runs are kept and unfinished ones resume from their last epoch): " +
              "; ".join(f"{n}: {report.failed.get(n, 'not run')}" for n in report.missing), file=sys.stderr)
        return 1
    return 0


def _evaluate(args) -> int:
    from pathlib import Path

    from . import protocols, runs
    if args.run:
        if not runs.is_finished(Path(args.run)):
            raise SambookError(f"{args.run} is not a finished run folder (no {runs.METRICS})")
        results = [runs.load_run(args.run)]
    else:
        cfgs = _selected(args)
        found = runs.finished_runs(cfgs, args.data_root, args.runs_root)
        missing = [c.name for c, r in zip(cfgs, found) if r is None]
        results = [r for r in found if r is not None]
        if missing:
            print(f"not trained (skipped; evaluate never trains): {', '.join(missing)}", file=sys.stderr)
        if not results:
            raise SambookError(f"no finished run of the {args.grid} grid for the {args.profile} profile under "
                               f"{runs.paths.runs_root(args.runs_root)}; train them with python -m lib sweep")
    for r in results:
        names = [p[0] for p in get_profile(r.config.profile).protocols_for(r.config)] if args.protocol == "all" \
            else [args.protocol]
        for name in names:
            rec = protocols.evaluate_run(r, name, n=args.n, data_root=args.data_root, device=args.device,
                                         force=args.force)
            print(f"{name:10s} n={rec['n']:5d} {_row(r, rec)}")
    return 0


def _restore(args) -> int:
    from pathlib import Path

    from . import runs
    if not runs.is_finished(Path(args.run)):
        raise SambookError(f"{args.run} is not a finished run folder (no {runs.METRICS})")
    out = runs.restore_weights(args.run, data_root=args.data_root, device=args.device,
                               progress=not args.no_progress, scratch=args.scratch)
    if out["status"] == "present":
        print(f"{out['run']}: model.pt is there and is the recorded weights ({out['weights_sha']}); nothing to do")
    else:
        print(f"{out['run']}: retrained in {out['train_seconds']:.0f} s on {out['device']}; weights "
              f"{out['weights_sha']} equal the recorded ones; model.pt installed")
    return 0


def _bench(args) -> int:
    from . import bench
    cfg = bench.default_config(
        args.device, quick=args.quick, profile=args.profile, width=args.width, batch_size=args.batch_size,
        steps=args.steps, repeats=args.repeats, warmup=args.warmup, eval_images=args.eval_images,
        threads=args.threads, compile=args.compile or None)
    res = bench.run_bench(cfg, out_dir=args.out, progress=not args.no_progress)
    print(bench.to_markdown(res))
    print("written: " + ", ".join(res["files"]))
    return 0


def _check_data(args) -> int:
    from .data import find_source
    profile = _profile(args.profile)
    source, path = find_source(args.dataset, args.data_root, PROFILES[profile].sources, args.download)
    print(f"data: {args.dataset} for the {profile} profile from the {source} source at {path}")
    return 0


def _gpu_session(args) -> int:
    from pathlib import Path

    from . import gpu_session
    if args.import_archive:
        if not Path(args.import_archive).is_file():
            raise SambookError(f"no such archive: {args.import_archive}")
        for p in gpu_session.import_archive(args.import_archive):
            print(p)
        return 0
    if not args.out:
        raise SambookError("gpu-session needs --out DIR (or --import ARCHIVE)")
    return gpu_session.main(out=args.out, budget_s=args.budget_s, dry_run=args.dry_run, data_root=args.data_root,
                            max_runs=args.max_runs)


COMMANDS = {"train": _train, "sweep": _sweep, "grid": _sweep, "evaluate": _evaluate, "bench": _bench,
            "check-data": _check_data, "gpu-session": _gpu_session, "restore": _restore}


def guarded(fn) -> int:
    """``fn()``'s exit status, with the project's errors, I/O errors and Ctrl-C reported on one line
    (never a traceback): the common ending of ``python -m lib``, ``lib.book`` and ``lib.site``."""
    try:
        return fn()
    except SambookError as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except OSError as e:   # an unwritable outputs folder, a full disk: one line, never a traceback
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: cannot write or read{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished runs are kept and an unfinished run resumes from its last epoch",
              file=sys.stderr)
        return 130


def main(argv=None) -> int:
    ap = build_parser()
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    if getattr(args, "download", False) and getattr(args, "data_root", None) is None:
        args.data_root = str(paths.download_root())   # never into the shared folder data_root() reads
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    def command() -> int:
        if args.list_methods or args.command == "list-methods":
            print(list_methods())
            return 0
        if args.command == "list-protocols":
            print(list_protocols())
            return 0
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        ap.print_help()
        return 0
    return guarded(command)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
