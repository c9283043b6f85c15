"""`python -m cifarlab`: the same command as `cifarlab`."""

import sys

from cifarlab.cli import main

sys.exit(main())
