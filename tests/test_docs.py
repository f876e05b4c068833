"""What a user reads: every relative link of README.md and docs/ leads somewhere, the generated
configuration page is current, and the front page stays a front page."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector.cli import config_doc

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (outside code blocks)."""
    found, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def links(page: Path) -> list[str]:
    """The link targets of a page, outside code blocks."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return LINK.findall(text)


def test_slugs_follow_github():
    assert slug("SVMs against the softmax") == "svms-against-the-softmax"
    assert slug("Results: every measurement, by the question it answers") == \
        "results-every-measurement-by-the-question-it-answers"
    assert slug("`proposals` (`proposals.config.ProposalConfig`)") == "proposals-proposalsconfigproposalconfig"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked})")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    assert not broken, f"{page.name}: {broken}"


def test_no_page_points_at_the_development_machine_but_one_line():
    lines = [f"{page.name}: {line}" for page in PAGES for line in page.read_text().splitlines()
             if "../shared" in line]
    assert len(lines) <= 1, lines


def test_the_front_page_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    prose, in_code = [], False
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and not line.startswith("|") and len(line) > 200:
            prose.append(line)
    assert not prose, prose


def test_the_configuration_page_is_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == config_doc.render(), \
        "docs/configuration.md is stale: run python tools/config_doc.py"


def test_every_config_key_has_a_meaning():
    text = config_doc.render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 50
    assert all(not line.rstrip().endswith("|  |") for line in rows), [r for r in rows if r.endswith("|  |")]
