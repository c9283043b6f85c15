"""The visualize stage's own TensorBoard run (tutorial chapter 4.1), beside the train run.

It logs what describes a *trained* model, once, at the step of the model's epoch:
images (augmented training inputs, kernels, feature maps, Grad-CAM), the graph, an
embedding of test features for the projector, one precision-recall curve per class, the
params and the model summary as text, the confusion matrix and other figures, and
histograms of the weights and of one test batch's gradients. Curves over epochs, per-epoch
histograms and hparams are the train run's (reports/tensorboard/train).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from cifarlab.engine.tensorboard import HISTOGRAM_BINS


def _md(text: str) -> str:
    """Text plugin renders markdown; a code block keeps tables and YAML aligned."""
    return "```\n" + text.rstrip() + "\n```"


class VisualizeLogger:
    def __init__(self, logdir: Path, step: int):
        self.writer = SummaryWriter(str(logdir))
        self.step = step

    def image(self, tag: str, img: torch.Tensor) -> None:
        """A [3, H, W] (or [1, H, W]) float image in 0..1."""
        self.writer.add_image(tag, img.float().clamp(0, 1), self.step)

    def boxes(self, tag: str, img: torch.Tensor, box: tuple[int, int, int, int], label: str) -> None:
        """A [3, H, W] image in 0..1 with one labelled box (x0, y0, x1, y1) drawn by TensorBoard."""
        self.writer.add_image_with_boxes(
            tag, img.float().clamp(0, 1), torch.tensor([box], dtype=torch.float32), self.step, labels=[label]
        )

    def figure(self, tag: str, fig) -> None:
        self.writer.add_figure(tag, fig, self.step, close=True)

    def png(self, tag: str, path: Path) -> None:
        """A picture already rendered to a PNG file, logged as it is (no second matplotlib pass)."""
        with Image.open(path) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), self.step, dataformats="HWC")

    def graph(self, model: torch.nn.Module, example: torch.Tensor) -> str | None:
        """The model graph, traced once on a real input; returns why not where tracing fails.

        add_graph is built on torch.jit.trace, whose sanity check rejects a few models
        (torchvision's ViT re-traces differently). Then the run says so in a text entry
        instead of failing the stage: every other picture is still worth having.
        """
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch.jit's __all__
                self.writer.add_graph(model, example)
            return None
        except Exception as exc:  # the tracer raises several types, all meaning "no graph"
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            self.text("model/graph", f"no graph: torch.jit.trace failed on this model ({why})")
            return why

    def embedding(
        self, features: torch.Tensor, labels: list[str], thumbnails: torch.Tensor, tag: str = "test_features"
    ) -> None:
        """Penultimate features with class labels and thumbnails, for the projector (PCA, t-SNE, UMAP)."""
        self.writer.add_embedding(
            features.float(), metadata=labels, label_img=thumbnails.float().clamp(0, 1), global_step=self.step, tag=tag
        )

    def pr_curves(self, probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> None:
        """One-vs-rest precision-recall curve per class from the softmax probabilities."""
        for i, name in enumerate(classes):
            self.writer.add_pr_curve(f"pr_curve/{name}", (targets == i).int(), probs[:, i].float(), self.step)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, _md(text), self.step)

    def params(self, params) -> None:
        self.text("params", yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))

    def histograms(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            self.writer.add_histogram(f"{prefix}/{name}", t.detach().float().cpu(), self.step, bins=HISTOGRAM_BINS)  # pyright: ignore[reportArgumentType]  # an int works: bins goes to numpy.histogram

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
