"""Stage unpack: the archive's batches (data.batches) as PNG files, one folder per class."""

import _path  # noqa: F401

from cifarlab.params import load_params
from cifarlab.pipeline.unpack import unpack
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--out", required=True, help="the PNG tree")
    p.add_argument("--meta", required=True, help="class names and batch ranges (JSON)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    unpack(params.data.archive, params.data.batches, args.out, args.meta, md5=params.data.md5)


if __name__ == "__main__":
    main()
