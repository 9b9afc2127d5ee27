"""report.html: embedded, escaped, and working in a real browser (headless Chromium)."""

import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from labelclean import RunConfig, audit
from labelclean.review.html import build_report

EVIL = '<script>document.title="PWNED"</script><img src=x onerror="document.body.dataset.pwned=1">'


@pytest.fixture
def evil_run(tiny, tmp_path):
    frame = pd.read_csv(tiny.csv)
    frame["label"] = frame["label"].replace({"fox": EVIL})
    frame.to_csv(tiny.csv.parent / "evil.csv", index=False)
    result = audit(RunConfig(dataset=str(tiny.csv.parent / "evil.csv"), out=str(tmp_path / "run"),
                             backbone="test_tiny", epochs=4, batch_size=12, lr=0.1, image_size=12,
                             threshold=0.3))
    return result


def test_report_is_self_contained_and_escapes_labels(evil_run):
    page = (evil_run.run_dir / "report.html").read_text()
    assert "report.html" in evil_run.summary["outputs"]
    assert EVIL not in page and '<script>document.title="PWNED"' not in page
    assert "&lt;script&gt;document.title=&#34;PWNED&#34;&lt;/script&gt;" in page  # escaped text
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert page.count("data:image/png;base64,") >= 1
    n_flagged = int(evil_run.scores["is_suspect"].sum())
    assert n_flagged > 0 and f'"flagged": {n_flagged}' in page


def test_report_caps_thumbnails(evil_run, tmp_path):
    dest = build_report(evil_run.run_dir, tmp_path / "small.html", max_cards=2)
    page = dest.read_text()
    assert '"shown": 2' in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _dump_dom(browser: str, url: str, tmp_path, screenshot=None) -> str:
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000"]
    if screenshot:
        args += [f"--screenshot={screenshot}", "--window-size=1280,1400"]
    else:
        args += ["--dump-dom"]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    return done.stdout


def test_report_in_headless_chromium(evil_run, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Chromium (see .ci/run), but it was not found")
        pytest.skip("Chromium is not installed (apt-get install chromium) and this is not CI")
    url = (evil_run.run_dir / "report.html").as_uri()
    dom = _dump_dom(browser, url, tmp_path)
    cards = re.findall(r'<div class="card" data-given="([^"]*)"', dom)
    assert len(cards) == min(48, int(evil_run.scores["is_suspect"].sum()))
    # A filter in the URL hash changes what the grid shows.
    plain = sorted(c for c in set(cards) if c in ("cat", "dog"))
    assert plain, "expected flagged cat or dog samples"
    target = plain[0]
    filtered = re.findall(r'<div class="card" data-given="([^"]*)"', _dump_dom(browser, f"{url}#class={target}", tmp_path))
    expected = int(((evil_run.scores["given_label"] == target) & evil_run.scores["is_suspect"]).sum())
    assert filtered and set(filtered) == {target} and len(filtered) == min(48, expected)
    # The malicious label is text in the DOM, and neither its script nor its handler ran.
    assert "&lt;script&gt;document.title" in dom
    assert "<title>PWNED" not in dom and "data-pwned" not in dom
    shot = tmp_path / "report.png"
    _dump_dom(browser, url, tmp_path, screenshot=shot)
    assert shot.is_file() and shot.stat().st_size > 10_000

