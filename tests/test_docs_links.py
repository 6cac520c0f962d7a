"""Every relative link and repository path in README.md and docs/ exists (issue 2.4, item 8).

A clone has only this repository: a README that cites a file outside it (or
one that was renamed) sends the reader nowhere. Checked: markdown links
``[text](target)`` (anchors against the target's headings, GitHub's slugs) and
repository paths written as inline code in prose (fenced code blocks are
examples and are not checked).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"`([^`\n]+)`")
#: Inline code that names a repository path: a top-level entry of the repo,
#: optionally followed by more path segments.
_EXTENSIONS = (".py", ".md", ".yml", ".yaml", ".sql", ".json", ".conf", ".toml", ".cfg",
               ".txt", ".sh", ".ini")
#: Paths the reader creates or tasker creates at run time: they are not in a clone.
NOT_IN_A_CLONE = {".env", ".venv", ".tasker-data", "workers/billing.py"}


def _prose(text: str) -> str:
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    # GitHub: lower case, drop punctuation except - and _, spaces to -.
    heading = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", lambda m: "" if m.group(0) in "`*" else "_",
                     heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match[1])
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _looks_like_repo_path(token: str) -> bool:
    if any(c in token for c in " <>*{}$=:|,;()'\"") or token.startswith(("/", "-", "~")):
        return False
    first = token.split("/", 1)[0]
    if "/" not in token and not token.endswith(_EXTENSIONS):
        return False
    return (REPO / first).exists() or token.endswith(_EXTENSIONS) and "/" in token


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for doc in DOCS:
        prose = _prose(doc.read_text())
        rel = str(doc.relative_to(REPO))
        for target in _LINK.findall(prose):
            if not re.match(r"^[a-z]+:", target):
                cases.append((rel, "link", target))
        for token in _CODE.findall(prose):
            if re.fullmatch(r"test_\w+\.py", token):
                cases.append((rel, "test", token))  # the failure table names its tests
            elif _looks_like_repo_path(token) and token.rstrip("/") not in NOT_IN_A_CLONE:
                cases.append((rel, "path", token))
    return sorted(set(cases))


@pytest.mark.parametrize(("doc", "kind", "target"), _cases())
def test_relative_reference_exists(doc: str, kind: str, target: str) -> None:
    base = (REPO / doc).parent
    if kind == "test":
        assert list((REPO / "tests").rglob(target)), f"{doc} names {target}: no such test file"
        return
    if kind == "path":
        resolved = (REPO / target).resolve()
        assert resolved.exists() and (REPO in resolved.parents or resolved == REPO), (
            f"{doc} names {target}, which is not in the repository")
        return
    path, _, anchor = target.partition("#")
    resolved = (base / path).resolve() if path else REPO / doc
    assert resolved.exists(), f"{doc} links to {target}, which does not exist"
    assert REPO in resolved.parents or resolved == REPO, f"{doc} links outside the repository"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{doc} links to #{anchor}, no such heading"


def test_no_reference_outside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, (
            f"{doc.name} cites the shared spec, which a clone does not have")


def test_runbook_links_of_alerts_point_at_runbook_headings() -> None:
    rules = (REPO / "deploy/prometheus/rules/tasker-alerts.yml").read_text()
    anchors = _anchors(REPO / "docs" / "operations.md")
    linked = re.findall(r"docs/operations\.md#([\w-]+)", rules)
    assert linked
    assert [a for a in linked if a not in anchors] == []
