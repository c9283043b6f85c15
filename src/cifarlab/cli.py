"""The `cifarlab` command: the steps that are not pipeline stages.

`get-archive` runs before `dvc repro` (DVC stops when a dependency is missing); `predict`
classifies pictures with a trained model. Each subcommand imports only what it needs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifarlab.errors import CifarlabError


def _get_archive(args) -> None:
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


def _predict(args) -> None:
    from cifarlab.predict import predict_files

    for path, top in predict_files(args.model, args.images, args.top_k, args.device):
        print(f"{path}: " + ", ".join(f"{cls} {p:.1%}" for cls, p in top))


def _tensorboard_gather(args) -> None:
    from cifarlab.gather import gather, remove_stale

    done = gather(args.out, args.experiments or None, repo=args.repo)
    if args.clean:
        remove_stale(Path(args.out), list(done))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cifarlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("get-archive", help="download or copy the CIFAR-10 archive into place and `dvc add` it",
                       description="Online: download fetch.url and check data.md5. Offline: --from a local copy.")
    g.add_argument("--from", dest="source", help="copy this archive instead of downloading")
    g.add_argument("--md5", help="expect this md5 instead of data.md5 ('null' skips the check) and write it to params.yaml")
    g.add_argument("--set-md5", action="store_true",
                   help="write the archive's actual md5 to params.yaml data.md5 (for a non-official archive you trust)")
    g.add_argument("--no-dvc", action="store_true", help="do not run `dvc add` on it")
    g.add_argument("--params", default="params.yaml")
    g.set_defaults(func=_get_archive)

    t = sub.add_parser("tensorboard-gather", help="copy DVC experiments' TensorBoard runs into one folder to compare",
                       description="Copy reports/tensorboard/{train,visualize} of each experiment (through DVC: "
                       "from the cache or remote, nothing is checked out) to OUT/<experiment>/{train,visualize}; "
                       "then `tensorboard --logdir OUT` shows them side by side with their hparams.")
    t.add_argument("out", help="the folder to gather into (created if missing)")
    t.add_argument("experiments", nargs="*",
                   help="experiment names, branches, tags, commits or 'workspace'; default: all that "
                   "`dvc exp show` lists (the workspace, the baseline and its experiments)")
    t.add_argument("--repo", default=".", help="the DVC repository (default: the current folder)")
    t.add_argument("--clean", action="store_true", help="also delete folders under OUT of experiments not gathered now")
    t.set_defaults(func=_tensorboard_gather)

    pr = sub.add_parser("predict", help="the top-k classes of pictures of any size, with a trained model",
                        description="Classify image files (any size or mode: converted to 32x32 RGB).")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--model", default="models/model.pt", help="a model file from the train stage")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_predict)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except CifarlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
