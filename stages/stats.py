"""Stage stats: per-channel RGB mean and std over every training image, for Normalize."""

import _path  # noqa: F401

from cifarlab.pipeline.stats import write_stats
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--index", required=True, help="the training index (train.txt)")
    p.add_argument("--out", required=True, help="the normalize.json to write (per-channel mean and std)")
    args = p.parse_args(argv)
    write_stats(args.index, args.out)


if __name__ == "__main__":
    main()
