"""Resource limits: the data stages' memory stays flat as the data grows, and a training run
too large for the memory is refused by an estimate before it starts (engine/memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cifar_factory import real_archive_for_test
from cifarlab.engine import memory
from cifarlab.engine.memory import check_training_memory, cpu_available_bytes, estimate, estimate_training_bytes
from cifarlab.errors import ParamsError
from cifarlab.models.registry import build_model, create_model
from cifarlab.params import load_params
from dvc_project import stage_cmd

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent
GiB = 2**30


# ------------------------------------------------------------------ the estimate


def test_a_huge_batch_for_a_vit_fails_with_a_clear_message():
    model = build_model("torchvision.vit_b_16")
    with pytest.raises(ParamsError) as err:
        check_training_memory(model, 100_000, "AdamW", "cpu", available_bytes=64 * GiB)
    msg = str(err.value)
    assert err.value.key == "train.batch_size" and err.value.value == 100_000
    assert msg.startswith(
        "params.yaml: train.batch_size: training this model with batch size 100000 and AdamW needs about "
    )
    assert "64.00 GiB available (given)" in msg and "allows 90% of it" in msg
    assert "per image" in msg and "lower train.batch_size to" in msg


def test_the_machines_own_memory_is_used_when_none_is_given():
    with pytest.raises(ParamsError, match=r"available \((MemAvailable in /proc/meminfo|available system memory)"):
        check_training_memory(build_model("torchvision.vit_b_16"), 10**7, "AdamW", "cpu")


def test_the_default_config_passes():
    params = load_params(REPO / "params.yaml")
    model = create_model(params.model, log=lambda *_: None)
    est = check_training_memory(model, params.train.batch_size, params.optimizer.name, "cpu")
    assert est.total < 1 * GiB  # resnet8 at batch 128: about a third of a GiB with the margins


def test_the_boundary_is_ninety_percent_of_what_is_available():
    model = build_model("cifarlab.resnet8")
    need = estimate_training_bytes(model, 256, optimizer_name="SGD")
    check_training_memory(model, 256, "SGD", "cpu", available_bytes=int(need / 0.9) + 1)
    with pytest.raises(ParamsError) as err:
        check_training_memory(model, 256, "SGD", "cpu", available_bytes=int(need / 0.9) - 1)
    fits = int(str(err.value).split("lower train.batch_size to ")[1].split()[0])
    assert fits == 255  # the largest batch that fits is named, and it does fit
    check_training_memory(model, fits, "SGD", "cpu", available_bytes=int(need / 0.9) - 1)


def test_a_model_that_cannot_fit_even_one_image_says_so():
    with pytest.raises(ParamsError, match="even a batch of 1 does not fit: choose a smaller model"):
        check_training_memory(build_model("torchvision.resnet18"), 8, "Adam", "cpu", available_bytes=100 * 2**20)


def test_extra_bytes_and_processes_count_against_the_budget(monkeypatch):
    model = build_model("tutorial.net")
    need = estimate_training_bytes(model, 64, optimizer_name="SGD")
    room = int(need / 0.9) + 2**20
    check_training_memory(model, 64, "SGD", "cpu", available_bytes=room)
    with pytest.raises(ParamsError, match=r"plus 4.0 MiB of data held there"):
        check_training_memory(model, 64, "SGD", "cpu", available_bytes=room, extra_bytes=4 * 2**20)
    monkeypatch.setattr(memory, "cpu_available_bytes", lambda: room)
    check_training_memory(model, 64, "SGD", "cpu")
    with pytest.raises(ParamsError, match="shared by 2 processes"):
        check_training_memory(model, 64, "SGD", "cpu", processes=2)


def test_parts_of_the_estimate():
    model = build_model("cifarlab.resnet8")
    sgd, adam = estimate(model, 64, optimizer_name="SGD"), estimate(model, 64, optimizer_name="Adam")
    params = sum(p.numel() * 4 for p in model.parameters())
    assert sgd.gradients == params and sgd.optimizer_state == params and adam.optimizer_state == 2 * params
    assert estimate(model, 64, optimizer_name="LBFGS").optimizer_state > 100 * params
    # activations grow linearly with the batch; the rest does not
    e1, e2 = estimate(model, 100, optimizer_name="SGD"), estimate(model, 200, optimizer_name="SGD")
    assert e2.total - e1.total == pytest.approx(100 * e1.per_sample_activations * e1.safety, rel=1e-6)
    # mixed precision keeps fewer bytes per image
    assert estimate(model, 64, amp_dtype=torch.bfloat16).per_sample_activations < sgd.per_sample_activations
    # frozen parameters have no gradients and no optimizer state
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc.weight.requires_grad_(True)
    frozen = estimate(model, 64, optimizer_name="Adam")
    assert frozen.gradients == model.fc.weight.numel() * 4 and frozen.parameters == sgd.parameters


def test_the_meta_pass_measures_what_a_real_forward_pass_saves():
    model = build_model("cifarlab.resnet8")
    meta = memory._saved_for_backward(model, 4, (3, 32, 32), "meta")
    real = memory._saved_for_backward(model, 4, (3, 32, 32), "cpu")
    assert meta == pytest.approx(real, rel=0.05)


def test_a_forward_pass_that_needs_values_falls_back_to_a_real_batch():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = self.conv(x).relu()
            if x.mean().item() > 1e9:  # .item() has no value on the meta device
                x = x * 2
            return self.fc(x.mean((2, 3)))

    est = estimate(DataDependent(), 32, optimizer_name="SGD")
    assert est.per_sample_activations >= 8 * 30 * 30 * 4  # at least the conv's output, per image


def test_cuda_memory_comes_from_mem_get_info(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * GiB, 80 * GiB))
    free, where = memory.available_bytes_on("cuda:0")
    assert free == 3 * GiB and "mem_get_info" in where
    with pytest.raises(ParamsError, match=r"cuda:0 has 3.00 GiB available \(free on cuda:0"):
        check_training_memory(build_model("torchvision.vit_b_16"), 512, "AdamW", "cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_on_a_real_gpu_the_estimate_bounds_the_measured_peak():
    device = torch.device("cuda")
    model = build_model("torchvision.resnet18").to(device)
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(256, 3, 32, 32, device=device), torch.randint(0, 10, (256,), device=device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    peak = torch.cuda.max_memory_allocated() - base + sum(p.numel() * 4 for p in model.parameters())
    assert peak <= estimate_training_bytes(model, 256, optimizer_name="Adam")


def test_a_cgroup_limit_lowers_what_is_available(monkeypatch):
    values = {"/sys/fs/cgroup/memory.max": 4 * GiB, "/sys/fs/cgroup/memory.current": 1 * GiB}
    monkeypatch.setattr(memory, "_read_int", lambda path: values.get(path))
    assert cpu_available_bytes() <= 3 * GiB


# ------------------------------------------------------------------ the data stages' peak memory


# Measures from a small parent: Linux carries a process's peak RSS across fork and exec, so a
# stage started straight from pytest (torch loaded, ~900 MiB) would report pytest's peak.
_WAIT4 = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def _stage(cwd: Path, stage: str, params: Path, env: dict) -> int:
    """Run a stage's command from dvc.yaml; return its peak RSS in bytes (wait4: its pool workers too)."""
    cmd = [*stage_cmd(stage), "--params", str(params)]
    res = subprocess.run([sys.executable, "-c", _WAIT4, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    code, maxrss = map(int, res.stdout.split())
    assert code == 0, res.stderr
    return maxrss * 1024  # kilobytes on Linux


@pytest.mark.slow
def test_data_stage_memory_stays_flat_from_10k_to_60k_images(tmp_path):
    peaks = {}
    for n, full, batches in (
        (10_000, False, ["test_batch"]),
        (60_000, True, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
    ):
        root = tmp_path / str(n)
        shutil_copy(REPO, root)
        env = dict(os.environ, PYTHONPATH=str(root / "src"))
        real_archive_for_test(root / "data/cifar-10-python.tar.gz", full)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["data"].update(md5=None, batches=batches)
        params = root / "params.yaml"
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        peaks[n] = {stage: _stage(root, stage, params, env) for stage in ("unpack", "split", "index", "stats")}
        assert len((root / "data/index/train.txt").read_text().splitlines()) == n * 8 // 10
    print("peak RSS (MiB):", {n: {s: round(v / 2**20) for s, v in p.items()} for n, p in peaks.items()})
    for stage in ("unpack", "stats"):
        assert peaks[60_000][stage] < 1.5 * peaks[10_000][stage], (stage, peaks)


def shutil_copy(repo: Path, root: Path) -> None:
    import shutil

    for rel in ("stages", "src"):
        shutil.copytree(repo / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data").mkdir(parents=True)


# ------------------------------------------------------------------ wired into training


def test_training_too_big_for_the_memory_stops_before_the_first_step(tmp_path, monkeypatch):
    from cifarlab.params import parse_params
    from cifarlab.pipeline.train import fit
    from tiny_tree import make_tree, train_paths

    monkeypatch.chdir(make_tree(tmp_path, per_class=4))
    monkeypatch.setattr(memory, "available_bytes_on", lambda device: (64 * 2**20, "a test's budget"))
    params = parse_params(
        {"model": {"name": "tutorial.net"}, "train": {"epochs": 1, "batch_size": 8}, "runtime": {"threads": 1}}
    )
    logs: list[str] = []
    with pytest.raises(ParamsError, match=r"train.batch_size: .*64.0 MiB available \(a test's budget\)"):
        fit(params, train_paths(tmp_path, tmp_path), log=logs.append)
    assert not any(line.startswith("epoch") for line in logs) and not (tmp_path / "models").exists()
