from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in readme and command in ci


def test_sample_data_is_complete():
    data = ROOT / "sample_data"
    for name in ("manifest.csv", "trusted.csv", "truth.csv"):
        assert (data / name).is_file()
    assert len(list((data / "digits").rglob("*.png"))) == 1797
