"""The suite collects under plain `pytest` as well as `python -m pytest`.

`python -m pytest` puts the repository root on sys.path, so `import tests.conftest` happens to work
there; plain `pytest` puts only `tests/` itself there (rootdir conftest, no `__init__.py`). Shared test
code is therefore imported as `conftest` / `helpers`, never through a `tests` package.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _imports_of_the_tests_package(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.name}:{node.lineno}: {name}" for name in names if name == "tests" or name.startswith("tests.")]
    return found


def test_no_test_module_imports_the_tests_package():
    offenders = [hit for path in sorted(TESTS.rglob("*.py")) for hit in _imports_of_the_tests_package(path)]
    assert not offenders, "import these as `conftest` / `helpers`:\n" + "\n".join(offenders)
