"""The `cifarlab` command: the steps that are not pipeline stages.

`get-archive` runs before `dvc repro` (DVC stops when a dependency is missing); `predict`
and `export` use a trained model; `tensorboard-gather` compares experiments; `lr-find` runs
the LR range test. Each
subcommand imports only what it needs, so `cifarlab --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifarlab.errors import CifarlabError

DESCRIPTION = """\
cifarlab trains CIFAR-10 image classifiers with a DVC pipeline: `dvc repro` builds the data,
trains, evaluates and exports the model; `dvc exp run -S key=value` runs an experiment.
This command does what happens around the pipeline. `cifarlab COMMAND --help` explains
a command; the README has the whole workflow."""

EPILOG = """\
examples:
  cifarlab get-archive --from ~/Downloads/cifar-10-python.tar.gz
  cifarlab predict photo.jpg --top-k 3 --json
  cifarlab export --out model.onnx
  cifarlab lr-find --steps 300"""


def _get_archive(args) -> None:
    # lazy: each subcommand imports only what it needs, so `cifarlab --help` answers at once
    from cifarlab.archive.fetch import get_archive, set_params_md5
    from cifarlab.params import load_params

    params = load_params(args.params)
    md5 = params.data.md5
    if args.md5 is not None:
        md5 = None if args.md5 in ("null", "none", "") else args.md5.lower()
    if args.set_md5:
        md5 = None  # the archive is trusted as it is; its md5 becomes the expected one
    actual = get_archive(params.data.archive, params.fetch.url, md5, source=args.source, dvc_add=not args.no_dvc)
    if args.md5 is not None or args.set_md5:
        new = actual if args.set_md5 else md5
        if new != params.data.md5:
            set_params_md5(Path(args.params), new)
            print(f"params.yaml: data.md5 set to {new or 'null'}")


def _predict(args) -> int:
    """One line per file, in order; a file that fails is reported and the rest still run.

    Exit status: 0 when every file was classified, 1 when any file (or the model) failed.
    """
    # lazy: each subcommand imports only what it needs, so `cifarlab --help` answers at once
    from cifarlab.predict import predict_each

    failed = 0
    for path, top, error in predict_each(args.model, args.images, args.top_k, args.device):
        if args.json:
            record = (
                {"path": path, "error": error}
                if top is None
                else {"path": path, "top_k": [{"class": c, "probability": round(p, 6)} for c, p in top]}
            )
            print(json.dumps(record), flush=True)
        elif top is None:
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            print(f"{path}: " + ", ".join(f"{cls} {p:.1%}" for cls, p in top), flush=True)
        failed += error is not None
    return 1 if failed else 0


def _export(args) -> None:
    # lazy: each subcommand imports only what it needs, so `cifarlab --help` answers at once
    from cifarlab.pipeline.export import export_onnx

    export_onnx(Path(args.model), Path(args.out))


def _tensorboard_gather(args) -> None:
    # lazy: each subcommand imports only what it needs, so `cifarlab --help` answers at once
    from cifarlab.gather import gather, remove_stale

    done = gather(args.out, args.experiments or None, repo=args.repo)
    if args.clean:
        remove_stale(Path(args.out), list(done))


def _lr_find(args) -> None:
    # lazy: each subcommand imports only what it needs, so `cifarlab --help` answers at once
    from cifarlab.lr_find import lr_find
    from cifarlab.params import load_params

    params = load_params(args.params)
    data = Path(args.data)
    result = lr_find(
        params,
        out=Path(args.out),
        index=data / "index/train.txt",
        stats=data / "stats/normalize.json",
        meta=data / "meta.json",
        start=args.start,
        end=args.end,
        steps=args.steps,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(
        f"suggested maximum lr: {result['suggested_lr']:g} ({result['rule']}; lowest smoothed loss "
        f"{result['min_smoothed_loss']:.3f} at lr {result['lr_at_min_loss']:.3g})"
    )
    print(f"plot and numbers: {Path(args.out) / 'lr_find.png'}, {Path(args.out) / 'lr_find.json'}")
    print(result["command"])


def version() -> str:
    """The installed package's version (pyproject.toml's), or a note when run from a bare source tree."""
    # lazy: only --version asks
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("cifarlab")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _add_get_archive(sub) -> None:
    g = sub.add_parser(
        "get-archive",
        help="put the CIFAR-10 archive in place (download or copy, then `dvc add`) before the first `dvc repro`",
        description="Online: download fetch.url and check data.md5. Offline: --from a local copy.",
    )
    g.add_argument("--from", dest="source", help="copy this archive instead of downloading")
    g.add_argument(
        "--md5", help="expect this md5 instead of data.md5 ('null' skips the check) and write it to params.yaml"
    )
    g.add_argument(
        "--set-md5",
        action="store_true",
        help="write the archive's actual md5 to params.yaml data.md5 (for a non-official archive you trust)",
    )
    g.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on it")
    g.add_argument(
        "--params",
        default="params.yaml",
        help="the params file holding data.archive, data.md5 and fetch.url (default: params.yaml)",
    )
    g.set_defaults(func=_get_archive)


def _add_predict(sub) -> None:
    pr = sub.add_parser(
        "predict",
        help="classify your own pictures (any size) with a trained model",
        description="Classify image files (any size or mode: converted to RGB, resized and "
        "centre-cropped to 32x32, then the model's own evaluation transforms). One line per "
        "file, in order; an unreadable file is reported and the others still run. Exit status: "
        "0 when every file was classified, 1 when any file or the model failed.",
    )
    pr.add_argument("images", nargs="+", help="image files (PNG, JPEG, anything Pillow reads)")
    pr.add_argument(
        "--model", default="models/model.pt", help="a model file from the train stage (default: %(default)s)"
    )
    pr.add_argument(
        "--top-k",
        type=int,
        default=3,
        help="how many classes to show per file, most likely first (default: %(default)s)",
    )
    pr.add_argument(
        "--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, mps (default: %(default)s)"
    )
    pr.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line and file: {"path", "top_k": [{"class", "probability"}]}, '
        'or {"path", "error"} for a file that failed',
    )
    pr.set_defaults(func=_predict)


def _add_export(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="write a trained model as one ONNX file, for use without PyTorch",
        description="Export a model file to ONNX (opset 18, weights inside the one file): input "
        "`images`, uint8 RGB NCHW [batch, 3, 32, 32]; output `logits` [batch, classes]; the "
        "model's normalization is inside the graph and the class names are in its metadata. "
        "The file is checked against PyTorch with onnxruntime before it is written. The "
        "pipeline's export stage does the same and adds a model card (export/MODEL_CARD.md).",
    )
    ex.add_argument(
        "--model", default="models/model.pt", help="a model file from the train stage (default: %(default)s)"
    )
    ex.add_argument("--out", required=True, help="the .onnx file to write (replaced atomically)")
    ex.set_defaults(func=_export)


def _add_tensorboard_gather(sub) -> None:
    t = sub.add_parser(
        "tensorboard-gather",
        help="collect the TensorBoard runs of DVC experiments into one folder to compare them",
        description="Copy reports/tensorboard/{train,visualize} of each experiment (through DVC: "
        "from the cache or remote, nothing is checked out) to OUT/<experiment>/{train,visualize}; "
        "then `tensorboard --logdir OUT` shows them side by side with their hparams.",
    )
    t.add_argument("out", help="the folder to gather into (created if missing)")
    t.add_argument(
        "experiments",
        nargs="*",
        help="experiment names, branches, tags, commits or 'workspace'; default: all that "
        "`dvc exp show` lists (the workspace, the baseline and its experiments)",
    )
    t.add_argument("--repo", default=".", help="the DVC repository (default: the current folder)")
    t.add_argument("--clean", action="store_true", help="also delete folders under OUT of experiments not gathered now")
    t.set_defaults(func=_tensorboard_gather)


def _add_lr_find(sub) -> None:
    lf = sub.add_parser(
        "lr-find",
        help="the LR range test: suggest a maximum learning rate for optimizer.lr",
        description="Train a fresh copy of the configured model (params.yaml) for a few hundred "
        "steps while the lr rises exponentially from --start to --end; write the loss against "
        "the lr (log x axis, smoothed) to OUT/lr_find.png and the suggestion to OUT/lr_find.json, "
        "and print the `dvc exp run -S optimizer.lr=...` line that uses it. Rule: one tenth of the "
        "lr at the lowest smoothed loss. Needs the data stages' outputs (dvc repro stats); "
        "touches no pipeline output.",
    )
    lf.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    lf.add_argument(
        "--data", default="data", help="the folder with index/, stats/ and meta.json (default: %(default)s)"
    )
    lf.add_argument("--out", default="reports/lr_find", help="where to write the plot and JSON (default: %(default)s)")
    lf.add_argument("--steps", type=int, default=300, help="training steps of the sweep (default: %(default)s)")
    lf.add_argument("--start", type=float, default=1e-6, help="the first lr (default: %(default)s)")
    lf.add_argument("--end", type=float, default=10.0, help="the last lr (default: %(default)s)")
    lf.set_defaults(func=_lr_find)


def build_parser() -> argparse.ArgumentParser:
    """The `cifarlab` command line: one `_add_*` per subcommand, each binding its function."""
    parser = argparse.ArgumentParser(
        prog="cifarlab", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=f"cifarlab {version()}", help="print cifarlab's version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    _add_get_archive(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_tensorboard_gather(sub)
    _add_lr_find(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except CifarlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
