"""The user docs: every relative link and #anchor resolves, each demo page is one page for users
(how to run it, results, how to read the output, its tuning history elsewhere), and the names
the demo pages document are the ones the code prints and writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentrl.eval import self_correction_metrics
from agentrl.training.report import TABLE_COLUMNS
from agentrl.types import Step, Trajectory

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
#: demo page -> the page that keeps the history of the settings tried for it
DEMO_PAGES = {
    "demo.md": "experiments/arithmetic_demo_tuning.md",
    "demo_search.md": "experiments/search_demo_tuning.md",
}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The page without its code blocks (a link or heading inside one is not one)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, title in HEADING.findall(_prose(page.read_text())):
        slug = _slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _headings(page: Path, level: int) -> list[str]:
    return [title for hashes, title in HEADING.findall(_prose(page.read_text())) if len(hashes) == level]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_anchor_slugs_follow_github() -> None:
    assert _slug("Refusing a botched closing tag: seed 2's drift, before and after") == \
        "refusing-a-botched-closing-tag-seed-2s-drift-before-and-after"
    assert _slug("The same setting at lr 2e-4 (the previous demo)") == \
        "the-same-setting-at-lr-2e-4-the-previous-demo"
    assert _slug("Drift into `<search> Kunufu</answer>`") == "drift-into-search-kunufuanswer"


@pytest.mark.parametrize("name", sorted(DEMO_PAGES))
def test_each_demo_page_is_one_page_for_users(name: str) -> None:
    page = DOCS / name
    text = page.read_text()
    assert {"Run it", "What it does", "Results", "How to read the output"} <= set(_headings(page, 2))
    # The history of the settings tried lives on its own page, linked from the demo page.
    history = DEMO_PAGES[name]
    assert (DOCS / history).is_file()
    assert f"]({history}" in text
    # Readable in a few minutes: its tables and a few screens of prose (the tuning diaries
    # these pages replace ran to 231 and 1274 lines).
    assert len(text.splitlines()) <= 250, "a demo page should read in a few minutes"
    for word in ("Earlier setting", "previous setting", "First round", "Second round"):
        assert not any(word.lower() in h.lower() for h in _headings(page, 2) + _headings(page, 3)), word


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell matches `first_cell` (a regex)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if re.fullmatch(first_cell, cells[0]):
                rows.append(cells)
    return rows


def _code_identifiers(cell: str) -> list[str]:
    return [name for name in re.findall(r"`([^`]+)`", cell) if re.fullmatch(r"[\w@]+", name)]


@pytest.mark.parametrize("name", sorted(DEMO_PAGES))
def test_the_printed_table_and_results_keys_are_the_codes(name: str) -> None:
    text = (DOCS / name).read_text()
    titles = [title for _, title in TABLE_COLUMNS]
    rows = [r for r in _table_rows(text, r"[\w@ -]+") if r[0] in titles and len(r) == 3]
    assert [r[0] for r in rows] == titles, \
        f"docs/{name} should list the printed columns (TABLE_COLUMNS of agentrl/training/report.py) in order"
    episodes = [Trajectory(token_ids=[], loss_mask=[], logprobs=[], prompt_len=0, success=True,
                           steps=[Step(action_text="a", action_span=(0, 1), info={"tools/calls": 1})])]
    written = set(self_correction_metrics(episodes, ks=(1, 5)))
    # ... and what the evaluation and the run add to them (`metrics["seconds"] = ...`).
    for module in ("agentrl/eval/runner.py", "agentrl/training/run.py"):
        written |= set(re.findall(r'metrics\["(\w+)"\]\s*=', (ROOT / module).read_text()))
    for _, key_cell, _ in rows:
        for key in _code_identifiers(key_cell):
            assert key in written, key


@pytest.mark.parametrize("name", sorted(DEMO_PAGES))
def test_documented_metric_names_are_logged_by_the_code(name: str) -> None:
    text = (DOCS / name).read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "agentrl").rglob("*.py"))
    namespaces = ("sft", "rollout", "reward", "loss", "policy", "perf", "tools", "eval")
    rows = _table_rows(text, r"`(%s)/`" % "|".join(namespaces))
    assert sorted(r[0].strip("`/") for r in rows) == sorted(namespaces)
    names = [f"{row[0].strip('`')}{key}" for row in rows for key in _code_identifiers(row[1])]
    names += re.findall(r"`((?:%s)/\w+)`" % "|".join(namespaces), text)
    assert len(names) > 30
    missing = [n for n in names if f'"{n}"' not in source and f"'{n}'" not in source]
    assert not missing, missing


def test_nothing_points_to_files_users_do_not_have() -> None:
    """Code, tests and docs point to this repository's own pages, never to design notes that
    live outside it."""
    outside = ("DESIGN" + ".md", "SANDBOX_CHECKLIST" + ".md", "ALGORITHMS" + ".md", "../" + "shared")
    paths = [ROOT / "README.md"] + [p for folder in ("agentrl", "tests", "docs", "benchmarks", "recipes")
                                    for p in (ROOT / folder).rglob("*")
                                    if p.is_file() and p.suffix in (".py", ".md", ".yaml")]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert not [name for name in outside if name in text], path
