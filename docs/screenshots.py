"""The README's screenshot, taken from a running demo (``make run``) in a real Chromium.

Logs in as the demo annotator ``alice`` (password from the credentials file ``seed_demo`` wrote), opens the
demo helpfulness batch, takes the next pair from the queue (sampled from the demo policy), picks A and
"better" with the keyboard, and saves the page:

    make run                                   # in one terminal
    .venv/bin/python docs/screenshots.py       # in another: writes docs/screenshot-comparison.png

Options: ``--url`` (default http://127.0.0.1:8000), ``--credentials`` (default .local/demo-credentials.txt),
``--out``. Needs Debian's Chromium (``apt-get install chromium``), as the browser tests do.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--credentials", default=str(ROOT / ".local" / "demo-credentials.txt"))
    parser.add_argument("--user", default="alice")
    parser.add_argument("--batch", default="Demo helpfulness, week 1")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot-comparison.png"))
    args = parser.parse_args()
    try:
        saved = dict(line.split(" ", 1) for line in Path(args.credentials).read_text().splitlines() if " " in line)
    except OSError as exc:
        sys.exit(f"cannot read the demo credentials ({exc}); start the demo with `make run` first")
    if args.user not in saved:
        sys.exit(f"{args.credentials} has no password for {args.user}")

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(20_000)
        page.goto(f"{args.url}/accounts/login/")
        page.fill("#id_username", args.user)
        page.fill("#id_password", saved[args.user])
        page.keyboard.press("Enter")
        page.wait_for_url(f"{args.url}/")
        page.get_by_role("link", name=re.compile(re.escape(args.batch))).first.click()
        expect(page.locator("#label-form")).to_be_visible()
        page.keyboard.press("a")
        page.keyboard.press("2")
        expect(page.locator('input[name="chosen"][data-key="a"]')).to_be_checked()
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")  # noqa: T201  (a command-line tool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
