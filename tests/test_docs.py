"""The README stays short and the manual in docs/ stays connected: the two set-up commands,
the README's length, and every relative link (file and #anchor) of README.md and docs/*.md."""
from __future__ import annotations

import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SET_UP_COMMANDS = (
    "bash scripts/demo.sh          # end to end on a synthetic catalog (creates .venv if needed)",
    "bash scripts/test.sh          # the whole test suite (what .ci/run runs)",
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where `[x](y)` is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def prose_headings(text: str) -> str:
    # Headings keep their inline code's text (GitHub slugs it); only code blocks go.
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(page: pathlib.Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces → '-', repeats get -1, -2."""
    seen: collections.Counter = collections.Counter()
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose_headings(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def relative_links(page: pathlib.Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_readme_is_short_and_has_the_two_set_up_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    for command in SET_UP_COMMANDS:
        assert command in lines, command
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_manual_is_in_docs():
    # The README's former sections, one page each, so a link from the README finds them.
    expected = {"index", "demo", "features", "model", "embed", "store", "pretraining", "probes",
                "runners", "outputs"}
    assert expected <= {page.stem for page in DOCS.glob("*.md")}
    listed = {DOCS / target.split("#")[0] for target in relative_links(DOCS / "index.md")}
    unlisted = set(DOCS.glob("*.md")) - listed - {DOCS / "index.md"}
    assert not unlisted, f"docs/index.md does not list {sorted(p.name for p in unlisted)}"


def broken_links(page: pathlib.Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.is_file() and anchor not in anchors(resolved):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_broken_links_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok anchor](other.md#a-code-heading) [web](https://delta.io)\n"
        "[missing](gone.md) [bad anchor](other.md#nowhere) `[in code](gone.md)`\n"
        "```\n[in a block](gone2.md)\n```\n"
    )
    assert broken_links(page) == ["gone.md", "other.md#nowhere"]


def test_anchor_slugs_follow_github():
    # The link check is only as good as its slugs: two headings of docs/ as GitHub ids them.
    assert "several-models-and-datasets-musicrep-probe-suite" in anchors(DOCS / "probes.md")
    assert "the-store-nightly-re-embedding-with-musicrep-reembed-a-delta-lake-table" in anchors(DOCS / "store.md")
