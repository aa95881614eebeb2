"""The evaluation stage (lib.protocols): named protocols over finished runs, cached per (weights, protocol, n).

A tiny smoke run (1 epoch, 20 images per class) is trained once per module; everything else
evaluates it. What is asserted holds on any processor: caching and reuse, the union's logic, the
protocols' definitions, feasibility, orderings; never one machine's accuracies.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from lib import protocols, runs
from lib.attacks import PAPER_BUDGETS, THREATS
from lib.config import make_config
from lib.errors import ConfigError, SambookError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return runs.run(make_config("st", "smoke", epochs=1, train_per_class=20), runs_root=root, device="cpu",
                    progress=False)


def test_the_protocols_are_what_their_docs_say():
    p = protocols.PROTOCOLS
    assert set(p) == {"paper", "converged", "strong", "autoattack", "apgd-ce", "linf8", "autoattack-linf8"}
    for proto in p.values():
        assert proto.doc and proto.title
    # the paper's steps: L-inf eps/4, L2 eps/8, PGD-10, one random start, the last iterate
    a = p["paper"].attacks[0]
    assert (a.steps, a.linf_div, a.l2_div, a.restarts, a.loss, a.any_iterate) == (10, 4, 8, 1, "ce", False)
    assert [a.budget(n, e) for n, e in THREATS] == list(PAPER_BUDGETS)
    c = p["converged"].attacks[0]
    assert (c.steps, c.linf_div, c.l2_div) == (10, 4, 4)
    s = p["strong"].attacks
    assert {x.loss for x in s} == {"ce", "margin"} and all(x.steps >= 50 and x.any_iterate for x in s)
    assert sum(x.restarts for x in s) >= 3
    assert p["autoattack"].attacks[0].version == "standard"
    assert p["linf8"].threats == (("linf", 8 / 255),)
    aa8 = p["autoattack-linf8"]
    assert aa8.threats == p["linf8"].threats and aa8.attacks[0].version == "standard"
    # the digest ignores prose, not settings
    assert len({q.digest() for q in p.values()}) == len(p)


def test_pack_and_unpack_are_inverse():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 200, 1000):
        m = rng.random(n) < 0.4
        assert (protocols.unpack(protocols.pack(m), n) == m).all()
    assert len(protocols.pack(np.ones(1000, bool))) < 200


def test_evaluate_run_writes_a_record_and_reuses_it(run):
    rec = protocols.evaluate_run(run, "paper")
    path = protocols.eval_path(run.path, "paper", None)
    assert path.exists()
    assert rec["n"] == run.metrics["test_images"] == 200 and rec["weights_sha"] == run.metrics["weights_sha"]
    clean = protocols.unpack(rec["clean"], rec["n"])
    assert abs(100 * clean.mean() - rec["natural"]) < 1e-9
    for t, v in rec["threats"].items():
        robust = protocols.unpack(v["robust"], rec["n"])
        assert not (robust & ~clean).any()             # robust only where correct clean
        assert abs(100 * robust.mean() - v["acc"]) < 1e-9
    mtime = path.stat().st_mtime_ns
    again = protocols.evaluate_run(run, "paper")
    assert again == rec and path.stat().st_mtime_ns == mtime      # cached: nothing recomputed or rewritten


def test_common_worst_is_the_union_of_the_named_protocols_on_their_common_images(run, tmp_path):
    import shutil
    shutil.copytree(run.path, tmp_path / run.path.name, ignore=shutil.ignore_patterns(protocols.EVAL_DIR))
    run = runs.load_run(tmp_path / run.path.name)          # no evaluation yet, whatever ran before
    paper = protocols.evaluate_run(run, "paper")
    protocols.evaluate_run(run, "converged", n=60)
    conv = protocols.evaluate_run(run, "converged", n=100)      # run on two subsets: the larger counts
    strong = protocols.evaluate_run(run, "strong", n=20)         # the smoke profile's own subset, read again below
    both = protocols.common_worst(run, ("paper", "converged"))
    trio = protocols.common_worst(run, ("paper", "converged", "strong"))
    for t in ("linf_1", "linf_2", "l2_16", "l2_32"):
        masks = {name: protocols.unpack(rec["threats"][t]["robust"], rec["n"])
                 for name, rec in (("paper", paper), ("converged", conv), ("strong", strong))}
        assert both[t]["n"] == 100 and trio[t]["n"] == 20
        assert both[t]["acc"] == pytest.approx(100 * (masks["paper"][:100] & masks["converged"]).mean())
        assert trio[t]["acc"] == pytest.approx(
            100 * (masks["paper"][:20] & masks["converged"][:20] & masks["strong"]).mean())
        alone = protocols.common_worst(run, ("paper",), [t], n=40)[t]
        assert alone["n"] == 40 and alone["acc"] == pytest.approx(100 * masks["paper"][:40].mean())
        assert trio[t]["acc"] <= alone["acc"] + 1e-9
    assert protocols.common_worst(run, ("paper", "linf8")) == {}      # a protocol never run: nothing
    # the tables' strict measure takes the profile's subset (smoke: strong on 20), not what one run happens to have
    from lib import tables
    row = tables.run_row(run)
    assert tables.strict_images("smoke") == 20 and row["strict_n"] == 20
    for t in ("linf_1", "linf_2", "l2_16", "l2_32"):
        assert row[f"strict_{t}"] == pytest.approx(protocols.common_worst(run, tables.STRICT_PROTOCOLS, [t], n=20)[t]["acc"])
        assert row[f"papersub_{t}"] == pytest.approx(100 * protocols.unpack(paper["threats"][t]["robust"], 200)[:20].mean())
    # a threat one of the named protocols does not measure is left out
    protocols.evaluate_run(run, "linf8", n=40)
    assert set(protocols.common_worst(run, ("paper", "linf8"))) == set()
    assert set(protocols.common_worst(run, ("linf8",))) == {"linf_8"}


def test_a_new_protocol_never_retrains_and_shares_identical_attacks(run, monkeypatch):
    import lib.runs as R
    monkeypatch.setattr(R, "train", lambda *a, **k: pytest.fail("evaluation must never train"))
    paper = protocols.evaluate_run(run, "paper")
    conv = protocols.evaluate_run(run, "converged")
    # L-inf steps are the same in both protocols: the outcome is reused, not recomputed
    for t in ("linf_1", "linf_2"):
        key = conv["threats"][t]["attacks"][0]
        assert key == paper["threats"][t]["attacks"][0]
        assert conv["attacks"][key].get("reused") and conv["attacks"][key]["robust"] == paper["attacks"][key]["robust"]
    for t in ("l2_16", "l2_32"):
        assert conv["threats"][t]["attacks"][0] != paper["threats"][t]["attacks"][0]


def test_force_computes_every_attack_again(run):
    """--force is for a cached result one no longer trusts: it must not read that result's attacks back
    (nor other records'). A record whose attack outcome was altered is replaced by the computed one."""
    paper = protocols.evaluate_run(run, "paper")
    path = protocols.eval_path(run.path, "paper", None)
    altered = json.loads(path.read_text())
    key = altered["threats"]["linf_2"]["attacks"][0]
    altered["attacks"][key]["robust"] = protocols.pack(np.ones(altered["n"], dtype=bool))
    altered["attacks"][key]["acc"] = 100.0
    path.write_text(json.dumps(altered))
    again = protocols.evaluate_run(run, "paper", force=True)
    assert not any(a.get("reused") for a in again["attacks"].values())
    assert again["attacks"][key]["robust"] == paper["attacks"][key]["robust"]      # deterministic per attack key
    assert again["threats"] == paper["threats"]


def test_subset_protocols_and_the_worst_case_union(run):
    paper = protocols.evaluate_run(run, "paper")
    strong = protocols.evaluate_run(run, "strong", n=20)
    assert strong["n"] == 20 and protocols.eval_path(run.path, "strong", 20).exists()
    worst = protocols.worst_case(run)
    for t in ("linf_1", "linf_2", "l2_16", "l2_32"):
        w = worst[t]
        assert w["n_common"] == 20 and "strong" in w["protocols"] and "paper" in w["protocols"]
        p_mask = protocols.unpack(paper["threats"][t]["robust"], 200)
        s_mask = protocols.unpack(strong["threats"][t]["robust"], 20)
        union = p_mask.copy()
        union[:20] &= s_mask
        assert w["acc"] == pytest.approx(100 * union.mean())       # per example, over the whole test set
        assert w["worst_on_common"] == pytest.approx(100 * (p_mask[:20] & s_mask).mean())
        assert w["acc"] <= paper["threats"][t]["acc"] + 1e-9
        assert w["gap"] == pytest.approx(w["paper_on_common"] - w["worst_on_common"]) and w["gap"] >= 0


def test_a_book_of_committed_results_reads_evaluations_and_never_adds_one(run, tmp_path, monkeypatch):
    """report.protocol_accuracy computes a missing evaluation only for a profile whose book trains; for one
    that shows committed results (cpu) it reads the cache, gives NaN where nothing is cached, and writes
    nothing, even with the weights present."""
    import dataclasses
    import math
    import shutil
    from lib import config, report
    shutil.copytree(run.path, tmp_path / run.path.name, ignore=shutil.ignore_patterns(protocols.EVAL_DIR))
    copy = runs.load_run(tmp_path / run.path.name)
    assert copy.has_weights
    with pytest.raises(SambookError, match="cached results only"):
        protocols.evaluate_run(copy, "linf8", cached_only=True)
    monkeypatch.setitem(config.PROFILES, "smoke", dataclasses.replace(config.PROFILES["smoke"], train_in_book=False))
    assert math.isnan(report.protocol_accuracy(copy, "linf8", "linf_8"))
    assert not (copy.path / protocols.EVAL_DIR).exists() or not any((copy.path / protocols.EVAL_DIR).iterdir())
    cached = protocols.evaluate_run(copy, "linf8")                     # on purpose (python -m lib evaluate)
    assert report.protocol_accuracy(copy, "linf8", "linf_8") == cached["threats"]["linf_8"]["acc"]
    monkeypatch.undo()
    assert report.protocol_accuracy(copy, "converged", "l2_16") >= 0    # a book that trains computes it
    assert any(f.name.startswith("converged-") for f in (copy.path / protocols.EVAL_DIR).iterdir())


def test_stale_records_are_named_recomputed_where_weights_exist_and_bad_n_refused(run, tmp_path):
    rec = protocols.evaluate_run(run, "paper")
    path = protocols.eval_path(run.path, "paper", None)
    doctored = dict(rec, weights_sha="0" * 16)
    path.write_text(json.dumps(doctored))
    with pytest.raises(SambookError, match="other weights"):     # a reader is told, never handed fewer records
        protocols.evaluations(run)
    fresh = protocols.evaluate_run(run, "paper")                 # recomputed for the real weights
    assert fresh["weights_sha"] == run.metrics["weights_sha"] and fresh["threats"] == rec["threats"]
    with pytest.raises(ConfigError, match="valid protocols"):
        protocols.evaluate_run(run, "pgd-1000")
    with pytest.raises(ConfigError, match="positive number"):
        protocols.evaluate_run(run, "paper", n=0)


def test_records_of_a_class_sorted_whole_test_split_are_refused(run):
    """A record made while an ImageFolder's whole test split was in its stored class order (no ``test_order``
    stamp) is refused for a profile that uses the whole split, with what to do; per-class subsets (this
    smoke run) were never affected."""
    rec = protocols.evaluate_run(run, "paper")
    assert rec["test_order"].startswith("the first 20 test images of each class")
    path = protocols.eval_path(run.path, "paper", None)
    old = {k: v for k, v in rec.items() if k != "test_order"}
    whole = make_config("st", "cpu-long", data_source="imagefolder")
    with pytest.raises(protocols.ResultError, match="stored class order.*evaluate again"):
        protocols.check_record(path, old, rec["weights_sha"], whole)
    assert protocols.check_record(path, rec, rec["weights_sha"], whole) is rec
    assert protocols.check_record(path, old, rec["weights_sha"], run.config) is old


def test_a_probe_of_a_class_sorted_whole_test_split_is_computed_again(run, tmp_path, monkeypatch):
    import dataclasses
    import shutil
    from lib import config, probes
    rows = probes.probe(run, "sam_step")
    path = probes.probe_path(run.path, "sam_step")
    rec = json.loads(path.read_text())
    assert rec["test_order"].startswith("the first 20 test images")
    del rec["test_order"]
    path.write_text(json.dumps(rec))
    assert probes.probe(run, "sam_step") == rows                  # smoke keeps a per-class subset: still valid
    whole = dataclasses.replace(config.PROFILES["smoke"], test_per_class=None)
    monkeypatch.setitem(config.PROFILES, "smoke", whole)          # as if the profile used the whole split
    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy)
    (copy / runs.MODEL).unlink()
    cfg = json.loads((copy / runs.CONFIG).read_text())
    (copy / runs.CONFIG).write_text(json.dumps(dict(cfg, data_source="imagefolder")))   # an ImageFolder's split
    with pytest.raises(SambookError, match="stored class order"):  # no weights: named, never read as valid
        probes.probe(runs.load_run(copy), "sam_step")


def test_cached_evaluations_are_read_without_weights(run, tmp_path):
    import shutil
    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy)
    (copy / runs.MODEL).unlink()
    r = runs.load_run(copy)
    rec = protocols.evaluate_run(r, "paper")                      # committed results: no weights needed
    assert rec["n"] == 200
    with pytest.raises(SambookError, match="no weights"):
        protocols.evaluate_run(r, "linf8")


def test_the_evaluate_command_never_trains(run, capsys):
    from lib.cli import main
    assert main(["evaluate", "--run", str(run.path), "--protocol", "linf8", "--n", "30"]) == 0
    out = capsys.readouterr().out
    assert "linf8" in out and "n=   30" in out
    assert main(["evaluate", "--run", str(run.path / "nope")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_learning_curves_say_when_they_were_measured_on_one_class(run, tmp_path, monkeypatch):
    import dataclasses
    import shutil
    from lib import config, report
    assert "test_order" in run.metrics
    assert report.curve_images_note([run]) == "Learning curves on the first 100 test images."
    copy = tmp_path / run.path.name
    shutil.copytree(run.path, copy)
    cfg = json.loads((copy / runs.CONFIG).read_text())
    (copy / runs.CONFIG).write_text(json.dumps(dict(cfg, data_source="imagefolder")))
    m = json.loads((copy / runs.METRICS).read_text())
    del m["test_order"]                                            # trained before the split was put in order
    (copy / runs.METRICS).write_text(json.dumps(m))
    monkeypatch.setitem(config.PROFILES, "smoke", dataclasses.replace(config.PROFILES["smoke"], test_per_class=None))
    note = report.curve_images_note([run, runs.load_run(copy)])
    assert "for 1 of the 2 runs" in note and "airplanes only" in note
