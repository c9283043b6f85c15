"""Stage export: the trained model as one portable ONNX file, and its model card.

The ONNX graph takes what a picture is, not what the model eats: `images`, uint8 RGB in
NCHW layout, [batch, 3, 32, 32] with any batch size, values 0..255. The model's own
evaluation transforms (ToDtype to 0..1 and Normalize with the training mean and std, by
default) are inside the graph, so a user feeds pixels and gets `logits` [batch, classes]
back; the class names ride along as the model's metadata (`classes`, a JSON list).

Weights are stored inside the one .onnx file (no external-data file beside it): the models
this project builds are 0.06 to 90 MB, far below protobuf's 2 GB limit, and one file is one
thing to copy, hash and `dvc artifacts get`.

The exporter is torch's own `torch.onnx.export(dynamo=True)` (the default since torch 2.9:
`torch.export` then onnxscript's translation; the TorchScript exporter is deprecated), at
opset 18, which every onnxruntime since 1.14 runs. Every export is checked at once: the
file is run with onnxruntime on a fixed batch of probe images and its logits compared with
PyTorch's; a graph that disagrees is never written.

Evaluation lists with FiveCrop/TenCrop average several crops per image, which a one-image
graph cannot say; they are refused with one line.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from cifarlab.artifact import load_model
from cifarlab.atomic import atomic_path, write_text
from cifarlab.augment.transforms import MULTICROP, build_transform, is_multicrop
from cifarlab.errors import CifarlabError, DataError
from cifarlab.params import Params

OPSET = 18
INPUT, OUTPUT = "images", "logits"
#: max |ONNX - PyTorch| logit difference accepted at export (fp32; measured ~1e-6 for the default transforms)
TOLERANCE = 1e-3


class ExportError(CifarlabError):
    """A model that cannot be written as an ONNX graph (multi-crop evaluation, an op the exporter lacks)."""


class PixelsToLogits(torch.nn.Module):
    """uint8 NCHW RGB pixels -> the model's evaluation transforms -> logits, for export."""

    def __init__(self, model: torch.nn.Module, transform):
        super().__init__()
        self.model = model
        self.transform = transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(images))


def graph_transform(meta: dict, source: Path):
    """The model's evaluation transforms on a batch of plain uint8 tensors.

    torchvision's v2 transforms treat a plain tensor as an image; only the wrappers that turn
    it into a `tv_tensors.Image` and back are left out, since torch.export cannot trace a
    tensor subclass. The arithmetic is the same as the evaluate stage's.
    """
    entries = meta["eval_transforms"]
    if is_multicrop(entries) > 1:
        name = next(n for e in entries if isinstance(e, dict) for n in e if n in MULTICROP)
        raise ExportError(
            f"{source}: its evaluation transforms average {is_multicrop(entries)} crops per image "
            f"(augment.eval {name}), which a one-image ONNX graph cannot express; export a model "
            "trained with a single-crop augment.eval"
        )
    built = build_transform(entries, "augment.eval", meta["normalize"])
    return v2.Compose([t for t in built.transforms if not isinstance(t, (v2.ToImage, v2.ToPureTensor))])


def probe_images(n: int = 16) -> torch.Tensor:
    """Fixed uint8 images for the export check: noise, flat colours and gradients."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n // 2, 3, 32, 32), generator=g, dtype=torch.uint8)
    levels = torch.linspace(0, 255, n - n // 2).round().to(torch.uint8)
    flat = levels.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).clone()
    flat[:, 0] = torch.arange(32, dtype=torch.uint8).mul(8).view(1, 1, 32)  # a ramp in the red channel
    return torch.cat([noise, flat])


def _scrub_source_locations(path: Path) -> None:
    """Drop what the exporter records of where each node came from (stack traces and module
    paths in the nodes' metadata and doc strings): they name this checkout's files, so the same
    model exported in two clones would give two different files, and DVC would see a change."""
    import onnx  # lazy: a heavy import that only writing the file needs

    def scrub(nodes) -> None:
        for node in nodes:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    scrub(graph.node)

    model = onnx.load(str(path))
    scrub(model.graph.node)
    for function in model.functions:
        scrub(function.node)
    onnx.save(model, str(path))


def export_onnx(model_path: Path, out: Path, log=print) -> dict:
    """Write `out` (one .onnx file, weights inside); return what the card tells about it."""
    model, meta = load_model(model_path, "cpu")
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    wrapper = PixelsToLogits(model, graph_transform(meta, model_path)).eval()
    example = probe_images(4)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on deprecated internals are not the user's
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                verbose=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
            )
    except Exception as exc:  # torch.export and the translation raise many types; all mean "cannot export"
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ExportError(
            f"{model_path}: cannot be exported to ONNX ({meta['name']}, augment.eval "
            f"{meta['eval_transforms']}): {first}"
        ) from None
    assert program is not None, "dynamo=True returns the ONNXProgram"
    classes = list(meta["classes"])
    mean, std = meta["normalize"].get("mean"), meta["normalize"].get("std")
    program.model.metadata_props.update(
        {
            "classes": json.dumps(classes),
            "input": f"{INPUT}: uint8 RGB, NCHW [batch, 3, 32, 32], 0..255; normalization is inside the graph",
            "output": f"{OUTPUT}: float32 [batch, {len(classes)}], softmax gives probabilities",
            "model": meta["name"],
            "eval_transforms": json.dumps(meta["eval_transforms"]),
            "normalize_mean": json.dumps(mean),
            "normalize_std": json.dumps(std),
            "source": "cifarlab",
        }
    )
    probe = probe_images()
    with torch.no_grad():
        expected = wrapper(probe).float().numpy()
    with atomic_path(out) as tmp:
        program.save(tmp, external_data=False)
        _scrub_source_locations(tmp)
        got = run_onnx(tmp, probe.numpy())
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE * max(1.0, float(np.abs(expected).max())):
            raise ExportError(
                f"{model_path}: the ONNX graph disagrees with PyTorch on the probe images "
                f"(max logit difference {diff:.3g}); nothing written"
            )
    params = sum(p.numel() for p in model.parameters())
    log(
        f"export: {out} ({out.stat().st_size:,} bytes, opset {OPSET}, {params:,} parameters); "
        f"onnxruntime matches PyTorch within {diff:.2g} on {len(probe)} probe images"
    )
    return {
        "onnx": out,
        "onnx_bytes": out.stat().st_size,
        "max_diff": diff,
        "parameters": params,
        "meta": meta,
        "opset": OPSET,
    }


def run_onnx(path: Path, images):
    """Logits of an exported file for uint8 NCHW images, through onnxruntime on the CPU."""
    import onnxruntime as ort  # lazy: a heavy import that only checking the file needs

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images})[0]


# --- the model card ------------------------------------------------------------------------


def _read_json(path: Path, what: str, rebuild: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} missing; run `{rebuild}` (or `dvc pull`)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc}); run `{rebuild}` again") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} is not a JSON object; run `{rebuild}` again")
    return data


def read_report(path: Path) -> dict:
    """The evaluate stage's full report: accuracy, loss, macro and per_class are needed."""
    report = _read_json(path, "evaluation report", "dvc repro evaluate")
    missing = [k for k in ("accuracy", "loss", "macro", "per_class") if k not in report]
    if missing:
        raise DataError(
            f"{path}: not the evaluate stage's full report (no {', '.join(missing)}); "
            "pass the report that holds per-class scores with --report"
        )
    return report


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        raise DataError(f"{path}: index missing; run the index stage (dvc repro index)") from None


def _chosen(section: dict) -> dict:
    """A component section reduced to what was used: its name and that name's arguments."""
    name = section.get("name")
    out = {k: v for k, v in section.items() if not (isinstance(v, dict) and k != name)}
    if isinstance(section.get(name), dict):
        out[name] = section[name]
    return out


def card_params(params: Params, meta: dict) -> dict:
    """The params that made the model, as params.yaml spells them (chosen components only)."""
    d = params.model_dump(mode="json")
    model = {
        k: v
        for k, v in d["model"].items()
        if k not in ("init", "cifarlab", "tutorial", "torchvision") and not (k == "whiten" and not v["enabled"])
    }
    if meta.get("kwargs"):
        model["arguments"] = meta["kwargs"]
    model["init"] = {k: _chosen(v) for k, v in d["model"]["init"].items() if v.get("name") != "default"} or "default"
    return {
        "seed": d["seed"],
        "data": {"batches": d["data"]["batches"]},
        "split": d["split"],
        "model": model,
        "augment": d["augment"],
        "loss": _chosen(d["loss"]),
        "optimizer": _chosen(d["optimizer"]),
        "scheduler": _chosen(d["scheduler"]),
        "train": {k: d["train"][k] for k in ("epochs", "batch_size", "amp", "compile", "nproc")},
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)" if n >= 1e5 else f"{n / 1e3:.1f} kB ({n:,} bytes)"


def render_card(
    *, name: str, model_path: Path, onnx: dict, params: dict, counts: dict[str, int], report: dict, timing: dict
) -> str:
    """The model card, markdown; every number comes from the files the stage read."""
    meta = onnx["meta"]
    lines = [
        f"# Model card: {name}",
        "",
        f"A `{meta['name']}` image classifier for the ten CIFAR-10 classes, trained by cifarlab's DVC "
        "pipeline (`dvc repro`). This card is written by the pipeline's export stage from the model file, "
        "the evaluation report and the training reports; rerunning the pipeline rewrites it.",
        "",
        *_card_model(meta, onnx, model_path, epochs=len(meta.get("history") or []) or params["train"]["epochs"]),
        *_card_params(params),
        *_card_data(params, counts, meta),
        *_card_metrics(report, counts),
        "## Training",
        "",
        f"{_trained(timing)}, on {timing.get('device', 'not recorded')}.",
        "",
        *_card_usage(model_path, onnx["onnx"]),
        *_card_limits(list(meta["classes"]), counts, params),
    ]
    return "\n".join(lines)


def _trained(timing: dict) -> str:
    seconds, ips = timing.get("train_seconds"), timing.get("images_per_second")
    if seconds is None or ips is None:
        return "Training time not recorded"
    minutes = f" ({seconds / 60:.1f} min)" if seconds >= 60 else ""
    return f"{seconds:,.1f} s of training{minutes}, validation excluded, {ips:,.0f} images/s"


def _card_model(meta: dict, onnx: dict, model_path: Path, epochs: int) -> list[str]:
    onnx_path = onnx["onnx"]
    return [
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| architecture | `{meta['name']}`"
        + (f", arguments `{json.dumps(meta['kwargs'])}`" if meta.get("kwargs") else "")
        + " |",
        f"| parameters | {onnx['parameters']:,} |",
        f"| PyTorch file | `{model_path}`, {_size(model_path.stat().st_size)}: a `cifarlab.model/1` dict "
        "(weights, class names, normalization, evaluation transforms), loads with `weights_only=True` |",
        f"| ONNX file | `{onnx_path}`, {_size(onnx['onnx_bytes'])}: opset {onnx['opset']}, weights inside the one file |",
        f"| checkpoint | the best of {epochs} epochs by validation accuracy: epoch {meta.get('epoch')}, "
        f"validation accuracy {_pct(meta['valid_acc']) if meta.get('valid_acc') is not None else 'unknown'} |",
        f"| ONNX check | onnxruntime's logits within {onnx['max_diff']:.1g} of PyTorch's on fixed probe images |",
        "",
    ]


def _card_params(params: dict) -> list[str]:
    import yaml  # only the card needs it at this point

    return [
        "## Params that made it",
        "",
        "From `params.yaml` (`docs/params.md` explains every key):",
        "",
        "```yaml",
        yaml.safe_dump(params, sort_keys=False, default_flow_style=None, width=100).rstrip(),
        "```",
        "",
    ]


def _card_data(params: dict, counts: dict[str, int], meta: dict) -> list[str]:
    split = params["split"]
    mean, std = meta["normalize"].get("mean"), meta["normalize"].get("std")
    return [
        "## Data",
        "",
        f"CIFAR-10 batches {', '.join(params['data']['batches'])}, converted to PNG and split "
        + (
            f"by ratio {split['train']}/{split['valid']}/{split['test']} per class"
            if split["mode"] == "ratio"
            else "with test_batch as the test split"
        )
        + f" (split seed {split['seed']}).",
        "",
        "| split | images |",
        "| --- | --- |",
        *[f"| {k} | {v:,} |" for k, v in counts.items()],
        "",
        f"Normalization (per-channel RGB over the training split): mean {mean}, std {std}.",
        "",
    ]


def _card_metrics(report: dict, counts: dict[str, int]) -> list[str]:
    return [
        "## Test metrics",
        "",
        f"On the {report.get('images', counts.get('test', 0)):,} test images: accuracy **{_pct(report['accuracy'])}**, "
        f"cross-entropy loss {report['loss']:.4f}, macro precision {_pct(report['macro']['precision'])}, "
        f"macro recall {_pct(report['macro']['recall'])}, macro F1 {_pct(report['macro']['f1'])}.",
        "",
        "| class | precision | recall | F1 | test images |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {c} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | {s.get('support', '')} |"
            for c, s in report["per_class"].items()
        ],
        "",
    ]


def _card_usage(model_path: Path, onnx_path: Path) -> list[str]:
    return [
        "## How to use it",
        "",
        "Both take RGB pictures; the ONNX graph takes 32x32 uint8 pixels and does the normalization itself.",
        "",
        "PyTorch, through cifarlab (the model is rebuilt from the registry, normalization is yours to apply):",
        "",
        "```python",
        "import torch",
        "from cifarlab.artifact import load_model",
        "from cifarlab.augment.transforms import build_transform",
        "",
        f'model, meta = load_model("{model_path}")',
        'transform = build_transform(meta["eval_transforms"], "augment.eval", meta["normalize"])',
        "pixels = torch.zeros(3, 32, 32, dtype=torch.uint8)  # a 32x32 RGB picture, CHW",
        "with torch.no_grad():",
        "    logits = model(transform(pixels).unsqueeze(0))",
        'print(meta["classes"][logits.argmax(1).item()])',
        "```",
        "",
        "Or from the command line, for pictures of any size: `cifarlab predict picture.jpg --json`.",
        "",
        "ONNX, through onnxruntime (no torch, no cifarlab):",
        "",
        "```python",
        "import json",
        "import numpy as np",
        "import onnxruntime as ort",
        "from PIL import Image",
        "",
        f'session = ort.InferenceSession("{onnx_path}")',
        'classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])',
        'picture = Image.open("picture.png").convert("RGB").resize((32, 32))',
        f"{INPUT} = np.asarray(picture).transpose(2, 0, 1)[None]  # uint8, [1, 3, 32, 32]",
        f'logits = session.run(["{OUTPUT}"], {{"{INPUT}": {INPUT}}})[0]',
        "print(classes[int(logits.argmax(1)[0])])",
        "```",
        "",
    ]


def _card_limits(classes: list[str], counts: dict[str, int], params: dict) -> list[str]:
    return [
        "## Limits",
        "",
        "- Inputs are 32x32 RGB pictures; anything else must be resized (and converted to RGB) first, which "
        "loses detail the model never learned to use.",
        f"- It knows only CIFAR-10's ten classes ({', '.join(classes)}): any picture is called one of them, "
        'with no "none of these" answer, and its probabilities are not calibrated.',
        f"- It saw {counts.get('train', 0):,} training images from CIFAR-10 batches "
        f"{', '.join(params['data']['batches'])} (small photographs, each centred on one object, collected in 2008); "
        "expect lower accuracy on other kinds of pictures.",
        "- The test metrics above come from one split of that data; they estimate, not guarantee, accuracy.",
        "",
    ]


def run_export(
    params: Params,
    *,
    model_path: Path,
    report_path: Path,
    train_reports: Path,
    index: Path,
    out_dir: Path,
    name: str = "cifar10-classifier",
    log=print,
) -> dict:
    """The export stage: out_dir/model.onnx and out_dir/MODEL_CARD.md."""
    report = read_report(report_path)  # inputs checked before the slow part
    timing = _read_json(train_reports / "timing.json", "training timing", "dvc repro train")
    counts = {split: count_lines(index / f"{split}.txt") for split in ("train", "valid", "test")}
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx(model_path, out_dir / "model.onnx", log)
    card = render_card(
        name=name,
        model_path=model_path,
        onnx=onnx,
        params=card_params(params, onnx["meta"]),
        counts=counts,
        report=report,
        timing=timing,
    )
    write_text(out_dir / "MODEL_CARD.md", card)
    log(f"export: {out_dir / 'MODEL_CARD.md'}")
    return onnx
