"""The user docs: README stays a map, every relative link (and its #heading) resolves, no issue-tracker references."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 260

# [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# "issue 12", "issues 3", "issue #12", "PR 7", "#12 " -- not ffprobe's "Stream #0:N" or a URL's fragment
ISSUE_REF = re.compile(r"\b(?:issues?|PR)\s+#?\d+|(?<![\w&/])#\d+(?![\w:])", re.IGNORECASE)


def user_docs() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str, anchors: bool = False) -> list:
    """Link targets that are files in this repository (no URL scheme, no bare #anchor); with
    `anchors`, (file, anchor or None) pairs."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks hold no links
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        out.append((path, anchor or None) if anchors else path)
    return out


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_readme_is_a_map():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (limit {MAX_README_LINES})"


@pytest.mark.parametrize("doc", user_docs(), ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    missing, bad_anchor = [], []
    for path, anchor in relative_links(doc.read_text(encoding="utf-8"), anchors=True):
        target = doc.parent / path
        if not target.exists():
            missing.append(path)
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text(encoding="utf-8")):
            bad_anchor.append(f"{path}#{anchor}")
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"
    assert not bad_anchor, f"{doc.relative_to(ROOT)} links to headings that do not exist: {bad_anchor}"


@pytest.mark.parametrize("doc", user_docs(), ids=lambda p: p.name)
def test_no_issue_references(doc):
    hits = [(n, m.group(0)) for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
            for m in ISSUE_REF.finditer(line)]
    assert not hits, f"{doc.relative_to(ROOT)}: issue-tracker references (line, text): {hits}"


def test_the_checks_catch_what_they_are_for():
    """The link and issue patterns on known text: they flag what they must and nothing else."""
    assert relative_links("[a](docs/x.md#y) ![b](img.png) [c](https://e.org/x) [d](#top) `[e](z.md)`") == [
        "docs/x.md", "img.png", "z.md"]
    assert relative_links("```\n[f](no.md)\n```") == []
    assert heading_anchors("# A b\n## What is verified, and what is not\n## The lean install (no PyTorch)\n") == {
        "a-b", "what-is-verified-and-what-is-not", "the-lean-install-no-pytorch"}
    flagged = ["see issue 12", "Issue #3.", "fixed in #45 now", "(#7)", "PR 9", "issues 10"]
    clean = ["ffprobe's `Stream #0:N`", "https://x.org/page#12", "tissue 3", "C# 7", "&#39;"]
    assert all(ISSUE_REF.search(t) for t in flagged), [t for t in flagged if not ISSUE_REF.search(t)]
    assert not any(ISSUE_REF.search(t) for t in clean), [t for t in clean if ISSUE_REF.search(t)]
