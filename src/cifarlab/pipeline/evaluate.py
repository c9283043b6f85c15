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
from cifarlab.data.dataset import load_tensors
from cifarlab.params import Params
from cifarlab.engine.device import setup_runtime
from cifarlab.engine.loop import Dist
from cifarlab.engine.sources import make_source


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[actual, predicted]."""
    return torch.bincount(targets * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    k = len(classes)
    preds = logits.argmax(1)
    cm = confusion_matrix(preds, targets, k).double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    per_class = {c: {"precision": round(precision[i].item(), 6), "recall": round(recall[i].item(), 6),
                     "f1": round(f1[i].item(), 6), "support": int(actual[i].item())} for i, c in enumerate(classes)}
    return {
        "accuracy": round((preds == targets).double().mean().item(), 6),
        "loss": round(F.cross_entropy(logits.double(), targets).item(), 6),
        "images": int(len(targets)),
        "macro": {"precision": round(precision.mean().item(), 6), "recall": round(recall.mean().item(), 6),
                  "f1": round(f1.mean().item(), 6)},
        "per_class": per_class,
    }, cm.long()


def predict_index(model_path: Path, index: Path, params: Params, log=print):
    """Logits and targets of a saved model over an index, with the model's own eval transforms."""
    from cifarlab.augment.transforms import is_multicrop
    from cifarlab.engine.loop import evaluate

    runtime = setup_runtime(params.train.device, params.train.amp, params.train.threads, False)
    model, meta = load_model(model_path, runtime.device)
    runtime.channels_last = bool(meta.get("channels_last"))
    x, y = load_tensors(index, ".", len(meta["classes"]))
    source = make_source(meta["eval_transforms"], "augment.eval", "tensor", x, y, index, meta["normalize"], runtime,
                         params.evaluate.batch_size, params.seed, False, params.train.num_workers, Dist(), log)
    out = evaluate(model, None, source, runtime, is_multicrop(meta["eval_transforms"]), keep_outputs=True)
    return out["logits"], out["targets"], meta


def run_evaluation(model_path: Path, index: Path, out_dir: Path, params: Params, log=print) -> dict:
    logits, targets, meta = predict_index(model_path, index, params, log)
    classes = meta["classes"]
    report, cm = classification_report(logits, targets, classes)
    report["model_epoch"] = meta.get("epoch")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", report)
    write_json(out_dir / "confusion_matrix.json", {"classes": classes, "counts": cm.tolist(),
                                                    "rows": "actual", "columns": "predicted"})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["actual", "predicted"])
    preds = logits.argmax(1)
    for a, p in zip(targets.tolist(), preds.tolist()):
        w.writerow([classes[a], classes[p]])
    write_text(out_dir / "confusion.csv", buf.getvalue())
    log(f"evaluate: test accuracy {report['accuracy']:.4f}, loss {report['loss']:.4f}, "
        f"macro F1 {report['macro']['f1']:.4f} on {report['images']} images")
    return report
