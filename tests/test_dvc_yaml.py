"""dvc.yaml must declare exactly the code each stage runs, or DVC reruns too much or too little."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
DATA_STAGES = ["unpack", "split", "index", "stats"]

from code_deps import closure


@pytest.mark.parametrize("name", list(DVC))
def test_code_deps_are_exactly_the_imported_modules(name):
    stage = DVC[name]
    script = stage["cmd"].split()[1]
    declared = {d for d in stage["deps"] if d.endswith(".py")}
    expected = closure(ROOT / script) | {script}
    assert declared == expected, (
        f"stage {name}: missing from dvc.yaml deps: {sorted(expected - declared)}; "
        f"declared but not imported: {sorted(declared - expected)}")


@pytest.mark.parametrize("name", DATA_STAGES)
def test_data_stages_do_not_import_torch(name):
    script = ROOT / DVC[name]["cmd"].split()[1]
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'stages')!r}); import runpy; "
            f"runpy.run_path({str(script)!r}, run_name='probe'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{name} imports torch (1-4 s of start-up for nothing)"
