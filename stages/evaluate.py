"""Stage evaluate: the best model on the test index: accuracy, loss, per-class precision,
recall and F1, macro averages, and the confusion matrix as counts and as DVC plot data."""

from pathlib import Path

import _path  # noqa: F401

from cifarlab.params import load_params
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="the model file from the train stage")
    p.add_argument("--index", required=True, help="the test index")
    p.add_argument("--out", required=True, help="report folder")
    args = p.parse_args(argv)
    params = load_params(args.params)

    from cifarlab.pipeline.evaluate import run_evaluation

    run_evaluation(Path(args.model), Path(args.index), Path(args.out), params)


if __name__ == "__main__":
    main()
