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
# The native frame extractor (native/, Rust: boxcars + pyo3, built by maturin from PyPI):
# rebuilt only when its sources change. Needs cargo (rustup's ~/.cargo/bin is looked at too).
native_stamp=".venv/.rlimpact-native-installed"
native_want="$(find native -path native/target -prune -o -type f -print | LC_ALL=C sort \
    | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$native_stamp" || "$(cat "$native_stamp")" != "$native_want" ]] \
    || ! .venv/bin/python -c 'import rlimpact_native' 2>/dev/null; then
    export PATH="$PATH:$HOME/.cargo/bin"
    command -v cargo >/dev/null \
        || { echo "setup: cargo (Rust >= 1.88) is required to build native/ (rustup.rs)" >&2; exit 1; }
    echo "setup: building the native extractor (native/, release; first build takes minutes)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check ./native
    echo "$native_want" >"$native_stamp"
fi
