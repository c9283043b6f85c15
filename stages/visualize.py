"""Stage visualize: the pictures of tutorial chapter 4 for the trained model, any architecture:
training curves, confusion matrix, per-class precision and recall, kernels, feature maps,
weight and gradient distributions, Grad-CAM, the model summary (reports/figures), and the
stage's own TensorBoard run (images, graph, embedding, PR curves, text, figures, histograms)."""

from pathlib import Path

import _path  # noqa: F401

from cifarlab.params import load_params
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="the model file from the train stage")
    p.add_argument("--index", required=True, help="the index folder (train.txt, valid.txt, test.txt)")
    p.add_argument("--stats", required=True, help="normalize.json, for augment.train's Normalize")
    p.add_argument("--report", required=True, help="the evaluate stage's report.json")
    p.add_argument("--layers", help="the train stage's layers.csv (per-layer diagnostics), drawn as a heat map")
    p.add_argument("--figures", required=True, help="output folder for the pictures")
    p.add_argument("--tensorboard", required=True, help="output folder for the TensorBoard run")
    args = p.parse_args(argv)
    params = load_params(args.params)

    from cifarlab.pipeline.visualize import VizPaths, run_visualize

    index = Path(args.index)
    run_visualize(
        params,
        VizPaths(
            model=Path(args.model),
            train_index=index / "train.txt",
            test_index=index / "test.txt",
            stats=Path(args.stats),
            report=Path(args.report),
            figures=Path(args.figures),
            tensorboard=Path(args.tensorboard),
            valid_index=index / "valid.txt",
            layers=Path(args.layers) if args.layers else None,
        ),
    )


if __name__ == "__main__":
    main()
