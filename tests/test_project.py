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


def _module_imports() -> dict[str, set[str]]:
    """Module-level ``labelclean`` imports of every module (not those inside functions or
    ``if TYPE_CHECKING``), as a graph of module names."""
    import ast

    package = ROOT / "labelclean"
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # top level only
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labelclean"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("labelclean")]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_help_and_version_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; from labelclean import cli; "
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_choices_match_the_registries():
    from labelclean import choices
    from labelclean.methods import METHODS
    from labelclean.models import BACKBONES
    from labelclean.simulate import NOISE_TYPES

    assert set(choices.values(choices.Method)) == set(METHODS.names())
    assert set(choices.values(choices.Backbone)) == set(BACKBONES.names(include_hidden=True))
    assert set(choices.values(choices.Noise)) == set(NOISE_TYPES)


def test_column_names_are_spelled_only_in_the_schema():
    import ast

    from labelclean.run import schema

    names = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)
             and v in [*schema.SCORE_COLUMNS, schema.ABS_PATH, schema.LABEL_INDEX, schema.TRUSTED_LABEL]}
    names -= {"path", "rank", "source", "action", "verified"}  # also option names, summary keys
    allowed = {"run/schema.py", "choices.py"}
    found = []
    for path in (ROOT / "labelclean").rglob("*.py"):
        rel = path.relative_to(ROOT / "labelclean").as_posix()
        if rel in allowed:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in names
                    and id(node) not in docstrings):
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, found


def test_the_declared_licence_ships_its_text():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
