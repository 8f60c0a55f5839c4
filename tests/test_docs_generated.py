"""The documentation says what the code says.

The reference parts are generated from the code by ``tools/docgen.py``
(``scripts/docs``) and committed; a change to a setting, a rule, a code, a
command, a metric, a table or the operator API without regenerating them fails
here. The site must build with MkDocs in strict mode, the README stays a front
door, the tests the pages cite exist, and the example identities are the demo's.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from markdown.extensions.toc import slugify

from hubreturns.model import DEFAULT_ACB
from hubreturns.user.scenarios import HUBS, SCENARIOS, USERS

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


def test_the_readmes_links_into_the_docs_resolve() -> None:
    """MkDocs checks the site's links; the README lies outside it, so here (anchors too)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if not (ROOT / path).is_file():
            broken.append(target)
            continue
        if anchor:
            page = (ROOT / path).read_text(encoding="utf-8")
            headings = re.findall(r"^#+ (.*)$", page, re.M)
            if anchor not in {slugify(re.sub(r"[`*]", "", h), "-") for h in headings}:
                broken.append(target)
    assert broken == []


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


SRC = ROOT / "src" / "hubreturns"
_SUFFIXES = (".py", ".xml", ".db", ".toml", ".csv", ".json", ".html", ".png", ".md", ".lua")


def test_no_page_cites_a_module_path_that_does_not_exist() -> None:
    """Package-relative paths (`dcc/rules.py`, `wire/`, `user/scenarios.py`) exist.

    The pages name modules relative to `src/hubreturns/`; a move of the package
    must move these names too.
    """
    tops = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = []
    for page in PAGES:
        for token in re.findall(r"`([\w/.-]+)`", page.read_text(encoding="utf-8")):
            top_file = token.endswith(".py") and "/" not in token and not token.startswith("test_")
            if (top_file or token.split("/", 1)[0] in tops) and not (SRC / token).exists():
                missing.append(f"{page.name}: {token}")
    assert missing == []


def _modules() -> dict[str, list[str]]:
    """Each module's last name -> its dotted names (`cli` has four)."""
    found: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if "migrations" not in parts:
            found.setdefault(parts[-1], []).append(".".join(parts))
    return found


def _resolves(dotted: str, attributes: list[str]) -> bool:
    """`dotted` then each attribute in turn, a submodule counting as one."""
    obj: object = importlib.import_module(dotted)
    for name in attributes:
        if not hasattr(obj, name) and isinstance(obj, ModuleType):
            with contextlib.suppress(ImportError):
                importlib.import_module(f"{obj.__name__}.{name}")
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def test_every_module_attribute_the_pages_name_exists() -> None:
    """`rules.RULES`, `serving.check_tls`, `hubreturns.dcc.config.Settings` resolve.

    A name whose first part is a module of the package is looked up there (any
    module of that name will do); logger names and file names are not modules.
    """
    loggers = set()
    for path in SRC.rglob("*.py"):
        loggers.update(re.findall(r'getLogger\("([\w.]+)"\)', path.read_text(encoding="utf-8")))
    modules = _modules()
    wrong = []
    for page in PAGES:
        for token in re.findall(r"`([A-Za-z_][\w.]*\.\w+)(?:\(|`)", page.read_text("utf-8")):
            if token.endswith(_SUFFIXES) or token in loggers:
                continue
            parts = token.split(".")
            if parts[0] == "hubreturns":
                cut = max(
                    (
                        n
                        for n in range(2, len(parts) + 1)
                        if (
                            SRC.parent.joinpath(*parts[:n]).with_suffix(".py").exists()
                            or (SRC.parent.joinpath(*parts[:n]) / "__init__.py").exists()
                        )
                    ),
                    default=0,
                )
                ok = cut > 0 and _resolves(".".join(parts[:cut]), parts[cut:])
            elif parts[0] in modules:
                ok = any(_resolves(m, parts[1:]) for m in modules[parts[0]])
            else:
                continue
            if not ok:
                wrong.append(f"{page.name}: {token}")
    assert wrong == []


def test_every_example_identity_is_the_demos_or_named_on_the_home_page() -> None:
    """An EUI-64 in a page or an example file is one of the demo world's, or the
    home page says what it is: so no page can reuse an identity in another role."""
    demo = {DEFAULT_ACB, *(u[0] for u in USERS), *(h[0] for h in HUBS), *(h[4] for h in HUBS)}
    for scenario in SCENARIOS:
        demo.update({scenario.sender, scenario.device, scenario.target})
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    named = set(re.findall(_EUI, home.split("## Example identities", 1)[1]))
    files = [*PAGES, *sorted((ROOT / "tests" / "data" / "examples").iterdir())]
    unknown = sorted(
        f"{path.name}: {eui}"
        for path in files
        for eui in set(re.findall(_EUI, path.read_text(encoding="utf-8")))
        if eui not in demo | named
    )
    assert unknown == []


def _cli() -> Any:
    """The whole `hubreturns` command tree, as the console script builds it."""
    import typer

    from hubreturns.cli import app
    from hubreturns.extensions import register_commands

    if not any(group.name == "desk" for group in app.registered_groups):
        register_commands(app)
    return typer.main.get_command(app)


def test_every_command_and_option_the_pages_name_exists() -> None:
    """`hubreturns load devices --replace`: each word a command, each option the command's.

    Prose such as "hubreturns checks them" names no command and is skipped; the
    CLI reference is generated, so it is not read here.
    """
    root = _cli()
    wrong = []
    for page in PAGES:
        if page.name == "cli.md":
            continue
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        for match in re.finditer(
            r"(?:^|[\s`(])hubreturns ((?:[a-z][\w-]*[ \t]*)+)([^`|#;&\n]*)", text, re.M
        ):
            words, command, used = match.group(1).split(), root, 0
            for word in words:
                commands = getattr(command, "commands", None)
                if commands is None or word not in commands:
                    break
                command, used = commands[word], used + 1
            if used == 0:
                continue
            options = {"--help", "--config"}
            for param in command.params:
                options.update(param.opts, param.secondary_opts)
            rest = " ".join(words[used:]) + " " + match.group(2)
            for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
                if option not in options:
                    wrong.append(f"{page.name}: hubreturns {' '.join(words[:used])} {option}")
    assert wrong == []
