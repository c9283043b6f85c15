"""Stage split: train/valid/test folders of links to the PNG files, per class, seeded."""

import _path  # noqa: F401

from cifarlab.params import load_params
from cifarlab.pipeline.split import split
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--png", required=True, help="the unpacked PNG tree (one folder per class)")
    p.add_argument("--meta", required=True, help="meta.json from the unpack stage (the class names)")
    p.add_argument("--out", required=True, help="output folder: train/, valid/, test/ of hard links")
    args = p.parse_args(argv)
    s = load_params(args.params).split
    split(args.png, args.meta, args.out, mode=s.mode, train=s.train, valid=s.valid, test=s.test, seed=s.seed)


if __name__ == "__main__":
    main()
