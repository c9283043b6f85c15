"""Stage index: data/index/{train,valid,test}.txt, one `path label` line per image."""

import _path  # noqa: F401

from cifarlab.pipeline import index
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--split", required=True, help="the split folder (train/, valid/, test/ of class folders)")
    p.add_argument("--meta", required=True, help="meta.json from the unpack stage (the class names)")
    p.add_argument("--out", required=True, help="output folder: train.txt, valid.txt, test.txt")
    args = p.parse_args(argv)
    index.run(args.split, args.meta, args.out)


if __name__ == "__main__":
    main()
