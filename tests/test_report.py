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


def test_many_classes_draw_the_most_confused_and_the_most_flagged(evil_run, tmp_path, monkeypatch):
    import numpy as np

    from labelclean.review import html

    values = np.array([[0.9, 0.0, 0.1], [0.0, 1.0, 0.0], [0.3, 0.0, 0.7]])
    assert html.most_confused(values, 2).tolist() == [0, 2]  # class 1 is never confused
    assert html.most_confused(values, 3).tolist() == [0, 1, 2]
    full = build_report(evil_run.run_dir, tmp_path / "full.html").read_text()
    assert "classes with the most" not in full
    monkeypatch.setattr(html, "HEAT_MAX_CLASSES", 2)
    monkeypatch.setattr(html, "SECTION_MAX_CLASSES", 1)
    page = build_report(evil_run.run_dir, tmp_path / "capped.html").read_text()
    classes = len(evil_run.summary["estimated_noise_rate_per_class"])
    assert f"the 2 of {classes} classes with the most confusion" in page
    assert f"the 1 of {classes} classes with the most flagged rows" in page
    from markupsafe import escape

    flagged = evil_run.scores[evil_run.scores["is_suspect"]]["given_label"].value_counts()
    order = list(evil_run.summary["estimated_noise_rate_per_class"])  # the run's class order
    top = next(c for c in order if flagged.get(c, 0) == flagged.max())  # ties: the first class
    assert page.count('<section class="cls">') == 1 and f"<h3>{escape(top)}</h3>" in page
    assert page.count("<tr><th>") < full.count("<tr><th>")  # fewer heatmap rows


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



class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (file descriptors 3 and 4:
    no network port, no extra package): evaluate JavaScript in the page, as a user's clicks."""

    def __init__(self, executable: str, url: str, profile) -> None:
        import json as _json

        self._json = _json
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()

        def fds() -> None:  # move both ends above 4 first: a pipe end may itself be fd 3 or 4
            import fcntl

            high_r, high_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", url],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buffer = b""
        self._id = 0
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_w, self._json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_r, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = self._json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply.get("result", {})

    def js(self, expression: str):
        # In braces: a block, so the names one evaluation declares do not clash with the next.
        result = self.call("Runtime.evaluate", {"expression": "{" + expression + "}", "returnByValue": True,
                                                "awaitPromise": True}, self.session)
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        os.close(self._to_w)
        os.close(self._from_r)


def test_decisions_made_in_the_report_round_trip_through_import_decisions(evil_run, tmp_path, cli):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Chromium (see .ci/run), but it was not found")
        pytest.skip("Chromium is not installed (apt-get install chromium) and this is not CI")
    import time

    page = Browser(browser, (evil_run.run_dir / "report.html").as_uri(), tmp_path / "profile")
    try:
        deadline = time.monotonic() + 30
        while not page.js("document.querySelectorAll('.card').length") and time.monotonic() < deadline:
            time.sleep(0.2)
        cards = page.js("[...document.querySelectorAll('.card')].map(c => c.dataset.id)")
        assert len(cards) >= 3
        # Filters: by action, by suspicion, by search.
        shown = lambda: page.js("document.querySelectorAll('.card').length")  # noqa: E731
        first = cards[0]
        page.js(f"const q = document.getElementById('f-q'); q.value = {first!r}; q.dispatchEvent(new Event('input'))")
        assert page.js("[...document.querySelectorAll('.card')].map(c => c.dataset.id)") == [first]
        page.js("const q = document.getElementById('f-q'); q.value = ''; q.dispatchEvent(new Event('input'))")
        page.js("const m = document.getElementById('f-min'); m.value = '2'; m.dispatchEvent(new Event('change'))")
        assert shown() == 0
        page.js("const m = document.getElementById('f-min'); m.value = '0'; m.dispatchEvent(new Event('change'))")
        assert shown() == len(cards)
        # A heatmap cell sets the pair filter.
        pair = page.js("const td = document.querySelector('td.pick'); td.click(); td.dataset.pair")
        assert page.js("document.getElementById('f-pair').value") == pair
        assert "pair=" in page.js("location.hash")
        page.js("const s = document.getElementById('f-pair'); s.value = ''; s.dispatchEvent(new Event('change'))")
        # Click to enlarge: the dialog opens with examples of both classes.
        page.js("document.querySelector('.card img').click()")
        assert page.js("document.getElementById('zoom').classList.contains('open')")
        assert page.js("document.querySelectorAll('#zoom-given-ex img').length") >= 1
        page.js("document.getElementById('zoom').click()")
        # Decide: accept the first suggestion, keep the second, another class for the third.
        page.js("document.querySelectorAll('.card')[0].querySelector('button.accept').click()")
        page.js("document.querySelectorAll('.card')[1].querySelector('button.keep').click()")
        other = page.js("const s = document.querySelectorAll('.card')[2].querySelector('select.other');"
                        "s.value = s.options[1].value; s.dispatchEvent(new Event('change')); s.value")
        page.js("document.getElementById('reviewer').value = 'ana'")
        assert page.js("document.getElementById('decided').textContent").startswith("3 decision")
        csv_text = page.js("decisionsCsv()")
    finally:
        page.close()
    decisions_file = tmp_path / "decisions.csv"
    decisions_file.write_text(csv_text)
    code, _, err = cli("import-decisions", evil_run.run_dir, decisions_file)
    assert code == 0, err
    got = pd.read_csv(evil_run.run_dir / "decisions.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    scores = evil_run.scores.set_index("sample_id")
    assert list(got["decision"].loc[cards[:3]]) == ["accept", "keep", "relabel"]
    assert got.loc[cards[0], "label"] == scores.loc[cards[0], "suggested_label"]
    assert got.loc[cards[1], "label"] == scores.loc[cards[1], "given_label"]
    assert got.loc[cards[2], "label"] == other and set(got["reviewer"]) == {"ana"}


def test_confused_pairs_are_the_largest_off_diagonal_entries_in_order():
    from labelclean.review.terminal import confused_pairs

    t = pd.DataFrame([[0.80, 0.15, 0.05, 0.004], [0.10, 0.90, 0.0, 0.0],
                      [0.15, 0.0, 0.85, 0.0], [0.0, 0.0, 0.0, 1.0]],
                     index=["a", "b", "c", "d"], columns=["a", "b", "c", "d"])
    assert confused_pairs(t, 3) == [("a", "b", 0.15), ("c", "a", 0.15), ("b", "a", 0.10)]
    assert ("a", "d", 0.004) not in confused_pairs(t, 10)  # below 0.5%
    assert all(a != b for a, b, _ in confused_pairs(t, 10))
