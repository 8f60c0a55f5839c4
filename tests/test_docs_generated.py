"""The documentation says what the code says.

The reference parts are generated from the code by ``tools/docgen.py``
(``scripts/docs``) and committed; a change to a setting, a rule, a code, a
command, a metric, a table or the operator API without regenerating them fails
here. The site must build with MkDocs in strict mode, the README stays a front
door, the tests the pages cite exist, and the example identities are the demo's.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from hubreturns.user.scenarios import USERS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_EUI = r"[0-9A-F]{2}(?:-[0-9A-F]{2}){7}"


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def test_the_generated_pages_are_up_to_date() -> None:
    result = _python("-m", "tools.docgen", "--check")
    assert result.returncode == 0, result.stderr


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, anchors and pages missing from the navigation are errors."""
    result = _python("-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert first is not None
    assert [line.split()[0] for line in first.group(1).splitlines()] == [
        "scripts/demo",
        "scripts/test",
    ]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_test_the_pages_cite_exists() -> None:
    """`tests/test_x.py::name` and the `::name` after it name real tests."""
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"tests/(test_\w+\.py)((?:[`,\s]*`?::\w+)*)", text):
            path = ROOT / "tests" / match.group(1)
            if not path.exists():
                missing.append(f"{page.name}: tests/{match.group(1)}")
                continue
            names = _test_names(path)
            for name in re.findall(r"::(\w+)", match.group(2)):
                if name not in names:
                    missing.append(f"{page.name}: {match.group(1)}::{name}")
    assert missing == []


def test_the_example_identities_are_the_demos() -> None:
    """A demo User ID never appears with another role, in a CSV row or an identity table."""
    roles = {user_id: role for user_id, role, *_ in USERS}
    wrong = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for eui, role in re.findall(
            rf"^`?({_EUI})`?\s*[,|]\s*`?(IS|GS|ES|ED|GT|RSA|OU)\b", text, re.M
        ):
            if eui in roles and roles[eui] != role:
                wrong.append(f"{page.name}: {eui} as {role}, the demo's {roles[eui]}")
        for eui, role in re.findall(rf"\|\s*`({_EUI})`\s*\|\s*(IS|GS|RSA|ED|ES|GT|OU)\s*\|", text):
            if eui in roles and roles[eui] != role:
                wrong.append(f"{page.name}: {eui} as {role}, the demo's {roles[eui]}")
    assert wrong == []


def test_no_page_cites_a_path_that_does_not_exist() -> None:
    """Repository paths in backticks (src/, tests/, scripts/, benchmarks/, fuzz/) exist."""
    missing = []
    pattern = r"`((?:src/hubreturns|tests|scripts|benchmarks|fuzz|tools)/[\w./-]+)"
    for page in PAGES:
        for path in re.findall(pattern, page.read_text(encoding="utf-8")):
            if not (ROOT / path.rstrip("/.")).exists():
                missing.append(f"{page.name}: {path}")
    assert missing == []
