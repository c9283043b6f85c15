"""Stage export: the trained model as one ONNX file (uint8 pixels in, logits out, the
normalization inside the graph), checked against PyTorch with onnxruntime, and its model
card (size, params, data, test metrics per class, training time, how to load it, limits)."""

from pathlib import Path

import _path  # noqa: F401

from cifarlab.params import load_params
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="the model file from the train stage")
    p.add_argument(
        "--report", required=True, help="the evaluate stage's full report (accuracy, loss, macro and per_class scores)"
    )
    p.add_argument(
        "--train-reports", required=True, help="the train stage's report folder (timing.json: training time and device)"
    )
    p.add_argument(
        "--index", required=True, help="the index folder (train.txt, valid.txt, test.txt: the split's counts)"
    )
    p.add_argument("--out", required=True, help="output folder: model.onnx and MODEL_CARD.md")
    args = p.parse_args(argv)
    params = load_params(args.params)

    from cifarlab.pipeline.export import run_export

    run_export(
        params,
        model_path=Path(args.model),
        report_path=Path(args.report),
        train_reports=Path(args.train_reports),
        index=Path(args.index),
        out_dir=Path(args.out),
    )


if __name__ == "__main__":
    main()
