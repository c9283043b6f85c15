"""Stage index: data/index/{train,valid,test}.txt, one `path label` line per image."""
import _path  # noqa: F401

from cifarlab.data.index import write_indexes
from cifarlab.data.layout import read_meta
from cifarlab.stage import parser, stage


@stage
def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--split", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    write_indexes(args.split, read_meta(args.meta)["classes"], args.out)


if __name__ == "__main__":
    main()
