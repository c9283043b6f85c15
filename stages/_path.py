"""Make `import cifarlab` load this checkout's src/, the code dvc.yaml hashes as deps.

Without this, an installed copy of the package elsewhere could run instead of the files DVC
tracks, and a change to src/ would rerun a stage with the old code.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
