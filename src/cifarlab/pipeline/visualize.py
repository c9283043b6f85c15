"""The visualize stage's work: what a trained model learned and where it fails, as pictures.

Everything the tutorial's chapter 4 draws, for any model the registry builds: training
curves, the confusion matrix, per-class precision and recall, the first conv layer's kernels,
feature maps, weight and gradient distributions, Grad-CAM, and the model summary, as PNG
files in reports/figures/ (DVC plots) and in the TensorBoard run reports/tensorboard/visualize.

Layer names and classes from params are checked against the loaded model before any image
is decoded, so a typo fails in a second with the valid names. Both output folders are
written atomically as a whole: an interrupted run leaves the previous pictures or none.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid

from cifarlab.artifact import load_model
from cifarlab.atomic import atomic_dir, write_text
from cifarlab.data.dataset import load_tensors
from cifarlab.data.layout import read_stats
from cifarlab.errors import CifarlabError
from cifarlab.models.summary import summarize
from cifarlab.params import Params
from cifarlab.engine.device import pick_device, use_all_cores
from cifarlab.viz import figures, hooks, kernels, layers
from cifarlab.viz.inputs import EvalInputs, train_grid_images
from cifarlab.viz.predictions import choose, predict
from cifarlab.viz.tb import VisualizeLogger

#: The PNG files this stage writes into reports/figures (dvc.yaml lists them as plots).
PICTURES = ("training_curves", "confusion_matrix", "per_class", "augmented_inputs", "kernels",
            "kernels_per_channel", "feature_maps", "weights", "gradients", "grad_cam")


@dataclass
class VizPaths:
    model: Path
    train_index: Path
    test_index: Path
    stats: Path
    report: Path  # the evaluate stage's report.json: per-class scores and the confusion matrix
    figures: Path
    tensorboard: Path
    root: Path = Path(".")


@dataclass
class Plan:
    """The layers and classes the pictures use, resolved against the model."""

    kernels: str
    features: list[str]
    gradcam: str
    head: str
    classes: list[int]

    def describe(self) -> str:
        return (f"kernels: {self.kernels}\nfeature maps: {', '.join(self.features)}\n"
                f"Grad-CAM: {self.gradcam}\nembedding: input of {self.head}\nclasses: {self.classes}")


def plan_layers(model: torch.nn.Module, params: Params, classes: list[str]) -> Plan:
    """Resolve visualize.* against the model (auto picks), or one ParamsError with the valid names."""
    vp = params.visualize
    table = layers.probe(model)
    return Plan(kernels=layers.kernels_layer(table, vp.kernels_layer),
                features=layers.feature_layers(table, vp.feature_layers),
                gradcam=layers.gradcam_layer(table, vp.gradcam_layer),
                head=layers.classifier_layer(table),
                classes=layers.class_indices(vp.classes, classes))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CifarlabError(f"{path}: missing; run `dvc repro` to build it") from None
    except json.JSONDecodeError as exc:
        raise CifarlabError(f"{path}: not valid JSON ({exc})") from None


def _grad_cam_figure(model, layer: str, x: torch.Tensor, idx: list[int], targets, probs, classes):
    """Grad-CAM for the predicted class beside the true class (wrong) or the runner-up (right)."""
    p = probs[idx]
    pred, true = p.argmax(1), targets[idx]
    other = torch.where(pred == true, p.topk(2, dim=1).indices[:, 1], true)
    # both targets in one forward and backward pass: the batch twice (eval mode: images independent)
    cam_pred, cam_other = hooks.grad_cam(model, layer, torch.cat([x, x]), torch.cat([pred, other]))[0].chunk(2)
    pred_titles = [f"predicted {classes[c]} {p[i, c]:.2f}" for i, c in enumerate(pred.tolist())]
    other_titles = [f"{'runner-up' if pred[i] == true[i] else 'true'} {classes[c]} {p[i, c]:.2f}"
                    for i, c in enumerate(other.tolist())]
    return [("predicted class", cam_pred, pred_titles), ("true class or runner-up", cam_other, other_titles)]


def run_visualize(params: Params, paths: VizPaths, log=print) -> Plan:
    vp, seed = params.visualize, params.seed
    device = pick_device(vp.device, key="visualize.device")
    if device.type == "cpu":
        use_all_cores()
    model, meta = load_model(paths.model, device)
    hooks.no_inplace(model)
    classes = list(meta["classes"])
    plan = plan_layers(model, params, classes)
    log(f"visualize: {meta.get('name')} on {device}; " + plan.describe().replace("\n", "; "))
    if not meta.get("history"):
        raise CifarlabError(f"{paths.model}: the model file carries no training history (written by an older "
                            "cifarlab); retrain it: dvc repro train --force")
    history = figures.history_columns(meta["history"])
    report = _read_json(paths.report)
    confusion = report.get("confusion")
    if not isinstance(confusion, dict) or not {"classes", "counts"} <= set(confusion):
        raise CifarlabError(f"{paths.report}: no confusion matrix in it; rerun the evaluate stage (dvc repro evaluate --force)")
    stats = read_stats(paths.stats)
    channels_last = bool(meta.get("channels_last"))

    # the test set once: predictions for the PR curves and the picks, features for the projector
    inputs = EvalInputs(meta)
    test_x, test_y = load_tensors(paths.test_index, paths.root, len(classes))
    if len(test_y) == 0:
        raise CifarlabError(f"{paths.test_index}: the test index is empty")
    logits, feats = predict(model, inputs, test_x, plan.head, vp.batch_size, device, channels_last)
    probs, preds = logits.softmax(1), logits.argmax(1)
    log(f"visualize: {len(test_y)} test images, accuracy {(preds == test_y).float().mean():.4f}")

    def model_input(idx: list[int]) -> torch.Tensor:
        x = inputs.picture(test_x[idx], None).to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def captions(idx: list[int]) -> list[str]:
        return [figures.caption(int(test_y[i]), int(preds[i]), float(probs[i, preds[i]]), classes) for i in idx]

    fm_idx = choose(test_y, preds, plan.classes, vp.feature_images, seed, mix=False)
    fm_x = model_input(fm_idx)
    maps = hooks.feature_maps(model, plan.features, fm_x)
    gc_idx = choose(test_y, preds, plan.classes, vp.gradcam_images, seed + 1, mix=True)
    gc_x = model_input(gc_idx)
    cams = _grad_cam_figure(model, plan.gradcam, gc_x, gc_idx, test_y, probs, classes)

    # weights, and the gradients of one test batch (the tutorial's 4.4)
    g_idx = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(seed + 2))[:vp.batch_size].tolist()
    grads = hooks.gradients(model, model_input(g_idx), test_y[g_idx].to(device))
    weights = {n: w.detach().float().cpu() for n, w in model.named_parameters()}
    matrices = {n: w for n, w in weights.items() if w.dim() > 1}

    weight = kernels.conv_weight(model, plan.kernels)
    grid_images, _ = train_grid_images(paths.train_index, params.augment.train, stats, vp.grid_images, seed,
                                       len(classes), paths.root)
    train_grid = make_grid(grid_images, nrow=8, padding=2, pad_value=1.0)
    kernel_grid = kernels.kernel_grid(weight)
    per_channel = kernels.kernel_grid_per_channel(weight, vp.kernels_channels)
    emb_idx = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(seed + 3))[:vp.embedding_images]
    summary = summarize(model)

    with atomic_dir(paths.figures) as fig_dir, atomic_dir(paths.tensorboard) as tb_dir:
        pictures = {
            "training_curves": figures.training_curves(history),
            "confusion_matrix": figures.confusion_matrix(confusion["counts"], confusion["classes"]),
            "per_class": figures.per_class(report),
            "augmented_inputs": figures.image_grid(
                train_grid, f"{len(grid_images)} training inputs after augment.train (de-normalized)"),
            "kernels": figures.image_grid(kernel_grid, f"{plan.kernels} kernels {tuple(weight.shape)}"
                                          + ("" if weight.shape[1] == 3 else ", mean over input channels")),
            "kernels_per_channel": figures.image_grid(
                per_channel, f"{plan.kernels} per channel",
                xlabel=f"input channel (first {min(weight.shape[1], vp.kernels_channels)})",
                ylabel=f"output channel (first {min(weight.shape[0], vp.kernels_channels)})"),
            "feature_maps": figures.feature_maps(inputs.show(fm_x), maps, captions(fm_idx), vp.feature_channels),
            "weights": figures.distributions(matrices, "conv and linear weights"),
            "gradients": figures.distributions({n: grads[n] for n in matrices if n in grads},
                                               "gradients of one test batch", magnitude=True),
            "grad_cam": figures.grad_cam(inputs.show(gc_x), cams, captions(gc_idx), plan.gradcam),
        }
        assert tuple(pictures) == PICTURES
        for name, fig in pictures.items():
            figures.save(fig, fig_dir / f"{name}.png")
        write_text(fig_dir / "summary.txt", summary + "\n")

        tb = VisualizeLogger(tb_dir, step=int(meta.get("epoch") or 0))
        tb.image("inputs/augmented_train", train_grid)
        tb.image(f"kernels/{plan.kernels}", kernel_grid)
        tb.image(f"kernels/{plan.kernels}/per_channel", per_channel)
        for layer, m in maps.items():
            tb.image(f"feature_maps/{layer}", kernels.feature_grid(m[0], 64))
        for name in ("confusion_matrix", "per_class", "training_curves"):
            tb.figure(f"figures/{name}", pictures[name])
        for name in ("feature_maps", "weights", "gradients", "grad_cam"):  # big: logged as rendered
            tb.png(f"figures/{name}", fig_dir / f"{name}.png")
        why = tb.graph(model, fm_x[:1])
        if why:
            log(f"visualize: no model graph in TensorBoard, tracing failed ({why})")
        tb.embedding(feats[emb_idx], [classes[int(test_y[i])] for i in emb_idx], test_x[emb_idx].float() / 255)
        tb.pr_curves(probs, test_y, classes)
        tb.params(params)
        tb.text("model/summary", summary)
        tb.text("visualize/layers", plan.describe())
        tb.histograms("weights", weights)
        tb.histograms("gradients", grads)
        tb.close()
    log(f"visualize: {len(PICTURES)} pictures in {paths.figures}, TensorBoard run in {paths.tensorboard}")
    return plan
