"""The commands the documentation asks a reader to run, run as written.

A fenced ``bash`` block right after a ``<!-- doc-test -->`` line is runnable. Each
file's runnable blocks run in order, as one bash script (``set -euo pipefail``),
in a fresh folder holding a link to the project's ``.venv`` and, where the text
says the demo has run, the demo's output. Port 8080 becomes a free port, the
environment has no ``HUBRETURNS_*`` variable, and ``HOME`` and the client's state
folder are inside the fresh folder. Whatever the script leaves running is
stopped. So the tour and the quick start cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- doc-test -->"
_BLOCK = re.compile(r"^<!-- doc-test -->\n```bash\n(.*?)^```$", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Page:
    path: str
    #: What the text says has happened before its first block.
    setup: str
    #: Text the run's output must contain (what the page says the reader will see).
    expect: tuple[str, ...]


PAGES = (
    Page(
        "README.md",
        # The tour starts "after scripts/demo"; this is the demo that script runs.
        "hubreturns demo --out demo-out >/dev/null",
        ('"status":"ok"', "I99  Acknowledged: the return is recorded", "00-DB-12-34-56-78-90-F2"),
    ),
    Page("docs/install.md", "", ('"status":"ok","smki_trust":"ca"', "database ready")),
    Page("docs/backups.md", "", ("ok",)),
)


def blocks(text: str) -> list[str]:
    """The runnable blocks of a page, in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        HOME=str(folder),
        XDG_STATE_HOME=str(folder / "state"),
        PYTHONPATH=str(ROOT / "src"),  # this tree's code, whichever tree the venv was made in
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        COLUMNS="200",
    )
    return env


def _run(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=folder,
        env=_environment(folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what the script left running
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def test_every_page_with_runnable_blocks_is_listed() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    marked = {str(p.relative_to(ROOT)) for p in pages if MARK in p.read_text(encoding="utf-8")}
    assert marked == {page.path for page in PAGES}
    for page in PAGES:
        text = (ROOT / page.path).read_text(encoding="utf-8")
        # A mark not followed by a bash block would silently run nothing.
        assert text.count(MARK) == len(blocks(text)), page.path


@pytest.mark.parametrize("page", PAGES, ids=[p.path for p in PAGES])
def test_the_commands_of_the_page_run_as_written(page: Page, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    body = "\n".join(blocks((ROOT / page.path).read_text(encoding="utf-8")))
    assert body, f"{page.path} has no runnable block"
    body = body.replace("8080", str(_free_port()))
    script = f"set -euo pipefail\n{page.setup}\n{body}"
    result = _run(script, tmp_path)
    assert result.returncode == 0, f"{page.path}: exit {result.returncode}\n{result.stdout}"
    for text in page.expect:
        assert text in result.stdout, f"{page.path}: {text!r} not in\n{result.stdout}"
