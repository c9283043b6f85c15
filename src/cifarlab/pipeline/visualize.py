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

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torchvision.utils import make_grid

from cifarlab.artifact import load_model
from cifarlab.atomic import atomic_dir, write_text
from cifarlab.data.dataset import load_tensors
from cifarlab.data.layout import read_stats
from cifarlab.engine.device import pick_device, use_all_cores
from cifarlab.errors import CifarlabError
from cifarlab.models.summary import summarize
from cifarlab.params import Params
from cifarlab.viz import cam, figures, hooks, kernels, layers
from cifarlab.viz.inputs import EvalInputs, train_grid_images
from cifarlab.viz.predictions import choose, predict
from cifarlab.viz.tb import VisualizeLogger

#: The PNG files this stage writes into reports/figures (dvc.yaml lists them as plots).
PICTURES = (
    "training_curves",
    "confusion_matrix",
    "per_class",
    "augmented_inputs",
    "kernels",
    "kernels_per_channel",
    "feature_maps",
    "weights",
    "gradients",
    "grad_cam",
    "activation_maps",
    "confusion_splits",
    "layers",
)


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
    valid_index: Optional[Path] = None  # default: valid.txt beside test_index
    layers: Optional[Path] = None  # the train stage's layers.csv (per-layer diagnostics); None: not drawn from data

    def __post_init__(self):
        if self.valid_index is None:
            self.valid_index = Path(self.test_index).with_name("valid.txt")


@dataclass
class Plan:
    """The layers and classes the pictures use, resolved against the model."""

    kernels: str
    features: list[str]
    gradcam: str
    head: str
    classes: list[int]

    def describe(self) -> str:
        return (
            f"kernels: {self.kernels}\nfeature maps: {', '.join(self.features)}\n"
            f"Grad-CAM: {self.gradcam}\nembedding: input of {self.head}\nclasses: {self.classes}"
        )


def plan_layers(model: torch.nn.Module, params: Params, classes: list[str]) -> Plan:
    """Resolve visualize.* against the model (auto picks), or one ParamsError with the valid names."""
    vp = params.visualize
    table = layers.probe(model)
    return Plan(
        kernels=layers.kernels_layer(table, vp.kernels_layer),
        features=layers.feature_layers(table, vp.feature_layers),
        gradcam=layers.gradcam_layer(table, vp.gradcam_layer),
        head=layers.classifier_layer(table),
        classes=layers.class_indices(vp.classes, classes),
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CifarlabError(f"{path}: missing; run `dvc repro` to build it") from None
    except json.JSONDecodeError as exc:
        raise CifarlabError(f"{path}: not valid JSON ({exc})") from None


def _grad_cam_figure(model, plan: Plan, x: torch.Tensor, idx: list[int], *, targets, probs, classes, log):
    """Grad-CAM for the predicted class beside the true class (wrong) or the runner-up (right),
    and CAM for the predicted class where the net ends in global pooling and a linear layer."""
    p = probs[idx]
    pred, true = p.argmax(1), targets[idx]
    other = torch.where(pred == true, p.topk(2, dim=1).indices[:, 1], true)
    # both targets in one forward and backward pass: the batch twice (eval mode: images independent)
    cam_pred, cam_other = hooks.grad_cam(model, plan.gradcam, torch.cat([x, x]), torch.cat([pred, other]))[0].chunk(2)
    pred_titles = [f"predicted {classes[c]} {p[i, c]:.2f}" for i, c in enumerate(pred.tolist())]
    other_titles = [
        f"{'runner-up' if pred[i] == true[i] else 'true'} {classes[c]} {p[i, c]:.2f}"
        for i, c in enumerate(other.tolist())
    ]
    columns = [
        ("Grad-CAM, predicted class", cam_pred, pred_titles),
        ("Grad-CAM, true class or runner-up", cam_other, other_titles),
    ]
    title = f"Grad-CAM at {plan.gradcam}"
    maps, how = cam.cam(model, plan.head, x, pred)
    if maps is None:
        log(f"visualize: no CAM beside Grad-CAM: {how}")
    else:
        columns.append(("CAM, predicted class", maps, [f"CAM {t}" for t in pred_titles]))
        title += f"; CAM at {how}"
    return columns, title


def _overlay(img: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """An image [3, H, W] in 0..1 with a jet-coloured map [H, W] over it."""
    colour = torch.from_numpy(colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    return 0.55 * img.float().cpu() + 0.45 * colour


def _confusions(
    model,
    inputs: EvalInputs,
    paths: VizPaths,
    plan: Plan,
    *,
    device,
    channels_last: bool,
    batch_size: int,
    classes: list[str],
    test_counts,
    tta: str,
) -> dict[str, list[list[int]]]:
    """Confusion counts of the train and validation splits (eval transforms and evaluate.tta,
    as the evaluate stage counts), and the evaluate stage's test ones."""
    k = len(classes)
    out = {}
    assert paths.valid_index is not None, "VizPaths.__post_init__ sets it"
    for split, index in (("train", paths.train_index), ("valid", paths.valid_index)):
        x, y = load_tensors(index, paths.root, k)
        logits, _ = predict(
            model, inputs, x, head=plan.head, batch_size=batch_size, device=device, channels_last=channels_last, tta=tta
        )
        out[split] = torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k).tolist()
    out["test"] = test_counts
    return out


def _layer_rows(path: Optional[Path]) -> list[dict]:
    if path is None:
        return []
    if not Path(path).exists():
        raise CifarlabError(f"{path}: missing; run `dvc repro train` to write it")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _boundary_table(rows: list[dict]) -> str:
    lines = [f"{'layer':<28} {'|dL/d output|':>14} {'|dL/d input|':>14}"]
    lines += [f"{r['layer']:<28} {r['grad_output_norm']:>14.4g} {r['grad_input_norm']:>14.4g}" for r in rows]
    return "\n".join(lines)


def _log_boxes(tb: VisualizeLogger, images: torch.Tensor, columns) -> None:
    """Each image under its class map, with a box around the map's largest strong region
    (`add_image_with_boxes`): Grad-CAM of the predicted class, and CAM where the net has one."""
    for name, maps, titles in columns:
        if "predicted" not in name:
            continue
        tag = "cam" if name.startswith("CAM") else "grad_cam"
        for i in range(len(images)):
            b = cam.box(maps[i], figures.BOX_FRACTION)
            if b is not None:
                tb.boxes(f"{tag}/boxes/{i}", _overlay(images[i], maps[i]), b, titles[i])


@dataclass
class Drawn:
    """What the pictures and the TensorBoard run are made of: computed once, drawn twice."""

    inputs: EvalInputs
    test_x: torch.Tensor
    test_y: torch.Tensor
    feats: torch.Tensor
    probs: torch.Tensor
    preds: torch.Tensor
    fm_idx: list[int]
    fm_x: torch.Tensor
    maps: dict
    gc_idx: list[int]
    gc_x: torch.Tensor
    cams: Any
    cam_title: str
    before: torch.Tensor
    after: torch.Tensor
    act_how: str
    grads: dict
    boundary: list[dict]
    splits: Any
    layer_rows: list[dict]
    weights: dict
    weight: torch.Tensor
    grid_images: torch.Tensor
    train_grid: torch.Tensor
    kernel_grid: torch.Tensor
    per_channel: torch.Tensor
    emb_idx: torch.Tensor
    summary: str

    def captions(self, idx: list[int], classes: list[str]) -> list[str]:
        return [
            figures.caption(int(self.test_y[i]), int(self.preds[i]), float(self.probs[i, self.preds[i]]), classes)
            for i in idx
        ]


def run_visualize(params: Params, paths: VizPaths, log=print) -> Plan:
    """Load, compute once, then draw the figures and write the TensorBoard run (both atomically)."""
    vp = params.visualize
    device = pick_device(vp.device, key="visualize.device")
    if device.type == "cpu":
        use_all_cores()
    model, meta = load_model(paths.model, device)
    hooks.no_inplace(model)
    classes = list(meta["classes"])
    plan = plan_layers(model, params, classes)
    log(f"visualize: {meta.get('name')} on {device}; " + plan.describe().replace("\n", "; "))
    history, report, confusion = _read_reports(paths, meta)
    d = _compute(model, meta, params, paths, plan=plan, device=device, confusion=confusion, log=log)
    with atomic_dir(paths.figures) as fig_dir, atomic_dir(paths.tensorboard) as tb_dir:
        pictures = _pictures(d, vp, plan=plan, classes=classes, history=history, report=report, confusion=confusion)
        assert tuple(pictures) == PICTURES
        for name, fig in pictures.items():
            figures.save(fig, fig_dir / f"{name}.png")
        write_text(fig_dir / "summary.txt", d.summary + "\n")
        _log_run(tb_dir, d, pictures, model=model, meta=meta, params=params, plan=plan, fig_dir=fig_dir, log=log)
    log(f"visualize: {len(PICTURES)} pictures in {paths.figures}, TensorBoard run in {paths.tensorboard}")
    return plan


def _read_reports(paths: VizPaths, meta: dict) -> tuple[dict, dict, dict]:
    """(training curves, evaluate's report, its confusion matrix), each checked with a clear error."""
    if not meta.get("history"):
        raise CifarlabError(
            f"{paths.model}: the model file carries no training history (written by an older "
            "cifarlab); retrain it: dvc repro train --force"
        )
    report = _read_json(paths.report)
    confusion = report.get("confusion")
    if not isinstance(confusion, dict) or not {"classes", "counts"} <= set(confusion):
        raise CifarlabError(
            f"{paths.report}: no confusion matrix in it; rerun the evaluate stage (dvc repro evaluate --force)"
        )
    return figures.history_columns(meta["history"]), report, confusion


def _compute(model, meta: dict, params: Params, paths: VizPaths, *, plan: Plan, device, confusion: dict, log) -> Drawn:
    """Every forward and backward pass the pictures need, the test set through the model once."""
    vp, seed, classes = params.visualize, params.seed, list(meta["classes"])
    channels_last = bool(meta.get("channels_last"))
    inputs = EvalInputs(meta)
    test_x, test_y = load_tensors(paths.test_index, paths.root, len(classes))
    if len(test_y) == 0:
        raise CifarlabError(f"{paths.test_index}: the test index is empty")
    how = {"head": plan.head, "device": device, "channels_last": channels_last, "tta": params.evaluate.tta}
    logits, feats = predict(model, inputs, test_x, batch_size=vp.batch_size, **how)
    probs, preds = logits.softmax(1), logits.argmax(1)
    log(f"visualize: {len(test_y)} test images, accuracy {(preds == test_y).float().mean():.4f}")

    def model_input(idx: list[int]) -> torch.Tensor:
        x = inputs.picture(test_x[idx], None).to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    fm_idx = choose(test_y, preds, plan.classes, vp.feature_images, seed=seed, mix=False)
    fm_x = model_input(fm_idx)
    gc_idx = choose(test_y, preds, plan.classes, vp.gradcam_images, seed=seed + 1, mix=True)
    gc_x = model_input(gc_idx)
    cams, cam_title = _grad_cam_figure(model, plan, gc_x, gc_idx, targets=test_y, probs=probs, classes=classes, log=log)
    before, after, act_how = cam.activation_pair(model, plan.kernels, fm_x)
    # weights, and the gradients of one test batch (the tutorial's 4.4)
    g_idx = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(seed + 2))[: vp.batch_size].tolist()
    g_x, g_y = model_input(g_idx), test_y[g_idx].to(device)
    weight = kernels.conv_weight(model, plan.kernels)
    stats = read_stats(paths.stats)
    grid_images, _ = train_grid_images(
        paths.train_index,
        params.augment.train,
        stats,
        count=vp.grid_images,
        seed=seed,
        num_classes=len(classes),
        root=paths.root,
    )
    return Drawn(
        inputs=inputs,
        test_x=test_x,
        test_y=test_y,
        feats=feats,
        probs=probs,
        preds=preds,
        fm_idx=fm_idx,
        fm_x=fm_x,
        maps=hooks.feature_maps(model, plan.features, fm_x),
        gc_idx=gc_idx,
        gc_x=gc_x,
        cams=cams,
        cam_title=cam_title,
        before=before,
        after=after,
        act_how=act_how,
        grads=hooks.gradients(model, g_x, g_y),
        boundary=cam.boundary_gradients(model, F.cross_entropy, g_x, g_y),
        splits=_confusions(
            model,
            inputs,
            paths,
            plan,
            device=device,
            channels_last=channels_last,
            batch_size=vp.batch_size,
            classes=classes,
            test_counts=confusion["counts"],
            tta=params.evaluate.tta,
        ),
        layer_rows=meta.get("layers") or _layer_rows(paths.layers),  # the model file carries them
        weights={n: w.detach().float().cpu() for n, w in model.named_parameters()},
        weight=weight,
        grid_images=grid_images,
        train_grid=make_grid(grid_images, nrow=8, padding=2, pad_value=1.0),
        kernel_grid=kernels.kernel_grid(weight),
        per_channel=kernels.kernel_grid_per_channel(weight, vp.kernels_channels),
        emb_idx=torch.randperm(len(test_y), generator=torch.Generator().manual_seed(seed + 3))[: vp.embedding_images],
        summary=summarize(model),
    )


def _pictures(d: Drawn, vp, *, plan: Plan, classes: list[str], history: dict, report: dict, confusion: dict) -> dict:
    matrices = {n: w for n, w in d.weights.items() if w.dim() > 1}
    weight = d.weight
    return {
        "training_curves": figures.training_curves(history),
        "confusion_matrix": figures.confusion_matrix(confusion["counts"], confusion["classes"]),
        "per_class": figures.per_class(report),
        "augmented_inputs": figures.image_grid(
            d.train_grid, f"{len(d.grid_images)} training inputs after augment.train (de-normalized)"
        ),
        "kernels": figures.image_grid(
            d.kernel_grid,
            f"{plan.kernels} kernels {tuple(weight.shape)}"
            + ("" if weight.shape[1] == 3 else ", mean over input channels"),
        ),
        "kernels_per_channel": figures.image_grid(
            d.per_channel,
            f"{plan.kernels} per channel",
            xlabel=f"input channel (first {min(weight.shape[1], vp.kernels_channels)})",
            ylabel=f"output channel (first {min(weight.shape[0], vp.kernels_channels)})",
        ),
        "feature_maps": figures.feature_maps(
            d.inputs.show(d.fm_x), d.maps, d.captions(d.fm_idx, classes), vp.feature_channels
        ),
        "weights": figures.distributions(matrices, "conv and linear weights"),
        "gradients": figures.distributions(
            {n: d.grads[n] for n in matrices if n in d.grads}, "gradients of one test batch", magnitude=True
        ),
        "grad_cam": figures.grad_cam(d.inputs.show(d.gc_x), d.cams, d.captions(d.gc_idx, classes), d.cam_title),
        "activation_maps": figures.feature_maps(
            d.inputs.show(d.fm_x),
            {f"{plan.kernels} before": d.before, f"{plan.kernels} after": d.after},
            d.captions(d.fm_idx, classes),
            vp.feature_channels,
            title=f"before and after the activation: {d.act_how}",
        ),
        "confusion_splits": figures.confusion_splits(d.splits, confusion["classes"]),
        "layers": figures.layer_heatmaps(d.layer_rows),
    }


def _log_run(
    tb_dir: Path, d: Drawn, pictures: dict, *, model, meta: dict, params: Params, plan: Plan, fig_dir: Path, log
) -> None:
    """The visualize stage's own TensorBoard run: images, figures, graph, projector, PR curves, text."""
    classes = list(meta["classes"])
    tb = VisualizeLogger(tb_dir, step=int(meta.get("epoch") or 0))
    tb.image("inputs/augmented_train", d.train_grid)
    tb.image(f"kernels/{plan.kernels}", d.kernel_grid)
    tb.image(f"kernels/{plan.kernels}/per_channel", d.per_channel)
    for layer, m in d.maps.items():
        tb.image(f"feature_maps/{layer}", kernels.feature_grid(m[0], 64))
    tb.image(f"feature_maps/{plan.kernels}/before_activation", kernels.feature_grid(d.before[0], 64))
    tb.image(f"feature_maps/{plan.kernels}/after_activation", kernels.feature_grid(d.after[0], 64))
    _log_boxes(tb, d.inputs.show(d.gc_x), d.cams)
    for name in ("confusion_matrix", "per_class", "training_curves", "confusion_splits", "layers"):
        tb.figure(f"figures/{name}", pictures[name])
    for name in ("feature_maps", "weights", "gradients", "grad_cam", "activation_maps"):  # big: logged as rendered
        tb.png(f"figures/{name}", fig_dir / f"{name}.png")
    why = tb.graph(model, d.fm_x[:1])
    if why:
        log(f"visualize: no model graph in TensorBoard, tracing failed ({why})")
    tb.embedding(d.feats[d.emb_idx], [classes[int(d.test_y[i])] for i in d.emb_idx], d.test_x[d.emb_idx].float() / 255)
    tb.pr_curves(d.probs, d.test_y, classes)
    tb.params(params)
    tb.text("model/summary", d.summary)
    tb.text("visualize/layers", plan.describe() + f"\nactivation maps: {d.act_how}")
    tb.text(
        "gradients/layers",
        "gradient norms at each layer's output and input (full backward hooks), "
        "one test batch\n" + _boundary_table(d.boundary),
    )
    tb.histograms("weights", d.weights)
    tb.histograms("gradients", d.grads)
    tb.close()
