"""The prepared GPU session (``python -m lib gpu-session --budget-s 420 --out DIR``): one rehearsed command
for a 15-minute device lease, resumable across tasks.

In order, each result written under DIR as soon as it exists, stopping cleanly before the budget:

1. ``provenance.json``: GPU name, driver, torch and CUDA versions, commit.
2. ``correctness.json`` (under a minute): the robustness checks that have a CUDA path (feasibility,
   eps = 0 gives the clean accuracy, SAM with rho = 0 equals the fused base optimiser bit for bit,
   evaluation has no side effects, no host sync inside the training steps), a bf16 training step
   close to an fp32 one, and fp32 evaluation on CUDA equal to the CPU's on the same weights within
   0.2 points.
3. ``bench-<gpu>.json`` / ``.md``: ``make bench``'s GPU table (with torch.compile if the budget allows).
4. Fast-profile CIFAR-10 runs in priority order (ST, SAM rho 0.1, the other radii, AT L-inf 2/255,
   AT L2 32/255, the rest of the grid) on the JPEG copy, evaluated in fp32 under the paper and
   converged protocols on the whole test set. Runs already committed under ``outputs/runs/`` are
   skipped, so each GPU task continues the grid; a run starts only if the benchmark's speed says it
   ends inside the budget.

Everything ends in ``DIR/gpu-session.tar.gz`` (the device returns at most 8 files): the JSON and
Markdown files and each run's small files (config, metrics, history, evaluations; never weights),
plus ``DIR/session.md``, a summary. ``--dry-run`` runs the same code path on the CPU with the smoke
profile and a one-minute budget, so the command has run end to end before the first device minute.

The device has Python 3.12 and torch with CUDA, numpy, pandas and Pillow, no jupyter and no
network: nothing here needs more. The data travels as an ignored folder of the checkout
(``data/cifar10-jpeg75``, named in the device tool's ``carry``), found through ``SAMBOOK_DATA``.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import subprocess
import tarfile
import time
import traceback
from pathlib import Path

import torch

from . import paths, runtime
from .errors import SambookError
from .io import write_json, write_text

log = logging.getLogger(__name__)

# the fast-profile runs in priority order (name of the grid entry by label)
PRIORITY = ["ST", "SAM rho=0.1", "SAM rho=0.05", "SAM rho=0.2", "SAM rho=0.4", "AT L-inf 2/255", "AT L2 32/255",
            "AT L-inf 1/255", "AT L2 16/255", "AT L-inf 4/255", "AT L-inf 8/255", "AT L2 64/255", "AT L2 128/255"]
FAST_PROTOCOLS = ("paper", "converged")


class Clock:
    """Seconds left of the budget; ``enough(s)`` says whether a step of about s seconds still fits."""

    def __init__(self, budget_s: float, reserve_s: float):
        self.t0, self.budget, self.reserve = time.monotonic(), budget_s, reserve_s

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.reserve - self.elapsed()

    def enough(self, seconds: float) -> bool:
        return self.left() >= seconds


def provenance(dev: torch.device) -> dict:
    from .runs import git_commit
    out = {**runtime.describe(dev), "commit": git_commit(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            out["driver"] = q.stdout.strip() or q.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["driver"] = f"nvidia-smi unavailable ({e})"
    return out


def correctness(dev: torch.device, small: bool = False) -> dict:
    """The checks with a device path, on a small model; each entry {"ok": bool, ...numbers}.

    ``small`` (the dry run on a CPU): fewer images and a narrower network, the same checks.
    """
    import copy

    import torch.nn.functional as F

    from .attacks import CONVERGED_BUDGETS, pgd
    from .config import make_config
    from .evaluate import evaluate
    from .methods import make_method
    from .models import build_model
    from .optim import SAM
    from .train import build_optimizer
    out = {}
    n, width, half = (64, 8, 32) if small else (256, 16, 128)
    g = torch.Generator().manual_seed(0)
    x_cpu, y_cpu = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    x, y = x_cpu.to(dev), y_cpu.to(dev)
    torch.manual_seed(0)
    model = build_model(10, width).to(dev, memory_format=torch.channels_last)
    cfg = make_config("st", "smoke", width=width, batch_size=half)
    opt = build_optimizer(cfg, model, dev)
    m = make_method(cfg, runtime.train_dtype(dev))
    for i in range(20):                         # a little training, so that attacks have something to break
        m.step(model, opt, x[(i % 2) * half:(i % 2 + 1) * half], y[(i % 2) * half:(i % 2 + 1) * half],
               torch.Generator(device=dev).manual_seed(i))
    model.eval()
    # 1: feasibility
    worst = 0.0
    for norm, eps in (("linf", 8 / 255), ("l2", 128 / 255)):
        x_adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm,
                    generator=torch.Generator(device=dev).manual_seed(1))
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        worst = max(worst, float((size - eps).max()))
        ok = bool(torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1)
        out[f"feasible_{norm}"] = {"ok": ok and float((size - eps).max()) <= (1e-6 if norm == "linf" else eps * 1e-5),
                                   "max_excess": float((size - eps).max())}
    # 2: eps = 0 is the clean accuracy
    from .attacks import Budget
    r = evaluate(model, x, y, budgets=(Budget("linf", 0.0, 0.0),), steps=5)
    out["eps_zero_is_clean"] = {"ok": r["linf_0-a0"] == r["natural"], "natural": r["natural"]}
    # 16: SAM with rho = 0 equals the fused base optimiser, bit for bit
    torch.manual_seed(1)
    a = build_model(10, 8).to(dev)
    b = copy.deepcopy(a)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, **({"fused": True} if dev.type == "cuda" else {}))
    sgd, sam = torch.optim.SGD(a.parameters(), **kw), SAM(b.parameters(), torch.optim.SGD, rho=0.0, **kw)
    st, sam0 = make_method(make_config("st")), make_method(make_config("sam", rho=0.0))
    for i in range(3):
        st.step(a, sgd, x[:64], y[:64], None)
        sam0.step(b, sam, x[:64], y[:64], None)
    out["sam_rho0_is_fused_sgd"] = {"ok": all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                                               b.state_dict().values()))}
    # 13: evaluation has no side effects
    probe = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    evaluate(probe, x[:64], y[:64], steps=3)
    out["evaluation_no_side_effects"] = {"ok": all(torch.equal(before[k], v) for k, v in probe.state_dict().items())
                                         and probe.training and all(p.grad is None for p in probe.parameters())}
    # a bf16 training step close to the fp32 one, from the same (trained) weights on the same batch: bf16
    # keeps 8 bits of mantissa, so each layer's gradient carries ~1 % rounding and the update, summed over
    # the network, a few to some tens of percent; it must point the same way (cosine > 0.95) and have
    # about the same size (within 30 %). A broken autocast path (wrong casts, a lost gradient) fails both.
    upd = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        net = copy.deepcopy(model).train()
        w0 = [p.detach().clone() for p in net.parameters()]
        o = torch.optim.SGD(net.parameters(), lr=0.1)
        make_method(cfg, dtype).step(net, o, x[:half], y[:half], None)
        upd[name] = torch.cat([(p.detach() - w).flatten() for p, w in zip(net.parameters(), w0)])
    rel = float((upd["bf16"] - upd["fp32"]).norm() / upd["fp32"].norm())
    size = float(upd["bf16"].norm() / upd["fp32"].norm())
    cos = float(F.cosine_similarity(upd["bf16"], upd["fp32"], dim=0))
    out["bf16_step_close_to_fp32"] = {"ok": cos > 0.95 and abs(size - 1) < 0.3, "relative_difference": rel,
                                      "size_ratio": size, "cosine": cos}
    # fp32 evaluation on this device equals the CPU's on the same weights
    cpu_model = copy.deepcopy(model).cpu().to(memory_format=torch.channels_last)
    dev_acc = evaluate(model, x, y, budgets=CONVERGED_BUDGETS, steps=10, seed=3)
    cpu_acc = evaluate(cpu_model, x_cpu, y_cpu, budgets=CONVERGED_BUDGETS, steps=10, seed=3)
    gap = max(abs(dev_acc[k] - cpu_acc[k]) for k in dev_acc)
    out["fp32_eval_matches_cpu"] = {"ok": gap <= 0.2 if dev.type == "cuda" else gap == 0.0, "max_gap_points": gap,
                                    "device": dev_acc, "cpu": cpu_acc}
    # no host sync inside the training steps (CUDA's sync debug mode)
    if dev.type == "cuda":
        import warnings
        counts = {}
        for method in ("st", "sam", "at"):
            c = make_config(method, "fast", width=16, **({"eps": 8 / 255} if method == "at" else {}))
            target = copy.deepcopy(model).train()
            mm, oo = make_method(c, torch.bfloat16), build_optimizer(c, target, dev)
            gen = torch.Generator(device=dev).manual_seed(0)
            mm.step(target, oo, x[:128], y[:128], gen)
            torch.cuda.synchronize(dev)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    mm.step(target, oo, x[:128], y[:128], gen)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts[method] = sum("synchroniz" in str(w.message).lower() for w in caught)
        out["no_host_sync_in_steps"] = {"ok": all(v == 0 for v in counts.values()), "syncs": counts}
    out["all_ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


def committed_runs(profile: str) -> set[str]:
    """Names (without hash) of the profile's finished runs in the run cache (on the device: the committed ones)."""
    root = paths.runs_root()
    return {d.name.rsplit("-", 1)[0] for d in root.glob(f"*-{profile}-*") if (d / "metrics.json").is_file()}


def _copy_small(run_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in run_path.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".csv"):
            target = dest / f.relative_to(run_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


def main(out, budget_s: int | None = None, dry_run: bool = False, data_root=None, reserve_s: float | None = None,
         max_runs: int | None = None) -> int:
    """The session. Returns 0 when every step that ran succeeded (a step cut by the budget is not a failure).

    ``budget_s`` defaults to 420 s on the GPU and 60 s for the dry run; ``max_runs`` stops the run queue after
    that many trained runs (None: as many as the budget allows)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SambookError(f"cannot write the session folder {out}: {e.strerror or e}") from None
    if dry_run:
        dev, profile = torch.device("cpu"), "smoke"
        budget_s = 60 if budget_s is None else budget_s
        # one thread, as the smoke profile's runs: two OpenMP threads on shared, busy cores wait on each
        # other at every barrier and can make each step ten times slower
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SambookError("gpu-session needs a CUDA GPU; use --dry-run to rehearse it on the CPU")
        dev, profile = torch.device("cuda"), "fast"
        budget_s = 420 if budget_s is None else budget_s
    clock = Clock(budget_s, reserve_s if reserve_s is not None else (5 if dry_run else 25))
    work = out / "session"
    work.mkdir(exist_ok=True)
    log_lines, status = [], {}

    def note(step, **info):
        status[step] = {"seconds": round(clock.elapsed(), 1), **info}
        log_lines.append(f"{clock.elapsed():7.1f} s  {step}: {json.dumps(info, default=str)[:300]}")
        write_json(work / "status.json", status)

    def attempt(step, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failed step must not lose the others
            note(step, ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
            return None

    prov = provenance(dev)
    write_json(work / "provenance.json", prov)
    note("provenance", ok=True, device=prov.get("device"))
    checks = attempt("correctness", lambda: correctness(dev, small=dry_run))
    if checks is not None:
        write_json(work / "correctness.json", checks)
        note("correctness", ok=checks["all_ok"], failed=[k for k, v in checks.items()
                                                         if isinstance(v, dict) and not v["ok"]])
    speeds = {}
    if clock.enough(15 if dry_run else 120):
        from . import bench
        cfg = bench.default_config(dev, quick=dry_run, compile=(not dry_run and clock.left() > 300) or None)
        res = attempt("bench", lambda: bench.run_bench(cfg, out_dir=work))
        if res is not None:
            speeds = {w["workload"]: w["engine"]["images_per_second"] for w in res["workloads"]}
            note("bench", ok=True, images_per_second={k: round(v) for k, v in speeds.items()})
    else:
        note("bench", ok=True, skipped="budget")
    attempt("runs", lambda: _runs(profile, dev, clock, speeds, work, note, data_root, max_runs))
    note("end", ok=all(v.get("ok", True) for v in status.values()))
    write_text(out / "session.md", "# GPU session\n\n" + "\n".join(f"- {line}" for line in log_lines) + "\n")
    with tarfile.open(out / "gpu-session.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="gpu-session")
    shutil.rmtree(work, ignore_errors=True)
    print((out / "session.md").read_text())
    return 0 if all(v.get("ok", True) for v in status.values()) else 1


def _runs(profile, dev, clock, speeds, work, note, data_root, max_runs=None):
    """Train and evaluate the profile's grid in priority order while the budget lasts (and, with ``max_runs``,
    until that many have finished); skip committed runs."""
    import tempfile

    from . import protocols, runs
    from .config import paper_grid
    by_label = {c.label: c for c in paper_grid(profile)}
    done = committed_runs(profile)
    todo = [by_label[label] for label in PRIORITY if label in by_label and by_label[label].name not in done]
    note("runs-plan", ok=True, committed=sorted(done), todo=[c.label for c in todo])
    root = Path(tempfile.mkdtemp(prefix="gpu-runs-"))
    finished = []
    for c in todo:
        if max_runs is not None and len(finished) >= max_runs:
            note("runs-stop", ok=True, reason=f"--max-runs {max_runs} reached")
            break
        kind = "at" if c.spec.adversarial else ("sam" if c.spec.sam else "st")
        ips = speeds.get(kind)
        per_image = 1.0 / ips if ips else None
        # training at the benchmark's speed (its AT is PGD-10: 11 passes), plus about 20 s for the evaluations
        n_train = (c.train_per_class or 5000) * c.num_classes
        scale = c.spec.passes_per_step(c) / 11 if kind == "at" else 1.0
        estimate = (c.epochs * n_train * per_image * scale if per_image else 30.0) + 20.0
        if not clock.enough(estimate):
            note(f"run {c.label}", ok=True, skipped=f"budget: about {estimate:.0f} s needed, {clock.left():.0f} s left")
            break
        t0 = time.monotonic()
        r = runs.run(c, data_root=data_root, runs_root=root, device=dev, progress=False)
        for name in FAST_PROTOCOLS:
            protocols.evaluate_run(r, name, data_root=data_root, device=dev)
        _copy_small(r.path, work / "runs" / r.path.name)
        finished.append(r.path.name)
        note(f"run {c.label}", ok=True, seconds_run=round(time.monotonic() - t0, 1), path=r.path.name)
    shutil.rmtree(root, ignore_errors=True)
    return finished


def import_archive(archive, outputs=None) -> list[str]:
    """After a device session: unpack ``gpu-session.tar.gz`` into the checkout (to be committed): each run's
    small files into ``outputs/runs/``, the benchmark into ``outputs/bench/``, provenance, correctness and
    status into ``outputs/gpu/<date>/``. Returns the paths written."""
    root = paths.outputs_root(outputs)
    written = []
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not m.name.endswith(".pt")]
        prov = json.load(tar.extractfile("gpu-session/provenance.json"))
        day = prov.get("date", "unknown")[:10]
        for m in members:
            rel = Path(m.name).relative_to("gpu-session")
            if rel.parts[0] == "runs":
                target = root / "runs" / Path(*rel.parts[1:])
            elif rel.name.startswith("bench-"):
                target = root / "bench" / rel.name
            else:
                target = root / "gpu" / day / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
            written.append(str(target))
    return written
