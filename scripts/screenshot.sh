#!/usr/bin/env bash
# Screenshot a page (URL or local HTML file) with headless Chromium at 1280 px width.
#   scripts/screenshot.sh <url-or-file> <out.png> [height=2400]
# Needs Debian's chromium (apt-get install chromium). No network access is attempted beyond the page itself.
set -euo pipefail
target="$1"; out="$2"; height="${3:-2400}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
  echo "screenshot: no chromium found; install it with: apt-get install chromium" >&2
  exit 1
fi
if [ -f "$target" ]; then target="file://$(realpath "$target")"; fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --disable-quic --hide-scrollbars --user-data-dir="$profile" \
  --window-size=1280,"$height" --screenshot="$(realpath -m "$out")" "$target" >/dev/null 2>&1
test -s "$out" || { echo "screenshot: chromium wrote no image for $target" >&2; exit 1; }
echo "$out"
