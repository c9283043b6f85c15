"""Test-set metrics: accuracy, loss, per-class precision, recall and F1, the confusion matrix.

The loss reported here is the cross-entropy of the model's softmax, whatever loss trained
it, so experiments with different training losses stay comparable in `dvc metrics diff`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
