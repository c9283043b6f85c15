"""Stage train: assemble model, loss, optimizer, scheduler and augmentation from params.yaml,
train on the train index, validate every epoch, write the models, history, metrics and a
TensorBoard run. Interrupted? Rerun `dvc repro`: it resumes from checkpoints/."""

import sys
from pathlib import Path

import _path  # noqa: F401

from cifarlab.params import load_params
from cifarlab.stage import parser, stage


@stage(resume="training resumes from the checkpoint of its last finished epoch")
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--index", required=True, help="folder with train.txt and valid.txt")
    p.add_argument("--stats", required=True, help="normalize.json from the stats stage (mean and std for Normalize)")
    p.add_argument("--meta", required=True, help="meta.json from the unpack stage (the class names)")
    p.add_argument("--models", required=True, help="output folder: model.pt (best) and last.pt")
    p.add_argument(
        "--reports", required=True, help="output folder: history.csv, metrics.json, timing.json, summary.txt"
    )
    p.add_argument("--tensorboard", required=True, help="output folder for the TensorBoard run")
    p.add_argument(
        "--checkpoints",
        default="checkpoints",
        help="folder of resumable per-epoch checkpoints, outside DVC's outputs (default: checkpoints)",
    )
    args = p.parse_args(argv)
    params = load_params(args.params)  # fail on a bad param before importing torch

    from cifarlab.pipeline.train import Paths, run

    index = Path(args.index)
    run(
        params,
        Paths(
            train_index=index / "train.txt",
            valid_index=index / "valid.txt",
            stats=Path(args.stats),
            meta=Path(args.meta),
            models=Path(args.models),
            reports=Path(args.reports),
            tensorboard=Path(args.tensorboard),
            checkpoints=Path(args.checkpoints),
        ),
        script=__file__,
        argv=sys.argv[1:] if argv is None else argv,
    )


if __name__ == "__main__":
    main()
