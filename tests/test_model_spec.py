"""The model-spec contract: files and modules, clear errors, sibling imports, absolute specs."""

import pytest
import torch.nn as nn

from weft.model_spec import SpecError, extra, fingerprint, load_model, resolve


def _file(tmp_path, text, name="m.py"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_file_spec_with_attr_and_extras(tmp_path):
    p = _file(tmp_path, "import torch.nn as nn\nnet = nn.Linear(2, 3)\nloss_fn = 'L'\n")
    assert isinstance(load_model(f"{p}:net"), nn.Linear)
    assert extra(f"{p}:net", "loss_fn") == "L" and extra(str(p), "dataset") is None


def test_module_spec():
    m = load_model("torch.nn:Identity")
    assert isinstance(m, nn.Identity)


def test_missing_attribute_names_the_file_not_an_internal_module(tmp_path):
    p = _file(tmp_path, "import torch.nn as nn\nclass Net(nn.Module):\n    pass\n")
    with pytest.raises(SpecError) as info:
        load_model(str(p))
    msg = str(info.value)
    assert str(p) in msg and "defines no 'model'" in msg and "Net" in msg
    assert "weft_user" not in msg


def test_constructor_that_raises_is_a_clear_error(tmp_path):
    p = _file(tmp_path, "def model():\n    raise RuntimeError('out of cheese')\n")
    with pytest.raises(SpecError, match=r"calling model\(\) failed: RuntimeError: out of cheese"):
        load_model(str(p))


def test_import_error_and_missing_file(tmp_path):
    p = _file(tmp_path, "import no_such_module_here\n")
    with pytest.raises(SpecError, match="importing .* failed: ModuleNotFoundError"):
        load_model(str(p))
    with pytest.raises(SpecError, match="does not exist"):
        load_model(str(tmp_path / "none.py"))
    with pytest.raises(SpecError, match="cannot import no_such_pkg"):
        load_model("no_such_pkg.mod:model")


def test_a_model_file_can_import_its_neighbour(tmp_path):
    _file(tmp_path, "import torch.nn as nn\nWIDTH = 7\n", "helpers_for_weft_test.py")
    p = _file(tmp_path, "import torch.nn as nn\nfrom helpers_for_weft_test import WIDTH\n"
                        "def model():\n    return nn.Linear(WIDTH, 1)\n")
    assert load_model(str(p)).in_features == 7


def test_resolve_and_fingerprint(tmp_path, monkeypatch):
    p = _file(tmp_path, "x = 1\n")
    monkeypatch.chdir(tmp_path)
    assert resolve("m.py") == f"{p.resolve()}:model"
    assert resolve("m.py:net") == f"{p.resolve()}:net"
    assert resolve("torch.nn:Identity") == "torch.nn:Identity"
    before = fingerprint("m.py")
    p.write_text("x = 2\n")
    assert fingerprint("m.py") != before and fingerprint("torch.nn:Identity") is None


def test_input_maker_takes_example_input_else_example_batchs_inputs(tmp_path):
    import torch

    from weft.model_spec import input_maker

    both = tmp_path / "both.py"
    both.write_text("import torch\nmodel = torch.nn.Linear(3, 2)\n"
                    "def example_input(b): return torch.zeros(b, 3)\n"
                    "def example_batch(b): return torch.ones(b, 3), torch.zeros(b)\n")
    assert torch.equal(input_maker(str(both))(4), torch.zeros(4, 3))
    xy = tmp_path / "xy.py"
    xy.write_text("import torch\nmodel = torch.nn.Linear(3, 2)\n"
                  "def example_batch(b): return torch.ones(b, 3), torch.zeros(b)\n")
    assert torch.equal(input_maker(str(xy))(5), torch.ones(5, 3))
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nmodel = torch.nn.Linear(3, 2)\n"
                   "def example_batch(b): return torch.ones(b, 3)\n")
    with pytest.raises(SpecError, match=r"example_batch\(2\) must return \(inputs, labels\)"):
        input_maker(str(bad))(2)
    none = tmp_path / "none.py"
    none.write_text("import torch\nmodel = torch.nn.Linear(3, 2)\n")
    assert input_maker(str(none)) is None
