"""Every result record carries the training recipe, and names what a configuration turned off."""
from __future__ import annotations

import json

from bitbench.configs.record import ResultRecord, record_digest
from bitbench.configs.suite import load_suite
from bitbench.harness import Harness, RunOptions


def test_recipe_and_deviations_in_the_record(tmp_path):
    suite = load_suite("default")
    suite = suite.replace(rates=[0.01], headline_rate=0.01, patterns=2, train=dict(suite.train, epochs=1))
    h = Harness(suite, RunOptions(cache_dir=str(tmp_path / "c"), results_dir=str(tmp_path / "r"), device="cpu",
                                  progress=False))
    paper = h.run_cell("normal", "random_p0.01")
    # the default suite's cosine schedule is not the paper's multistep one: the record says so
    assert paper.recipe["clip"] == 1.0 and paper.recipe["deviations"] == [
        "lr schedule 'cosine' (the paper: multistep, lr x0.1 at epochs floor(2E/5), floor(3E/5), floor(4E/5))"]
    assert paper.recipe["quantization"].startswith("normal(") and paper.recipe["train"]["threads"] == 1
    multistep = Harness(suite.replace(train=dict(suite.train, epochs=1, schedule="multistep")),
                        RunOptions(cache_dir=str(tmp_path / "c"), results_dir=str(tmp_path / "r"), device="cpu",
                                   progress=False)).run_cell("normal", "random_p0.01")
    assert multistep.recipe["deviations"] == []
    off = h.run_cell("normal:w_max=none", "random_p0.01")
    assert off.recipe["clip"] is None and "no weight clipping" in off.recipe["deviations"][0]
    assert len(off.recipe["deviations"]) == 2
    with open(off.path) as f:
        back = ResultRecord.from_json(json.load(f))
    assert back.recipe == off.recipe
    # a record without the field (an attack-only record written by other code) reads with an empty recipe
    d = off.to_json()
    d.pop("recipe")
    d["digest"] = record_digest(d)
    assert ResultRecord.from_json(d).recipe == {}
