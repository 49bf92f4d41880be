"""The docs a newcomer follows (issue 31, item 5): nothing points outside the project, every link and cited
section exists, and the README's commands run as written from a fresh clone after `make setup`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]
# Project files that cite docs by path and section: code, study files, the Makefile (not the generated caches).
CITING = [
    *PAGES,
    REPO / "Makefile",
    REPO / "custom_regularization.py",
    *sorted((REPO / "studies").glob("*.toml")),
    *(
        p
        for folder in ("continual-learning", "search", "space", "evaluation", "bench", "tests")
        for p in sorted((REPO / folder).rglob("*.py"))
    ),
]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _sections(page: Path) -> set[str]:
    """The numbers of a page's numbered sections (`## 4. ...`)."""
    return set(re.findall(r"^#{2,3} (\d+)\. ", page.read_text(encoding="utf-8"), flags=re.M))


def test_no_page_points_at_shared_which_users_do_not_have() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/shared" not in text, page.name


def test_every_docs_path_named_in_the_project_exists() -> None:
    for path in CITING:
        for name in re.findall(r"docs/([\w.-]+\.md)", path.read_text(encoding="utf-8")):
            assert (REPO / "docs" / name).is_file(), f"{path.relative_to(REPO)} names docs/{name}"


def test_relative_links_and_their_anchors_resolve() -> None:
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            assert dest.exists(), f"{page.name}: link to {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_cited_sections_exist() -> None:
    """`docs/fidelity.md section 3`, `docs/contract.md, section 4`, and `HARNESS.md section 1` (the name that code
    and every generated module give the contract) name numbered sections that exist."""
    targets = {
        "docs/fidelity.md": "fidelity.md",
        "docs/contract.md": "contract.md",
        "HARNESS.md": "contract.md",
    }
    pattern = re.compile(
        r"(docs/fidelity\.md|docs/contract\.md|HARNESS\.md),? (?:\(?)sections? (\d+)(?:-(\d+))?"
    )
    for path in CITING:
        for doc, first, last in pattern.findall(path.read_text(encoding="utf-8")):
            have = _sections(REPO / "docs" / targets[doc])
            for n in range(int(first), int(last or first) + 1):
                assert str(n) in have, f"{path.relative_to(REPO)} cites {doc} section {n}"


def _readme_code_lines() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_commands_use_the_venv_or_make() -> None:
    """A fresh clone after `make setup` has .venv/bin/python, not necessarily a `python` with the project in it."""
    lines = _readme_code_lines()
    assert lines
    for line in lines:
        assert line.startswith(("make ", ".venv/bin/")), line
    spans = re.findall(r"`([^`]+)`", (REPO / "README.md").read_text(encoding="utf-8"))
    for span in spans:
        assert not re.match(r"python \S+\.py|optuna-dashboard ", span), span


def test_readme_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`make ([\w-]+)", readme)) | {
        line.split()[1] for line in _readme_code_lines() if line.startswith("make ")
    }
    assert named and named <= targets, sorted(named - targets)


def test_readme_harness_command_parses_as_written() -> None:
    """The README's harness command, with --help appended: the script exists and every flag before it parses."""
    [command] = [line for line in _readme_code_lines() if "continual-learning/main.py" in line]
    args = command.split()
    assert args[0] == ".venv/bin/python"
    out = subprocess.run(
        [sys.executable, *args[1:], "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "--experiment" in out.stdout
