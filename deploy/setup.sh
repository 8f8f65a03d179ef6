#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs rlimpact into it, pinned, editable.
#   deploy/setup.sh                 the services without the trainer (small: no torch)
#   deploy/setup.sh trainer,dev     everything, as the tests need (torch is several GB)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
EXTRAS="${1:-}"
PYTHON="${RLIMPACT_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
    || { echo "setup: Python 3.11 is required (set RLIMPACT_PYTHON)" >&2; exit 1; }
cd "$REPO_ROOT"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
target="."
[[ -n "$EXTRAS" ]] && target=".[${EXTRAS}]"
# Re-install only when pyproject.toml or the extras changed.
stamp=".venv/.rlimpact-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
    echo "$want" >"$stamp"
fi
