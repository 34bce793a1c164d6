#!/usr/bin/env bash
# Render a `momil report` page in headless Chromium (Debian's `chromium`) to a PNG screenshot.
#
#   bash scripts/screenshot_report.sh BENCH/report.html docs/report.png [WIDTH HEIGHT]
#
# Needs Debian's chromium (`apt-get install chromium`); nothing is fetched: the page is offline (figures
# embedded) and the flags below keep Chromium off the network.
set -euo pipefail
page=${1:?usage: screenshot_report.sh REPORT.html OUT.png [WIDTH HEIGHT]}
out=${2:?usage: screenshot_report.sh REPORT.html OUT.png [WIDTH HEIGHT]}
width=${3:-1200}
height=${4:-2400}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "screenshot_report: no chromium on PATH -- install Debian's package: apt-get install chromium" >&2
    exit 2
fi
if [ ! -f "$page" ]; then
    echo "screenshot_report: $page: no such report -- run \`momil report BENCH\` first" >&2
    exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --window-size="$width,$height" --screenshot="$(realpath -m "$out")" "file://$(realpath "$page")" 2>/dev/null
test -s "$out"
echo "screenshot of $page written to $out"
