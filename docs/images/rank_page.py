"""Takes docs/images/rank-page.png: the rank page (rlaif rank serve) on a sample task, in Debian's Chromium.

    .venv/bin/python docs/images/rank_page.py
"""

import json
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))
from test_rank_serve import serving  # the app on a free port, as the browser tests start it

TASK = {"id": "haiku-1", "prompt": [{"role": "user", "content": "Write a haiku about autumn."}],
        "responses": ["Leaves let go of light\nthe maple counts its red coins\nwind spends them on roads",
                      "Autumn is a season. Leaves fall down. It is cold."]}

folder = Path(tempfile.mkdtemp())
(folder / "tasks.jsonl").write_text(json.dumps(TASK) + "\n")
with serving(folder) as url, sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(url + "/?annotator=ana")
    page.wait_for_timeout(800)  # past the pause that follows a new task
    page.fill("textarea", "A is a real haiku (5-7-5).")
    page.screenshot(path=str(HERE / "rank-page.png"))
    browser.close()
print(HERE / "rank-page.png")
