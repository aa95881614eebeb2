"""The profiles and grids of the longer CPU scale: what a run is called and which runs a grid holds."""
from __future__ import annotations

import pytest

from lib import config
from lib.errors import ConfigError


def test_the_long_profile_is_the_cpu_profile_trained_longer_on_every_test_image():
    cpu, long = config.PROFILES["cpu"], config.PROFILES["cpu-long"]
    same = ("width", "train_per_class", "sources", "seeds", "batch_size", "lr", "schedule", "nesterov", "precision",
            "cpu_threads")
    assert all(getattr(cpu, k) == getattr(long, k) for k in same)
    assert long.epochs > cpu.epochs and long.test_per_class is None and not long.train_in_book
    sizes = {name: n for name, n, _ in long.protocols}
    assert sizes["paper"] is None and sizes["converged"] >= 1000 and sizes["strong"] >= 1000
    # compiled training only where it was measured to pay: ST and SAM steps, not AT (0.91x)
    assert long.compiles("st") and long.compiles("sam") and not long.compiles("at") and not cpu.compile


def test_a_run_of_the_length_axis_says_its_length_and_differs_from_the_profile_run():
    full = config.make_config("st", "cpu-long", seed=1)
    short = config.make_config("st", "cpu-long", seed=1, epochs=4)
    assert full.name == "cifar10-st-s1-cpu-long" and short.name == "cifar10-st-e4-s1-cpu-long"
    assert full.config_hash() != short.config_hash()
    assert config.make_config("sam", "cpu", rho=0.1).name == "cifar10-sam-rho0.1-s0-cpu"   # committed names unchanged


def test_the_length_grid_holds_st_and_two_radii_at_each_length_and_seed():
    g = config.grid("length", "cpu-long")
    assert len(g) == len(config.LENGTHS) * 3 * 3
    assert {c.epochs for c in g} == set(config.LENGTHS) and all(c.epochs < config.PROFILES["cpu-long"].epochs for c in g)
    assert {(c.method, c.rho) for c in g} == {("st", 0.0), ("sam", 0.1), ("sam", 0.4)}
    assert {c.seed for c in g} == {0, 1, 2}
    with pytest.raises(ConfigError, match="valid grids: .*length"):
        config.grid("lengths", "cpu-long")


def test_grids_joined_by_commas_hold_every_run_of_each_once():
    """make test's one smoke sweep: ``all,fp32attack`` is the union of the two grids, each run once, in the order
    named; a grid that overlaps another (paper is part of all) adds nothing twice."""
    both = config.grid("all,fp32attack", "smoke")
    assert both == config.grid("all", "smoke") + config.grid("fp32attack", "smoke")
    assert len(set(both)) == len(both)
    assert config.grid("paper,all", "smoke") == config.grid("all", "smoke")
    assert config.grid(" core , length ", "cpu-long")[-1] == config.grid("length", "cpu-long")[-1]
    for bad in ("all,huge", ",", "paper,,"):
        with pytest.raises(ConfigError, match="valid grids"):
            config.grid(bad, "smoke")


def test_a_run_of_the_length_axis_is_evaluated_under_the_paper_protocol_only():
    """The length axis reads the paper protocol (chapter 4): its runs skip the subset protocols and the probes
    beyond flatness, which cost more than their training at 4 and 6 epochs; the profile's own runs keep all."""
    from lib import probes
    long = config.PROFILES["cpu-long"]
    full = config.make_config("st", "cpu-long", seed=0)
    short = config.make_config("st", "cpu-long", seed=0, epochs=4)
    assert long.protocols_for(full) == long.protocols
    assert [p[0] for p in long.protocols_for(short)] == ["paper"]
    assert probes.default_probes(short) == ["flatness"] and "duality" in probes.default_probes(full)
    cpu = config.PROFILES["cpu"]          # no length protocols of its own: every run gets the profile's list
    assert cpu.protocols_for(config.make_config("st", "cpu", epochs=4)) == cpu.protocols
