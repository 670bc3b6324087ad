"""Bundles on disk: round trip, atomic replacement, and a clear error for every kind of damage."""

import json
import shutil

import pytest
import torch
from torch import nn

from weft.serve import Bundle, BundleError, Ensemble, ServeError, verify
from weft.serve import testbed as tb
from weft.serve.ensemble import check_input


@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, dst)
    return dst


def test_round_trip_answers_alike(tiny_bundle, digits_sets):
    loaded = Bundle.load(tiny_bundle.path)
    x = digits_sets[1].tensors[0][:40]
    assert torch.equal(Ensemble(loaded).predict_scores(x), Ensemble(tiny_bundle).predict_scores(x))
    assert [m.temperature for m in loaded.members] == [m.temperature for m in tiny_bundle.members]
    assert loaded.summary() == tiny_bundle.summary()
    meta = json.loads((tiny_bundle.path / "bundle.json").read_text())
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert {"config", "original", "torch", "weft", "created"} <= set(meta["provenance"])


def test_predict_shapes_and_bad_input(tiny_bundle, digits_sets):
    e = Ensemble(tiny_bundle)
    x = digits_sets[1].tensors[0][:5]
    assert e.predict(x).shape == (5,) and e.predict(x[0]).shape == ()
    assert e.predict(x[0]) == e.predict(x)[0]
    scores = e.predict_scores(x)
    assert scores.shape == (5, 10) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(ServeError, match=r"input has shape \[5, 64\], expected \[1, 8, 8\] or \[N, 1, 8, 8\]"):
        check_input(x.reshape(5, 64), (1, 8, 8))


def test_the_original_model_is_a_one_member_bundle(tmp_path, digits_sets):
    model = tb.digits_resnet(width=4).eval()
    b = Bundle.from_model(model, (1, 8, 8))
    b.save(tmp_path / "orig")
    x = digits_sets[1].tensors[0][:20]
    loaded = Ensemble(Bundle.load(tmp_path / "orig"))
    assert torch.equal(loaded.predict(x), model(x).argmax(1))
    with pytest.raises(ServeError, match="not a classifier"):
        Bundle.from_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), (1, 8, 8))


def _member_file(path):
    return next((path / "members").iterdir())


@pytest.mark.parametrize("damage, message", [
    (lambda p: _member_file(p).write_bytes(_member_file(p).read_bytes()[:-100]), r"g\d\.pt: \d+ bytes, bundle.json says \d+ \(truncated\?\)"),
    (lambda p: _member_file(p).write_bytes(b"x" * _member_file(p).stat().st_size), "sha256 differs"),
    (lambda p: _member_file(p).unlink(), r"g\d\.pt: missing"),
    (lambda p: (p / "bundle.json").write_text((p / "bundle.json").read_text()[:200]), "bundle.json: not valid JSON"),
    (lambda p: (p / "bundle.json").unlink(), "bundle.json: missing; not a weft bundle"),
    (lambda p: shutil.rmtree(p), "no such bundle folder"),
    (lambda p: _edit(p, lambda m: m.update(version=7)), "field 'version' is 7, this weft reads 1"),
    (lambda p: _edit(p, lambda m: m["members"][1].update(temperature=-1)), r"members\[1\]: field 'temperature' is -1"),
    (lambda p: _edit(p, lambda m: m["members"][0].pop("sha256")), r"members\[0\]: field 'sha256' is missing"),
    (lambda p: _edit(p, lambda m: m["members"][0].update(classes=[0])), "do not cover 0..9 exactly once"),
])
def test_damaged_bundles_are_named(copy, damage, message):
    damage(copy)
    with pytest.raises(BundleError, match=message):
        Bundle.load(copy)
    if "cover" not in message:  # verify reads no pickle but catches the same damage
        with pytest.raises(BundleError, match=message):
            verify(copy)


def _edit(path, change):
    meta = json.loads((path / "bundle.json").read_text())
    change(meta)
    (path / "bundle.json").write_text(json.dumps(meta))


class Unpicklable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.fn = lambda x: x  # lambdas cannot be pickled

    def forward(self, x):
        return self.fc(x)


def test_save_is_atomic(copy, tmp_path):
    before = {f.name: f.read_bytes() for f in (copy / "members").iterdir()}
    b = Bundle.load(copy)
    b.members[0].module = Unpicklable()
    with pytest.raises(Exception, match="pickle|lambda"):
        b.save(copy)
    assert {f.name: f.read_bytes() for f in (copy / "members").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folder left
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a weft bundle"):
        Bundle.load(copy).save(plain)
    assert (plain / "notes.txt").read_text() == "mine"
    Bundle.load(copy).save(copy)  # replacing a bundle with itself works
    verify(copy)
