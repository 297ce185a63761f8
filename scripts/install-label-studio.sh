#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own cached virtual environment (its rq/redis pins clash with ours).
#   LS_VENV (default ~/.cache/rubric-judge/label-studio-1.23.2); prints the venv path on stdout.
set -euo pipefail
LS_VERSION="1.23.2"
LS_VENV="${LS_VENV:-$HOME/.cache/rubric-judge/label-studio-$LS_VERSION}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ -x "$LS_VENV/bin/label-studio" ] && [ -f "$LS_VENV/.installed-$LS_VERSION" ]; then
  echo "$LS_VENV"
  exit 0
fi
echo "install-label-studio: installing label-studio==$LS_VERSION into $LS_VENV (about 3 minutes, 1 GB)" >&2
rm -rf "$LS_VENV"
mkdir -p "$(dirname "$LS_VENV")"
"$PYTHON" -m venv "$LS_VENV"
"$LS_VENV/bin/pip" install --quiet --upgrade pip >&2
"$LS_VENV/bin/pip" install --quiet "label-studio==$LS_VERSION" >&2
touch "$LS_VENV/.installed-$LS_VERSION"
echo "$LS_VENV"
