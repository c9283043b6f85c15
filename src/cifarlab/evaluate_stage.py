"""The evaluate stage's work: test metrics of a saved model, written for DVC."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .artifact import load_model
from .atomic import write_json, write_text
from .data.dataset import load_tensors
from .evaluation import classification_report
from .params import Params
from .train.device import setup_runtime
from .train.loop import Dist
from .train.sources import make_source


def predict_index(model_path: Path, index: Path, params: Params, log=print):
    """Logits and targets of a saved model over an index, with the model's own eval transforms."""
    from .data.transforms import is_multicrop
    from .train.loop import evaluate

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
