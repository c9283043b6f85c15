#!/usr/bin/env bash
# Refresh constraints.txt from the current .venv after a deliberate upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."
{ head -2 constraints.txt; .venv/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages"
