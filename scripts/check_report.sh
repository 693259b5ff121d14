#!/usr/bin/env bash
# Open a sweep report in headless Chromium, as a user would offline, and check that the charts are drawn:
# no console message (an error in the page's script, a resource it could not load), the script ran to its
# end, each section's SVG holds marks after it ran, and the screenshot is not a blank page.
#   bash scripts/check_report.sh runs/<sweep> [screenshot.png]     # or the report.html itself
# Needs Debian's chromium (apt-get install -y chromium); the screenshot goes beside the report by default.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/check_report.sh runs/<sweep>|report.html [screenshot.png]}
[[ -d $target ]] && target=$target/report.html
[[ -f $target ]] || { echo "no report at $target (write one with: python sweep.py --report runs/<sweep>)" >&2; exit 2; }
shot=$(realpath -m "${2:-${target%.html}.png}")
browser=$(command -v chromium || command -v chromium-browser) \
  || { echo "no chromium: apt-get install -y chromium" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url="file://$(realpath "$target")"
# A fresh profile per run; the virtual time budget lets the inline script finish before the DOM is read.
flags=(--headless --disable-gpu --no-sandbox --hide-scrollbars --user-data-dir="$work/profile"
       --window-size=1280,4200 --virtual-time-budget=3000 --enable-logging=stderr --v=0)
timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" >"$work/dom.html" 2>"$work/dom.log"
timeout 120 "$browser" "${flags[@]}" --screenshot="$shot" "$url" >/dev/null 2>"$work/shot.log"
if grep -h "CONSOLE" "$work/dom.log" "$work/shot.log"; then
  echo "FAIL: the page wrote to the console (above)" >&2
  exit 1
fi
.venv/bin/python - "$work/dom.html" "$shot" <<'EOF'
import sys
from html.parser import HTMLParser

import numpy as np
from PIL import Image


class Marks(HTMLParser):
    """Counts the SVG marks (paths, polylines, circles, bars) in each section of the rendered DOM."""

    def __init__(self):
        super().__init__()
        self.section, self.marks, self.ready = None, {}, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs.get("id")
            self.marks.setdefault(self.section, 0)
        elif tag in ("path", "polyline", "circle", "rect"):
            self.marks[self.section] = self.marks.get(self.section, 0) + 1
        elif tag == "body":
            self.ready = attrs.get("data-ready") == "yes"


dom, shot = sys.argv[1], sys.argv[2]
page = Marks()
page.feed(open(dom, encoding="utf-8").read())
problems = [] if page.ready else ["the page's script did not run to its end (body lacks data-ready)"]
charts = ("best", "curves", "history", "parallel", "importance", "pruning")
for section in charts:
    count = page.marks.get(section)
    if count is None:
        problems.append(f"section #{section} is missing")
    elif count == 0 and section != "importance":  # importance may say "too few trials" instead of bars
        problems.append(f"section #{section} has no chart marks")
image = Image.open(shot).convert("RGB")
pixels = np.asarray(image.resize((image.width // 4, image.height // 4))).reshape(-1, 3)
ink = float((pixels.min(axis=1) < 235).mean())
colours = len(np.unique(pixels, axis=0))
if ink < 0.02 or colours < 16:
    problems.append(f"the screenshot looks blank ({ink:.1%} non-white pixels, {colours} colours)")
print(f"{shot}: {image.width}x{image.height}, {ink:.1%} non-white, {colours} colours; marks per section: "
      + ", ".join(f"{s} {page.marks.get(s, 0)}" for s in charts))
for problem in problems:
    print("FAIL:", problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo "OK: $target renders offline with every chart drawn and no console message"
