"""The training loop's pieces on a tiny data tree, without DVC."""

import json
import os
from pathlib import Path

import pytest
import torch

from cifar_factory import CLASSES, png_bomb
from cifarlab.engine.checkpoint import CheckpointDir, fingerprint
from cifarlab.engine.loop import NonFiniteLoss, epoch_permutation
from cifarlab.errors import DataError
from cifarlab.params import parse_params
from cifarlab.pipeline.evaluate import classification_report
from cifarlab.pipeline.train import fit
from dvc_project import set_dotted
from tiny_tree import train_paths

# `tree`: conftest.py's tiny data tree, 6 images per class
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**over):
    raw = {
        "model": {"name": "tutorial.net"},
        "train": {"epochs": 2, "batch_size": 8},
        "runtime": {"threads": 1},
        "scheduler": {"name": "none"},
        "optimizer": {"name": "SGD", "lr": 0.01, "SGD": {"momentum": 0.9}},
        "augment": {
            "train": [{"RandomCrop": {"size": 32, "padding": 4}}, {"Normalize": {}}],
            "eval": [{"Normalize": {}}],
        },
    }
    for dotted, value in over.items():
        set_dotted(raw, dotted, value)
    return parse_params(raw)


def run(tree, tmp_path, params, logs=None):
    # fit reads images relative to the tree: index paths are repo-relative
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        return fit(params, train_paths(tree, tmp_path), log=(logs.append if logs is not None else (lambda *_: None)))
    finally:
        os.chdir(cwd)


def test_distributed_shares_are_disjoint_and_cover_everything():
    n = 103
    a, b = epoch_permutation(n, 0, 3, 0, 2), epoch_permutation(n, 0, 3, 1, 2)
    assert len(a) == len(b) == 52
    assert set(a.tolist()) | set(b.tolist()) == set(range(n))
    assert not torch.equal(epoch_permutation(n, 0, 3), epoch_permutation(n, 0, 4))
    assert torch.equal(epoch_permutation(n, 0, 3), epoch_permutation(n, 0, 3))


def test_fit_writes_everything_and_is_reproducible(tree, tmp_path):
    r1 = run(tree, tmp_path / "a", tiny())
    r2 = run(tree, tmp_path / "b", tiny())
    assert r1["metrics"] == r2["metrics"]
    assert [h["train_loss"] for h in r1["history"]] == [h["train_loss"] for h in r2["history"]]
    r3 = run(tree, tmp_path / "c", tiny(seed=1))
    assert [h["train_loss"] for h in r3["history"]] != [h["train_loss"] for h in r1["history"]]
    out = tmp_path / "a"
    assert {p.name for p in (out / "models").iterdir()} == {"model.pt", "last.pt"}
    metrics = json.loads((out / "reports/metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["complete"] is True
    assert not list((out / "ckpt").glob("*/checkpoint.pt"))


def test_tensorboard_run_has_a_histogram_of_every_weight_and_gradient_per_epoch(tree, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifarlab.engine.tensorboard import HISTOGRAM_BINS
    from cifarlab.models.tutorial import Net

    run(tree, tmp_path, tiny())
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    acc.Reload()
    sizes = {name: p.numel() for name, p in Net().named_parameters()}
    wanted = {f"{kind}/{name}" for kind in ("weights", "gradients") for name in sizes}
    assert set(acc.Tags()["histograms"]) == wanted
    for tag in wanted:
        events = acc.Histograms(tag)
        assert [e.step for e in events] == [1, 2]
        for e in events:
            h = e.histogram_value
            assert h.num == sizes[tag.split("/", 1)[1]]
            assert 1 <= len(h.bucket) <= HISTOGRAM_BINS + 1 and sum(h.bucket) == h.num
            assert h.min <= h.max


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tree, tmp_path):
    params = tiny(**{"optimizer.lr": 1e12, "train.epochs": 3, "scheduler.name": "none"})
    with pytest.raises(NonFiniteLoss, match=r"epoch \d+, step \d+.*lower learning rate"):
        run(tree, tmp_path, params)
    assert not (tmp_path / "models").exists()


def test_bad_image_stops_before_training(tree, tmp_path):
    from cifarlab.data.index import read_index

    items = read_index(tree / "data/index/valid.txt")
    victim = tree / items[2][0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[:40])  # a new file: the hard link to unpack's copy stays intact
    try:
        logs = []
        with pytest.raises(DataError, match=r"valid.txt:3.*truncated"):
            run(tree, tmp_path, tiny(), logs)
        assert not any(line.startswith("epoch") for line in logs)
    finally:
        victim.unlink()
        victim.write_bytes(data)


@pytest.mark.parametrize(
    "over, expect",
    [
        ({"augment.train": [{"ColorJitter": {"brightness": 0.2}}, {"Normalize": {}}]}, "ColorJitter"),
        ({"augment.backend": "pil"}, None),
        ({"augment.eval": [{"Resize": {"size": 36}}, {"TenCrop": {"size": 32}}, {"Normalize": {}}]}, None),
        ({"optimizer.name": "LBFGS", "optimizer.lr": 0.1, "train.epochs": 1, "scheduler.name": "none"}, None),
    ],
)
def test_other_paths_train(tree, tmp_path, over, expect):
    logs = []
    result = run(tree, tmp_path, tiny(**over), logs)
    assert len(result["history"]) >= 1 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result["history"])
    if expect:
        assert any(expect in line and "not covered" in line for line in logs), logs


def test_classification_report_matches_hand_counts():
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    targets = torch.tensor([0, 1, 0, 2, 2])
    report, cm = classification_report(logits, targets, ["a", "b", "c"])
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert report["accuracy"] == 0.6
    assert report["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["b"]["precision"] == 0.5 and report["per_class"]["b"]["recall"] == 1.0
    assert report["per_class"]["c"]["precision"] == 1.0 and report["per_class"]["c"]["recall"] == 0.5
    expected_loss = torch.nn.functional.cross_entropy(logits.double(), targets).item()
    assert report["loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_code_folders_are_the_two_packages_only():
    """The fingerprint hashes cifarlab and the user package, never the folder around them
    (for an installed copy that would be all of site-packages)."""
    from cifarlab.register import code_folders

    assert [p.name for p in code_folders()] == ["cifarlab", "cifarlab_user"]


def test_fingerprint_and_pruning(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n")
    f1 = fingerprint({"lr": 0.1}, "data", [code])
    assert f1 == fingerprint({"lr": 0.1}, "data", [code])
    assert f1 != fingerprint({"lr": 0.2}, "data", [code]) != fingerprint({"lr": 0.1}, "other", [code])
    (code / "a.py").write_text("x = 2\n")
    assert f1 != fingerprint({"lr": 0.1}, "data", [code])
    dirs = [CheckpointDir(tmp_path / "ck", f"run{i}") for i in range(6)]
    for i, d in enumerate(dirs):
        d.save({"i": torch.tensor(i)})
        os.utime(d.dir, (1000 + i, 1000 + i))
    dirs[5].finish()
    left = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert left == ["run2", "run3", "run4"]


def test_input_size_mismatch_is_caught_before_training(tree, tmp_path):
    from cifarlab.errors import ParamsError

    logs = []
    with pytest.raises(ParamsError, match=r"augment.eval: produces inputs of shape \(3, 28, 28\).*tutorial.net"):
        run(tree, tmp_path, tiny(**{"augment.eval": [{"TenCrop": {"size": 28}}, {"Normalize": {}}]}), logs)
    assert not any(line.startswith("epoch") for line in logs)


def test_predict_any_picture(tree, tmp_path):
    import numpy as np
    from PIL import Image

    from cifarlab.cli import main as cli
    from cifarlab.errors import CifarlabError
    from cifarlab.predict import predict_files

    run(tree, tmp_path, tiny(**{"train.epochs": 1}))
    model = tmp_path / "models/model.pt"
    big = tmp_path / "big.jpg"
    Image.fromarray((np.random.default_rng(0).random((300, 500, 3)) * 255).astype("uint8")).save(big)
    gray = tmp_path / "gray.png"
    Image.new("L", (40, 20), 128).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (10, 90), (1, 2, 3, 4)).save(rgba)
    results = predict_files(model, [big, gray, rgba], top_k=3)
    assert [Path(r[0]).name for r in results] == ["big.jpg", "gray.png", "rgba.png"]
    for _, top in results:
        assert len(top) == 3 and all(c in CLASSES for c, _ in top)
        probs = [p for _, p in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    with pytest.raises(CifarlabError, match=r"bad.png: not a readable image"):
        predict_files(model, [big, bad])
    bomb = tmp_path / "bomb.png"
    png_bomb(bomb)
    with pytest.raises(CifarlabError, match=r"bomb.png: refused, far too many pixels"):
        predict_files(model, [bomb])
    assert cli(["predict", str(big), "--model", str(model), "--top-k", "11"]) == 1
    assert cli(["predict", str(gray), "--model", str(tmp_path / "missing.pt")]) == 1


def test_model_file_is_loaded_safely(tmp_path):
    import pickle

    from cifarlab.artifact import load_model
    from cifarlab.errors import CifarlabError

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "model.pt"
    hostile.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CifarlabError, match="not a cifarlab model file"):
        load_model(hostile)
    assert not (tmp_path / "pwned").exists()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CifarlabError, match="format"):
        load_model(tmp_path / "plain.pt")


def _runtime(channels_last=False):
    from cifarlab.engine.device import Runtime

    return Runtime(torch.device("cpu"), None, channels_last)


@pytest.mark.parametrize("chunk", [1, 7, 16, 1024])
def test_tensor_source_chunks_keep_batch_boundaries_and_cover_every_image(chunk):
    from cifarlab.engine.loop import TensorSource

    n, bs = 53, 8
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    labels = torch.arange(n)
    src = TensorSource(images, labels, lambda x, g: x.float(), bs, seed=3, chunk=chunk)
    batches = list(src.batches(2))
    assert len(batches) == len(src) == 7
    assert [len(y) for _, y in batches] == [8] * 6 + [5]
    order = torch.cat([y for _, y in batches])
    assert torch.equal(order, epoch_permutation(n, 3, 2))  # the same order whatever the chunk
    for x, y in batches:  # images travel with their labels
        assert torch.equal(x[:, 0, 0, 0].long(), y)


def test_tensor_source_hands_out_channels_last_batches_when_asked():
    from cifarlab.augment.batch import plan
    from cifarlab.engine.loop import TensorSource

    aug = plan(
        [{"RandomCrop": {"size": 8, "padding": 2}}, {"Normalize": {}}],
        {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
        "augment.train",
        image_size=(8, 8),
    )
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    plain = TensorSource(images, torch.zeros(20, dtype=torch.long), aug, 6, seed=0)
    cl = TensorSource(images, torch.zeros(20, dtype=torch.long), aug, 6, seed=0, channels_last=True)
    for (x, _), (xc, _) in zip(plain.batches(0), cl.batches(0)):
        assert xc.is_contiguous(memory_format=torch.channels_last) and not xc.is_contiguous()
        assert x.is_contiguous()
        torch.testing.assert_close(xc, x, rtol=0, atol=0)  # the same numbers, another layout


def test_tensor_source_keeps_the_batches_only_when_every_epoch_gives_the_same():
    from cifarlab.augment.batch import plan
    from cifarlab.engine.loop import TensorSource

    stats = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(20)
    fixed = plan([{"Normalize": {}}], stats, "augment.eval", image_size=(8, 8))
    random = plan(
        [{"RandomCrop": {"size": 8, "padding": 2}}, {"Normalize": {}}], stats, "augment.train", image_size=(8, 8)
    )
    kept = TensorSource(images, labels, fixed, 6, seed=0, shuffle=False, keep=True)
    first, second = list(kept.batches(0)), list(kept.batches(1))
    assert all(a is c and b is d for (a, b), (c, d) in zip(first, second))  # made once
    plain = TensorSource(images, labels, fixed, 6, seed=0, shuffle=False)
    for (x, y), (xk, yk) in zip(plain.batches(0), first):
        torch.testing.assert_close(xk, x, rtol=0, atol=0)
        assert torch.equal(yk, y)
    # a random list or a shuffled order is made afresh every epoch, keep or not
    for src in (
        TensorSource(images, labels, random, 6, seed=0, shuffle=False, keep=True),
        TensorSource(images, labels, fixed, 6, seed=0, shuffle=True, keep=True),
    ):
        a, b = torch.cat([x for x, _ in src.batches(0)]), torch.cat([x for x, _ in src.batches(1)])
        assert not torch.equal(a, b)


class _Fixed(torch.nn.Module):
    """Logits read from a table by the sample's id (pixel value), so the epoch's sums are known."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()] + self.w


def test_train_one_epoch_reports_the_exact_mean_loss_and_accuracy():
    from cifarlab.engine.loop import TensorSource, train_one_epoch
    from cifarlab.optim.schedulers import Scheduler

    n = 21
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n, 4, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    model = _Fixed(table)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    src = TensorSource(images, labels, lambda x, g: x.float(), 5, seed=1)
    steps = []
    res = train_one_epoch(
        model,
        torch.nn.CrossEntropyLoss(),
        opt,
        src,
        epoch=0,
        runtime=_runtime(),
        scheduler=Scheduler("none", None, opt),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        on_step=lambda step, images, loss: steps.append((step, images, float(loss))),
    )
    assert [(s, i) for s, i, _ in steps] == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 1)]  # every step, its batch size
    expect_loss = torch.nn.functional.cross_entropy(table, labels).item()
    expect_acc = (table.argmax(1) == labels).float().mean().item()
    assert res["images"] == n
    assert res["loss"] == pytest.approx(expect_loss, rel=1e-6)
    assert res["acc"] == pytest.approx(expect_acc)


def test_train_one_epoch_names_the_first_non_finite_step():
    from cifarlab.engine.loop import TensorSource, train_one_epoch
    from cifarlab.optim.schedulers import Scheduler

    n = 30
    table = torch.zeros(n, 3)
    table[17, 0] = float("nan")  # the sample of id 17 poisons the batch it lands in
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    src = TensorSource(images, torch.zeros(n, dtype=torch.long), lambda x, g: x.float(), 4, seed=5)
    step = next(i for i, (x, _) in enumerate(src.batches(0)) if 17 in x[:, 0, 0, 0].long().tolist()) + 1
    assert step > 1  # not trivially the first
    model = _Fixed(table)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(NonFiniteLoss, match=rf"epoch 1, step {step};"):
        train_one_epoch(
            model,
            torch.nn.CrossEntropyLoss(),
            opt,
            src,
            epoch=0,
            runtime=_runtime(),
            scheduler=Scheduler("none", None, opt),
            scaler=torch.amp.GradScaler("cpu", enabled=False),
        )


def _grads_of(model, x, y):
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode, limit", [("norm", 0.05), ("value", 0.01), ("norm", 1e6)])
def test_clip_gradients_by_norm_and_value(mode, limit):
    from cifarlab.engine.loop import clip_gradients
    from cifarlab.params import ClipParams

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    raw = _grads_of(model, x, y)
    true_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in raw]))
    out = clip_gradients(model, ClipParams(mode=mode, max=limit))
    assert out[0].item() == pytest.approx(true_norm.item(), rel=1e-5)  # the norm before clipping
    after = [p.grad for p in model.parameters()]
    if mode == "norm":
        scale = min(1.0, limit / true_norm.item())
        for g, a in zip(raw, after):
            torch.testing.assert_close(a, g * scale, rtol=1e-5, atol=1e-7)
        assert bool(out[1]) == (true_norm.item() > limit)
    else:
        for g, a in zip(raw, after):
            torch.testing.assert_close(a, g.clamp(-limit, limit))
        assert bool(out[1]) == any(g.abs().max() > limit for g in raw)


def test_clipping_happens_after_unscaling_and_is_reported():
    """With a GradScaler (fp16 autocast's) the clip must see the true gradients: scaled ones
    are 2**12 times larger and would always be clipped, so the step would be wrong."""
    from cifarlab.engine.loop import TensorSource, train_one_epoch
    from cifarlab.optim.schedulers import Scheduler
    from cifarlab.params import ClipParams

    torch.manual_seed(0)
    n = 8
    images = torch.randint(0, 255, (n, 3, 2, 2), dtype=torch.uint8)
    labels = torch.arange(n) % 3
    src = TensorSource(images, labels, lambda x, g: x.float() / 255, n, seed=0, shuffle=False)
    x, y = next(iter(src.batches(0)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    before = [p.detach().clone() for p in model.parameters()]
    raw = _grads_of(model, x, y)
    true_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in raw])).item()
    limit = true_norm / 4  # clipping bites: the step is a quarter of the plain one
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=True)
    res = train_one_epoch(
        model,
        torch.nn.CrossEntropyLoss(),
        opt,
        src,
        epoch=0,
        runtime=_runtime(),
        scheduler=Scheduler("none", None, opt),
        scaler=scaler,
        clip=ClipParams(mode="norm", max=limit),
    )
    assert res["grad_norm"] == pytest.approx(true_norm, rel=1e-4)
    assert res["grad_norm_max"] == pytest.approx(true_norm, rel=1e-4) and res["clipped"] == 1.0
    for p, b, g in zip(model.parameters(), before, raw):
        torch.testing.assert_close(p.detach(), b - g / 4, rtol=1e-4, atol=1e-6)


def test_fit_logs_the_gradient_norm_when_clipping(tree, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(tree, tmp_path, tiny(**{"train.clip": {"mode": "norm", "max": 1.0}, "train.histograms": False}))
    rows = result["history"]
    assert all(r["grad_norm"] > 0 and r["grad_norm_max"] >= r["grad_norm"] and 0 <= r["clipped"] <= 1 for r in rows)
    header = (tmp_path / "reports/history.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm", "grad_norm_max", "clipped"} <= set(header)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("gradients/grad_norm")] == [1, 2]
    plain = run(tree, tmp_path / "plain", tiny(**{"train.histograms": False}))
    assert "grad_norm" not in plain["history"][0]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("tutorial.modulelist_net", {"depth": 3, "width": 32}),
        ("tutorial.moduledict_net", {"choice": "pool", "act": "prelu"}),
        ("tutorial.beginner_net", None),
        ("tutorial.net", {"activation": "GELU"}),
    ],
)
def test_model_chapter_variants_train_an_epoch(tree, tmp_path, name, kwargs):
    over = {"model.name": name, "train.epochs": 1, "train.histograms": False}
    if kwargs:
        over[f"model.{name}"] = kwargs
    result = run(tree, tmp_path, tiny(**over))
    assert len(result["history"]) == 1 and result["history"][0]["train_loss"] > 0
    assert (tmp_path / "models/model.pt").is_file()
