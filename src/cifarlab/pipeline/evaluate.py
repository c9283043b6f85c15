"""Stage evaluate: test metrics of a saved model, written for DVC.

The loss reported here is the cross-entropy of the model's softmax, whatever loss trained
it, so experiments with different training losses stay comparable in `dvc metrics diff`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
import torch.nn.functional as F

from cifarlab.artifact import load_model
from cifarlab.atomic import write_json, write_text
from cifarlab.augment.transforms import is_multicrop
from cifarlab.data.dataset import load_tensors
from cifarlab.engine.device import setup_runtime
from cifarlab.engine.loop import evaluate
from cifarlab.engine.sources import make_source
from cifarlab.params import Params


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[actual, predicted]."""
    return torch.bincount(targets * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> tuple[dict, torch.Tensor]:
    k = len(classes)
    preds = logits.argmax(1)
    cm = confusion_matrix(preds, targets, k).double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp)
    )
    per_class = {
        c: {
            "precision": round(precision[i].item(), 6),
            "recall": round(recall[i].item(), 6),
            "f1": round(f1[i].item(), 6),
            "support": int(actual[i].item()),
        }
        for i, c in enumerate(classes)
    }
    return {
        "accuracy": round((preds == targets).double().mean().item(), 6),
        "loss": round(F.cross_entropy(logits.double(), targets).item(), 6),
        "images": len(targets),
        "macro": {
            "precision": round(precision.mean().item(), 6),
            "recall": round(recall.mean().item(), 6),
            "f1": round(f1.mean().item(), 6),
        },
        "per_class": per_class,
    }, cm.long()


def predict_index(model_path: Path, index: Path, params: Params, log=print):
    """Logits and targets of a saved model over an index, with the model's own eval transforms."""
    runtime = setup_runtime(params.train.device, params.train.amp, params.runtime.threads, False)
    model, meta = load_model(model_path, runtime.device)
    runtime.channels_last = bool(meta.get("channels_last"))
    x, y = load_tensors(index, ".", len(meta["classes"]))
    source = make_source(
        meta["eval_transforms"],
        "augment.eval",
        backend="tensor",
        images=x,
        labels=y,
        index=index,
        stats=meta["normalize"],
        runtime=runtime,
        batch_size=params.evaluate.batch_size,
        seed=params.seed,
        shuffle=False,
        num_workers=params.runtime.num_workers,
        log=log,
    )
    if params.evaluate.tta != "none":
        log(f"evaluate: test-time augmentation {params.evaluate.tta} (logits averaged over its views)")
    out = evaluate(
        model,
        None,
        source,
        runtime,
        ncrops=is_multicrop(meta["eval_transforms"]),
        keep_outputs=True,
        tta=params.evaluate.tta,
    )
    return out["logits"], out["targets"], meta


def run_evaluation(model_path: Path, index: Path, out_dir: Path, params: Params, log=print) -> dict:
    """metrics.json (the headline numbers `dvc exp show` compares), report.json (everything: per
    class, the confusion matrix's counts), per_class.csv and confusion.csv (DVC plots)."""
    logits, targets, meta = predict_index(model_path, index, params, log)
    classes = meta["classes"]
    report, cm = classification_report(logits, targets, classes)
    report["model_epoch"] = meta.get("epoch")
    report["confusion"] = {"classes": classes, "counts": cm.tolist(), "rows": "actual", "columns": "predicted"}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        out_dir / "metrics.json",
        {"test": {"acc": report["accuracy"], "loss": report["loss"], "macro_f1": report["macro"]["f1"]}},
    )
    write_json(out_dir / "report.json", report)
    write_text(
        out_dir / "per_class.csv",
        _csv(
            ["class", "precision", "recall", "f1", "support"], [[c, *report["per_class"][c].values()] for c in classes]
        ),
    )
    preds = logits.argmax(1)
    write_text(
        out_dir / "confusion.csv",
        _csv(["actual", "predicted"], [[classes[a], classes[p]] for a, p in zip(targets.tolist(), preds.tolist())]),
    )
    log(
        f"evaluate: test accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f}, "
        f"macro F1 {report['macro']['f1']:.4f} on {report['images']} images"
    )
    return report


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
