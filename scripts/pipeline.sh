#!/usr/bin/env bash
# Run the whole pipeline on real CIFAR-10: set up, put the archive in place, dvc repro.
#   bash scripts/pipeline.sh            # the official archive: dvc pull if a remote has it, else download
#   bash scripts/pipeline.sh --shared   # no internet: build the archive from ../shared/cifar10 (10,000 test images)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "${1:-}" = "--shared" ]; then
  built=build/cifar-10-python.tar.gz
  if [ ! -f "$built" ]; then
    mkdir -p build
    python ../shared/cifar10/build_archive.py --test-only "$built"
  fi
  cifarlab get-archive --from "$built" --set-md5
elif [ ! -f data/cifar-10-python.tar.gz ]; then
  dvc pull -q data/cifar-10-python.tar.gz.dvc 2>/dev/null || cifarlab get-archive
fi
dvc repro
dvc metrics show 2>/dev/null || true
if ! git ls-files --error-unmatch dvc.lock >/dev/null 2>&1; then
  echo "pipeline: dvc.lock was never committed. Commit this run as the baseline that experiments"
  echo "          are compared with (dvc exp show, dvc metrics diff):"
  echo '          git add -A && git commit -m "Baseline: the default params"'
fi
