"""The Label Studio round trip against a real Label Studio server, not a mock.

The test starts ``label-studio`` (from PyPI; ``bash scripts/setup_label_studio.sh`` puts it in
``.venv-labelstudio``) on loopback with SQLite in a temporary folder, authenticates the way
current versions expect (a personal access token, exchanged for a short-lived JWT access
token; legacy tokens stay disabled), creates an image-classification project, imports the
tasks ``labelclean export --format label-studio`` wrote, adds a reviewer's annotations through
the API, exports the project as JSON and feeds it to ``labelclean import-decisions``.

Marked ``labelstudio``: ``pytest -m "not labelstudio"`` skips it. Without a Label Studio
executable it skips with a reason, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from labelclean import RunConfig, audit
from labelclean.export.label_studio import label_studio_config, local_files
from labelclean.run.folder import Run

pytestmark = pytest.mark.labelstudio

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "reviewer@example.com", "labelclean-test-pw"


def label_studio_executable() -> str | None:
    candidates = [os.environ.get("LABELCLEAN_LABEL_STUDIO"),
                  str(ROOT / ".venv-labelstudio" / "bin" / "label-studio"),
                  shutil.which("label-studio")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudio:
    """A minimal HTTP client: session login, a personal access token, JWT access tokens."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.session = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.access = ""

    def _csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def login(self) -> None:
        self.session.open(self.base + "/user/login/", timeout=60).read()
        form = urllib.parse.urlencode({"csrfmiddlewaretoken": self._csrf(), "email": USER,
                                       "password": PASSWORD}).encode()
        self.session.open(urllib.request.Request(self.base + "/user/login/", data=form,
                                                 headers={"Referer": self.base + "/user/login/"}),
                          timeout=60).read()
        # A personal access token (a JWT refresh token), created from the logged-in session ...
        req = urllib.request.Request(self.base + "/api/token/", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-CSRFToken": self._csrf(), "Referer": self.base + "/"})
        pat = json.loads(self.session.open(req, timeout=60).read())["token"]
        # ... exchanged for an access token, sent as a Bearer token from then on.
        self.access = self.call("POST", "/api/token/refresh/", {"refresh": pat}, auth=False)["access"]

    def call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.access}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        return json.loads(raw) if raw else None

    def fetch(self, path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.access}"})
        with self.session.open(req, timeout=60) as resp:
            return resp.status, resp.read()


@pytest.fixture(scope="module")
def dataset_and_run(tmp_path_factory):
    from conftest import build_tiny

    tmp = tmp_path_factory.mktemp("ls")
    tiny = build_tiny(tmp)
    # Images in two trees that share no folder below / (a manifest assembled from two sources):
    # the fox images move to a second tree outside the pytest temporary folder.
    other = Path(tempfile.mkdtemp(prefix="labelclean-ls-", dir="/var/tmp"))
    manifest = pd.read_csv(tiny.csv, dtype=str)
    for i, rel in manifest["path"].items():
        if "/fox/" in rel:
            target = other / "fox" / Path(rel).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(tiny.csv.parent / rel, target)
            manifest.loc[i, "path"] = str(target)
    manifest.to_csv(tiny.csv, index=False)
    trusted = pd.read_csv(tiny.trusted, dtype=str)
    trusted["path"] = [str(other / "fox" / Path(p).name) if "/fox/" in p else p for p in trusted["path"]]
    trusted.to_csv(tiny.trusted, index=False)
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(tiny.trusted), out=str(tmp / "run"),
                             backbone="test_tiny", epochs=4, batch_size=12, lr=0.1, image_size=12,
                             threshold=0.3, report=False))
    assert result.summary["flagged"] >= 3
    yield tiny, result, other / "fox"
    shutil.rmtree(other, ignore_errors=True)


@pytest.fixture(scope="module")
def label_studio(dataset_and_run, tmp_path_factory):
    exe = label_studio_executable()
    if exe is None:
        message = ("label-studio not found: run `bash scripts/setup_label_studio.sh` or set "
                   "LABELCLEAN_LABEL_STUDIO to its executable")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    _, run, _ = dataset_and_run
    home = tmp_path_factory.mktemp("label-studio-home")
    port = free_port()
    document_root = local_files(Run.open(run.run_dir)).document_root
    env = {**os.environ, "HOME": str(home), "LABEL_STUDIO_BASE_DATA_DIR": str(home / "data"),
           "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = open(home / "server.log", "w")  # noqa: SIM115  (open for the server's lifetime)
    proc = subprocess.Popen(
        [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(home / "data"), "--username", USER, "--password", PASSWORD],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode}: "
                            f"{(home / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio did not answer on {base} within 300 s")
            time.sleep(1)
        client = LabelStudio(base)
        client.login()
        yield client
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def test_round_trip_through_label_studio(label_studio, dataset_and_run, tmp_path, cli):
    ls = label_studio
    tiny, run, second_tree = dataset_and_run
    classes = [str(c) for c in run.summary["classes"]]
    assert ls.call("GET", "/api/jwt/settings")["legacy_api_tokens_enabled"] is False

    tasks_file = tmp_path / "tasks.json"
    code, _, err = cli("export", str(run.run_dir), "--format", "label-studio", "--out", str(tasks_file))
    assert code == 0, err
    exported = json.loads(tasks_file.read_text())
    assert exported
    config = (tmp_path / "tasks-config.xml").read_text().strip()
    assert config == label_studio_config(classes)

    project = ls.call("POST", "/api/projects", {"title": "labelclean review", "label_config": config})
    # Label Studio serves a local file only under a project's Local Files storage (not synced:
    # the tasks come from labelclean's file).
    where = local_files(Run.open(run.run_dir))
    assert where.document_root == Path("/")
    assert sorted(where.storages) == sorted([second_tree, tiny.root])
    for storage in where.storages:
        ls.call("POST", "/api/storages/localfiles", {"project": project["id"], "path": str(storage),
                                                     "title": "dataset", "use_blob_urls": False})
    imported = ls.call("POST", f"/api/projects/{project['id']}/import", exported)
    assert imported["task_count"] == len(exported)
    assert imported["annotation_count"] == len(exported)  # the given label, to review
    assert imported["prediction_count"] == len(exported)  # the suggestion, with its score

    listed = ls.call("GET", f"/api/tasks?project={project['id']}&page_size=1000")
    tasks = listed["tasks"] if isinstance(listed, dict) else listed
    by_sample = {t["data"]["sample_id"]: t for t in tasks}
    assert set(by_sample) == {t["data"]["sample_id"] for t in exported}

    # The image references resolve through Label Studio's local-file serving, in both trees.
    trees = {t["data"]["image"].split("/")[-2] == "fox": t["data"]["image"] for t in exported}
    assert set(trees) == {True, False}, "the suspects should come from both trees"
    for image in trees.values():
        status, body = ls.fetch(image)
        assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"

    # A reviewer accepts the first suggestion and picks a third class for the second.
    first, second = exported[0]["data"], exported[1]["data"]
    other = next(c for c in classes if c not in (second["given_label"], second["suggested_label"]))
    for data, label in ((first, first["suggested_label"]), (second, other)):
        task = by_sample[data["sample_id"]]
        ls.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": choice(label)})

    export = ls.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    export_file = tmp_path / "project-export.json"
    export_file.write_text(json.dumps(export))
    code, _, err = cli("import-decisions", str(run.run_dir), str(export_file))
    assert code == 0, err

    decisions = pd.read_csv(run.run_dir / "decisions.csv", dtype=str, keep_default_na=False)
    # Only the reviewer's two annotations are decisions; the imported given labels are not.
    assert sorted(decisions["sample_id"]) == sorted([first["sample_id"], second["sample_id"]])
    got = decisions.set_index("sample_id")
    assert got.loc[first["sample_id"], "decision"] == "accept"
    assert got.loc[first["sample_id"], "label"] == first["suggested_label"]
    assert got.loc[second["sample_id"], "decision"] == "relabel"
    assert got.loc[second["sample_id"], "label"] == other
    me = ls.call("GET", "/api/current-user/whoami")
    assert me["email"] == USER
    assert set(got["reviewer"]) == {f"label-studio:{me['id']}"}

    out = tmp_path / "corrected.csv"
    code, _, err = cli("export", str(run.run_dir), "--decisions", "--out", str(out))
    assert code == 0, err
    changes = pd.read_csv(run.run_dir / "changes.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    assert changes.loc[second["sample_id"], "new_label"] == other
    assert changes.loc[second["sample_id"], "decided_by"] == f"reviewer:label-studio:{me['id']}"
    corrected = pd.read_csv(out, dtype=str)
    assert corrected.set_index("id").loc[second["sample_id"], "label"] == other
