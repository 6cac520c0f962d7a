"""Every relative link, anchor and repository path in the Markdown files exists (issue 2.4
item 8, issue 2.5).

A clone has only this repository: a README that cites a file outside it (or
one that was renamed, or a heading that was reworded) sends the reader nowhere.
Checked:

* in every Markdown file git tracks (README.md, docs/, BENCHMARKS.md, the
  notes under bench/ and deploy/): each link ``[text](target)`` and reference
  definition ``[ref]: target`` that is relative, or that points into this
  repository on GitHub, names an existing file inside the repository, and its
  ``#anchor`` (in the same file or another Markdown file) is a heading there
  (GitHub's slugs, ``-1``, ``-2`` for repeated headings) or an HTML anchor;
* in README.md and docs/: repository paths written as inline code in prose
  (fenced code blocks are examples and are not checked);
* in every deploy/ file: links into this repository on GitHub, such as the
  alerts' ``runbook_url``, name an existing file and heading.

The last tests run the checker on a made-up tree: it must report a broken
anchor, a missing file and a broken runbook link.
"""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Where inline-code paths are checked too (the pages written for readers).
PROSE_DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
#: This repository on GitHub: links written this way are checked like relative ones.
GITHUB = re.compile(r"https://github\.com/tasker/tasker/(?:blob|tree)/main/([^\s\"'<>)#]+)"
                    r"(?:#([\w\-]+))?")

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
_CODE = re.compile(r"`([^`\n]+)`")
#: Inline code that names a repository path: a top-level entry of the repo,
#: optionally followed by more path segments.
_EXTENSIONS = (".py", ".md", ".yml", ".yaml", ".sql", ".json", ".conf", ".toml", ".cfg",
               ".txt", ".sh", ".ini")
#: Paths the reader creates or tasker creates at run time: they are not in a clone.
NOT_IN_A_CLONE = {".env", ".venv", ".tasker-data", "workers/billing.py"}


def _tracked(pattern: str, root: Path = REPO) -> list[Path]:
    """Files git tracks below ``root`` matching ``pattern``, plus untracked new ones."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                              "--", pattern], cwd=root, capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # not a git checkout: every file
        return sorted(root.glob(f"**/{pattern}"))
    return sorted(root / line for line in out.splitlines() if (root / line).is_file())


MARKDOWN = _tracked("*.md")


def _prose(text: str) -> str:
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    # GitHub: the heading's text (markup removed), lower case, punctuation
    # dropped except - and _, each space a -.
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown file offers: its headings' slugs and its HTML anchors."""
    text = _prose(path.read_text())
    found: set[str] = set(_HTML_ANCHOR.findall(text))
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if match:
            slug = _slug(match[1])
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _looks_like_repo_path(token: str, root: Path) -> bool:
    if any(c in token for c in " <>*{}$=:|,;()'\"") or token.startswith(("/", "-", "~")):
        return False
    first = token.split("/", 1)[0]
    if "/" not in token and not token.endswith(_EXTENSIONS):
        return False
    return (root / first).exists() or token.endswith(_EXTENSIONS) and "/" in token


def link_targets(doc: Path) -> list[str]:
    """Every link target in ``doc``'s prose: links, images, reference definitions."""
    prose = _INLINE_CODE.sub("", _prose(doc.read_text()))
    return [*_LINK.findall(prose), *_IMAGE.findall(prose), *_REFERENCE.findall(prose)]


def check_target(doc: Path, target: str, root: Path = REPO) -> str | None:
    """Why the link ``target`` written in ``doc`` leads nowhere, or None when it is fine."""
    github = GITHUB.fullmatch(target)
    if github:
        path, anchor = github[1], github[2] or ""
        resolved = (root / urllib.parse.unquote(path)).resolve()
    elif re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
        return None  # another site, mailto:, ...
    else:
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / urllib.parse.unquote(path)).resolve() if path else doc
    rel = doc.relative_to(root)
    if not (root in resolved.parents or resolved == root):
        return f"{rel} links to {target}, outside the repository"
    if not resolved.exists():
        return f"{rel} links to {target}, which does not exist"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{rel} links to {target}: {resolved.name} has no heading #{anchor}"
    return None


def _path_cases(doc: Path, root: Path = REPO) -> list[tuple[str, str]]:
    cases = []
    for token in _CODE.findall(_prose(doc.read_text())):
        if re.fullmatch(r"test_\w+\.py", token):
            cases.append(("test", token))  # the failure table names its tests
        elif _looks_like_repo_path(token, root) and token.rstrip("/") not in NOT_IN_A_CLONE:
            cases.append(("path", token))
    return cases


def _link_cases() -> list[tuple[str, str]]:
    return sorted({(str(doc.relative_to(REPO)), target)
                   for doc in MARKDOWN for target in link_targets(doc)})


def _cases() -> list[tuple[str, str, str]]:
    return sorted({(str(doc.relative_to(REPO)), kind, token)
                   for doc in PROSE_DOCS for kind, token in _path_cases(doc)})


@pytest.mark.parametrize(("doc", "target"), _link_cases())
def test_link_and_anchor_exist(doc: str, target: str) -> None:
    problem = check_target(REPO / doc, target)
    assert problem is None, problem


@pytest.mark.parametrize(("doc", "kind", "target"), _cases())
def test_repository_path_in_prose_exists(doc: str, kind: str, target: str) -> None:
    if kind == "test":
        assert list((REPO / "tests").rglob(target)), f"{doc} names {target}: no such test file"
        return
    resolved = (REPO / target).resolve()
    assert resolved.exists() and (REPO in resolved.parents or resolved == REPO), (
        f"{doc} names {target}, which is not in the repository")


def test_the_documents_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in MARKDOWN}
    assert {"README.md", "docs/operations.md", "docs/multiprocess-store.md"} <= names
    assert len(_link_cases()) > 20  # the README and docs link to each other


def test_no_reference_outside_the_repository() -> None:
    for doc in PROSE_DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, (
            f"{doc.name} cites the shared spec, which a clone does not have")


def deploy_links(root: Path = REPO) -> list[tuple[Path, str]]:
    """Links into this repository on GitHub in deploy/ (runbook_url and the like)."""
    found = []
    for path in sorted((root / "deploy").rglob("*")):
        if not path.is_file() or path.suffix not in (".yml", ".yaml", ".json", ".md", ".py"):
            continue
        for match in GITHUB.finditer(path.read_text(errors="replace")):
            found.append((path, match[0]))
    return found


def test_links_from_deploy_into_the_repository_exist() -> None:
    links = deploy_links()
    # The alert rules, their unit tests and the generated PrometheusRule all carry runbooks.
    assert {p.name for p, _ in links} >= {"tasker-alerts.yml", "prometheusrule.yaml"}
    problems = {check_target(path, url) for path, url in links} - {None}
    assert not problems, "\n".join(sorted(problems))


def test_every_runbook_url_names_an_alert_heading() -> None:
    rules = (REPO / "deploy/prometheus/rules/tasker-alerts.yml").read_text()
    linked = re.findall(r"runbook_url:\s*\"[^\"]*docs/operations\.md#([\w-]+)\"", rules)
    alerts = re.findall(r"^\s*- alert:\s*(\w+)", rules, re.M)
    assert linked and len(linked) == len(alerts)
    assert [a for a in linked if a not in anchors(REPO / "docs" / "operations.md")] == []


# --- the checker itself -------------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "deploy").mkdir()
    (tmp_path / "docs" / "ops.md").write_text(
        "# Operations\n\n## Alert: TaskerQueueBacklog\n\n## Alert: TaskerQueueBacklog\n\n"
        "```\n# Not a heading\n```\n<a id=\"kept\"></a>\n")
    return tmp_path


@pytest.mark.parametrize(("target", "broken"), [
    ("docs/ops.md", False),
    ("docs/ops.md#alert-taskerqueuebacklog", False),
    ("docs/ops.md#alert-taskerqueuebacklog-1", False),
    ("docs/ops.md#kept", False),
    ("#readme", False),
    ("https://example.com/x#y", False),
    ("https://github.com/tasker/tasker/blob/main/docs/ops.md#operations", False),
    ("docs/ops.md#alert-taskerqueuebacklog-2", True),
    ("docs/ops.md#not-a-heading", True),
    ("docs/ops.md#alert-taskernoworkers", True),
    ("#no-such-heading", True),
    ("docs/missing.md", True),
    ("../outside.md", True),
    ("https://github.com/tasker/tasker/blob/main/docs/ops.md#alert-nope", True),
    ("https://github.com/tasker/tasker/blob/main/docs/gone.md", True),
])
def test_the_checker_reports_a_broken_link_or_anchor(tree: Path, target: str,
                                                     broken: bool) -> None:
    readme = tree / "README.md"
    readme.write_text(f"# readme\n\nSee [it]({target}), or `[not]({target}x)` in code.\n")
    assert link_targets(readme) == [target]
    assert (check_target(readme, target, root=tree) is not None) is broken


def test_the_checker_reads_reference_links_and_runbook_urls(tree: Path) -> None:
    doc = tree / "docs" / "index.md"
    doc.write_text("Read [the runbook][rb].\n\n[rb]: ops.md#alert-taskernoworkers\n")
    assert link_targets(doc) == ["ops.md#alert-taskernoworkers"]
    assert check_target(doc, "ops.md#alert-taskernoworkers", root=tree) is not None
    rules = tree / "deploy" / "alerts.yml"
    rules.write_text('runbook_url: "https://github.com/tasker/tasker/blob/main/docs/ops.md'
                     '#alert-taskernoworkers"\n')
    [(path, url)] = deploy_links(tree)
    assert path == rules and check_target(rules, url, root=tree) is not None
