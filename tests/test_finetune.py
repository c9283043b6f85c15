"""model.pretrained and model.freeze: safe loading by name and shape, freezing by prefix."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from cifarlab.errors import CifarlabError, ParamsError
from cifarlab.models import build_model, create_model, freeze, load_pretrained
from cifarlab.params import parse_params


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _saved(tmp_path, obj, name="weights.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_load_skips_the_other_head_and_reports(tmp_path):
    source = build_model("tutorial.net", num_classes=100)  # another dataset's head
    path = _saved(tmp_path, source.state_dict())
    target = build_model("tutorial.net")
    old_head = target.fc3.weight.clone()
    report = load_pretrained(target, path)
    assert len(report.loaded) == 8 and "conv1.weight" in report.loaded
    assert [name for name, _, _ in report.skipped] == ["fc3.weight", "fc3.bias"]
    assert report.skipped[0][1:] == ((100, 84), (10, 84))
    assert report.missing == []  # fc3 is in the file, with another shape: skipped, not missing
    assert report.unexpected == []
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.equal(target.fc2.bias, source.fc2.bias)
    assert torch.equal(target.fc3.weight, old_head)
    text = report.summary()
    assert str(path) in text and "loaded 8 tensors" in text and "skipped 2" in text
    assert "fc3.weight [100, 84] vs [10, 84]" in text


def test_checkpoint_dict_missing_and_unexpected(tmp_path):
    source = build_model("tutorial.net")
    state = source.state_dict()
    del state["fc1.bias"]
    state["extra.weight"] = torch.zeros(3)
    path = _saved(tmp_path, {"model": state, "epoch": 4, "optimizer": {"lr": 0.1}}, "ckpt.pt")
    target = build_model("tutorial.net")
    report = load_pretrained(target, path)
    assert report.missing == ["fc1.bias"]
    assert report.unexpected == ["extra.weight"]
    assert len(report.loaded) == 9
    assert torch.equal(target.fc3.weight, source.fc3.weight)


def test_wrapper_prefixes_are_stripped(tmp_path):
    source = build_model("tutorial.net")
    ddp = {f"module.{k}": v for k, v in source.state_dict().items()}
    target = build_model("tutorial.net")
    report = load_pretrained(target, _saved(tmp_path, ddp))
    assert len(report.loaded) == 10 and torch.equal(target.conv2.weight, source.conv2.weight)


def test_loads_across_spellings_by_name(tmp_path):
    """Net and net_ordereddict share names, so one's weights load into the other."""
    source = build_model("tutorial.net")
    target = build_model("tutorial.net_ordereddict")
    report = load_pretrained(target, _saved(tmp_path, source.state_dict()))
    assert len(report.loaded) == 10
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(source(x), target(x))


def test_freeze_by_prefix(tmp_path):
    model = build_model("tutorial.net")
    frozen = freeze(model, ["conv", "fc1"])
    assert frozen == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name in frozen), name


def test_freeze_prefix_matching_nothing_lists_top_level_names():
    model = build_model("cifarlab.resnet8")
    with pytest.raises(ParamsError) as err:
        freeze(model, ["stem", "stage4"])
    assert err.value.key == "model.freeze.1" and err.value.value == "stage4"
    assert set(err.value.choices) == {"stem", "stage1", "stage2", "stage3", "pool", "fc"}
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on error


class Hostile:
    """Unpickling this runs a shell command, unless the loader refuses it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"model": Hostile(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"conv1.weight": Hostile(marker)}, protocol=2))
    with pytest.raises(CifarlabError) as err:
        load_pretrained(build_model("tutorial.net"), path)
    assert not marker.exists(), "the hostile pickle ran"
    assert str(path) in str(err.value)
    assert "weights_only" in str(err.value) and "nothing in it was run" in str(err.value)


def test_missing_file_is_a_params_error(tmp_path):
    with pytest.raises(ParamsError) as err:
        load_pretrained(build_model("tutorial.net"), tmp_path / "nope.pt")
    assert err.value.key == "model.pretrained" and "nope.pt" in str(err.value)


@pytest.mark.parametrize(
    "content, words",
    [
        ([1, 2, 3], "not a state dict: holds list"),
        ({"epoch": 3, "lr": 0.1}, "not named tensors"),
        ({}, "(empty)"),
        (torch.zeros(3), "holds Tensor"),
        ({"model": {}}, "not a state dict"),
    ],
)
def test_files_that_are_not_state_dicts(tmp_path, content, words):
    path = _saved(tmp_path, content)
    with pytest.raises(CifarlabError) as err:
        load_pretrained(build_model("tutorial.net"), path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_text_and_truncated_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    good = _saved(tmp_path, build_model("tutorial.net").state_dict())
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    for path in (text, truncated):
        with pytest.raises(CifarlabError) as err:
            load_pretrained(build_model("tutorial.net"), path)
        assert str(path) in str(err.value) and "not a PyTorch weights file" in str(err.value)


def test_weights_of_another_architecture_match_nothing(tmp_path):
    path = _saved(tmp_path, build_model("cifarlab.resnet8", {"width": 8}).state_dict())
    with pytest.raises(CifarlabError) as err:
        load_pretrained(build_model("tutorial.net"), path)
    assert "none of its" in str(err.value) and str(path) in str(err.value)


def test_create_model_finetune_recipe(tmp_path):
    """The tutorial's recipe: load a 100-class net, keep all but the head, freeze the convs."""
    source = build_model("tutorial.net", num_classes=100)
    path = _saved(tmp_path, {"model": source.state_dict()})
    lines: list[str] = []
    params = parse_params(
        {"model": {"name": "tutorial.net", "pretrained": str(path), "freeze": ["conv1", "conv2"]}}
    ).model
    model = create_model(params, log=lines.append)
    assert any(line.startswith(f"pretrained: {path}: loaded 8 tensors; skipped 2") for line in lines)
    assert any(line.startswith("freeze: 4 tensors") for line in lines)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert not model.conv2.bias.requires_grad and model.fc3.weight.requires_grad
