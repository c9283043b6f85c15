"""A real TensorBoard server on the train and visualize runs, read back through its HTTP API.

What a user sees after `tensorboard --logdir reports/tensorboard`: both runs, and every
plugin the stages write for (scalars, histograms, images, graphs, projector, PR curves,
text, hparams) enabled and serving the logged values. Loopback only; the server is always
killed (its whole process group, which it was started in) within a bounded wait.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.engine.tensorboard import TrainLogger
from cifarlab.models.registry import build_model
from cifarlab.pipeline.visualize import run_visualize
from test_viz_stage import CLASSES, make_workspace, params_with

pytestmark = pytest.mark.usefixtures("one_thread")

START_TIMEOUT = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, logdir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(logdir.parent / "tensorboard.log", "w+")  # noqa: SIM115 - the server's log, closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
                "--reload_interval",
                "1",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str, **query) -> bytes:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.read()

    def json(self, path: str, **query):
        return json.loads(self.get(path, **query))

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())

    def wait_until(self, check, what: str):
        """Poll `check()` until it is truthy; fail with the server's log after START_TIMEOUT s."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                value = check()
                if value:
                    return value
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        self.log.seek(0)
        pytest.fail(f"TensorBoard never served {what}:\n{self.log.read()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group it was started in: it and its data server
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    paths = make_workspace(tmp / "ws")
    logdir = tmp / "ws/reports/tensorboard"
    params = params_with()
    run_visualize(params, paths, log=lambda *_: None)
    train = TrainLogger(logdir / "train")
    model = build_model("tutorial.net")
    train.start(model, params, "the summary")
    for epoch, lr in ((1, 0.05), (2, 0.025)):
        train.epoch(
            model,
            {
                "epoch": epoch,
                "train_loss": 2.0 / epoch,
                "valid_loss": 2.1 / epoch,
                "train_acc": 0.2 * epoch,
                "valid_acc": 0.15 * epoch,
                "images_per_second": 500.0,
            },
            [lr],
        )
    train.finish(params, {"best_valid_acc": 0.3, "best_epoch": 2})
    srv = Server(logdir)
    try:
        srv.wait_until(lambda: {"train", "visualize"} <= set(srv.json("/data/runs")), "both runs")
        yield srv
    finally:
        srv.stop()


def test_runs_and_plugins(server):
    runs = server.json("/data/runs")
    assert set(runs) == {"train", "visualize"}  # one run per stage: no run per curve
    wanted = {
        "custom_scalars",
        "scalars",
        "images",
        "histograms",
        "distributions",
        "graphs",
        "pr_curves",
        "text",
        "hparams",
        "projector",
    }
    listing = server.wait_until(  # the projector looks for its config in the background
        lambda: (lambda d: d if all(d.get(p, {}).get("enabled") for p in wanted) else None)(
            server.json("/data/plugins_listing")
        ),
        "every plugin enabled",
    )
    assert not listing["audio"]["enabled"]  # nothing here is sound


def test_scalars_come_from_the_train_run(server):
    tags = server.json("/data/plugin/scalars/tags")
    assert {"learning_rate/group_0", "loss/train", "loss/valid", "accuracy/valid"} <= set(tags["train"])
    assert "visualize" not in tags  # visualize logs no curves: they are the train run's
    lrs = server.json("/data/plugin/scalars/scalars", run="train", tag="learning_rate/group_0")
    assert [(step, round(v, 6)) for _, step, v in lrs] == [(1, 0.05), (2, 0.025)]
    loss = server.json("/data/plugin/scalars/scalars", run="train", tag="loss/valid")
    assert [round(v, 4) for *_, v in loss] == [2.1, 1.05]


def test_train_and_valid_share_a_chart_through_the_custom_scalars_layout(server):
    layout = server.json("/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts == {"loss": ["loss/train", "loss/valid"], "accuracy": ["accuracy/train", "accuracy/valid"]}


def test_histograms_of_weights_and_gradients(server):
    tags = server.json("/data/plugin/histograms/tags")
    assert {"weights/conv1.weight", "gradients/fc3.bias"} <= set(tags["visualize"])
    assert "weights/conv1.weight" in tags["train"]  # per-epoch histograms stay the train run's
    ((_, step, buckets),) = server.json(
        "/data/plugin/histograms/histograms", run="visualize", tag="weights/conv1.weight"
    )
    assert step == 2 and sum(count for _, _, count in buckets) == pytest.approx(6 * 3 * 5 * 5)


def test_images_and_figures(server):
    tags = server.json("/data/plugin/images/tags")["visualize"]
    assert {
        "inputs/augmented_train",
        "kernels/conv1",
        "kernels/conv1/per_channel",
        "feature_maps/conv2",
        "figures/confusion_matrix",
        "figures/grad_cam",
    } <= set(tags)
    for tag in ("inputs/augmented_train", "figures/confusion_matrix"):
        (entry,) = server.json("/data/plugin/images/images", run="visualize", tag=tag)
        png = server.get("/data/plugin/images/individualImage?" + entry["query"])
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and min(im.size) > 30


def test_graph(server):
    info = server.json("/data/plugin/graphs/info")
    assert info["visualize"]["run_graph"]
    graph = server.get("/data/plugin/graphs/graph", run="visualize").decode()
    assert "Net/Conv2d[conv1]" in graph and "Net/Linear[fc3]" in graph


def test_projector_embedding(server):
    assert server.json("/data/plugin/projector/runs") == ["visualize"]
    (emb,) = server.json("/data/plugin/projector/info", run="visualize")["embeddings"]
    assert emb["tensorShape"] == [12, 84] and emb["sprite"]["singleImageDim"] == [32, 32]
    raw = server.get("/data/plugin/projector/tensor", run="visualize", name=emb["tensorName"])
    assert np.frombuffer(raw, dtype=np.float32).shape == (12 * 84,)
    labels = server.get("/data/plugin/projector/metadata", run="visualize", name=emb["tensorName"]).decode()
    assert set(labels.split()) <= set(CLASSES)


def test_pr_curves(server):
    tags = server.json("/data/plugin/pr_curves/tags")["visualize"]
    assert set(tags) == {f"pr_curve/{c}" for c in CLASSES}
    (curve,) = server.json("/data/plugin/pr_curves/pr_curves", run="visualize", tag="pr_curve/cat")["visualize"]
    assert curve["step"] == 2
    assert all(0 <= p <= 1 for p in curve["precision"]) and curve["recall"][0] == pytest.approx(1.0)


def test_text_and_hparams(server):
    tags = server.json("/data/plugin/text/tags")
    assert {"params/text_summary", "model/summary/text_summary", "visualize/layers/text_summary"} <= set(
        tags["visualize"]
    )
    (params,) = server.json("/data/plugin/text/text", run="visualize", tag="params/text_summary")
    assert "gradcam_images: 4" in params["text"]
    groups = server.post(
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 10,
        },
    )["sessionGroups"]
    (group,) = [g for g in groups if g["name"] == "train"]
    assert group["hparams"]["optimizer.lr"] == pytest.approx(params_with().optimizer.lr)
    assert {m["name"]["tag"]: m["value"] for m in group["metricValues"]}["hparam/best_valid_acc"] == pytest.approx(0.3)
