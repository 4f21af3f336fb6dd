"""The library digest that guards a resumed Dask run (simulator.cluster): whatever changes
the population must change it, model files kept outside the library folder included."""

from __future__ import annotations

import json

from simulator.population import RunConfig, library_digest


def _library(tmp_path, model: str):
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "course.json").write_text(json.dumps({"name": "course", "states": {
        "Initial": {"type": "Initial", "direct_transition": "Wait"},
        "Wait": {"type": "Delay", "exact": {"quantity": 1, "unit": "days"},
                 "learned_transition": {"model": model,
                                        "fallback": {"direct_transition": "Terminal"}}},
        "Terminal": {"type": "Terminal"}}}))
    return lib


def test_a_model_card_outside_the_library_is_part_of_the_digest(tmp_path):
    lib = _library(tmp_path, "../models/course.card.json")
    models = tmp_path / "models"
    models.mkdir()
    card = models / "course.card.json"
    card.write_text(json.dumps({"format": "carecourse-model/1", "weights": "course.pt"}))
    weights = models / "course.pt"
    weights.write_bytes(b"first training")
    config = RunConfig(population=1, modules_dir=lib, out=tmp_path / "out")
    first = library_digest(config)
    assert library_digest(config) == first
    weights.write_bytes(b"retrained")
    retrained = library_digest(config)
    assert retrained != first
    card.write_text(json.dumps({"format": "carecourse-model/1", "weights": "course.pt",
                                "epsilon": 2.0}))
    assert library_digest(config) not in (first, retrained)


def test_a_missing_or_broken_card_does_not_stop_the_digest(tmp_path):
    # The library check reports those; the digest only reads what is there.
    lib = _library(tmp_path, "../models/absent.json")
    config = RunConfig(population=1, modules_dir=lib, out=tmp_path / "out")
    before = library_digest(config)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "absent.json").write_text("{not json")
    assert library_digest(config) != before
