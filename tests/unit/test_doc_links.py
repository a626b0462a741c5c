"""Every relative link in README.md, bench/README.md and docs/*.md resolves: the file exists,
and a #fragment names a heading of that file (GitHub's anchor spelling)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped except - and _, spaces to -."""
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[`*]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_docs_are_found():
    names = {p.name for p in FILES}
    assert {"README.md", "metrics.md", "running.md", "operations.md", "flannel-compat.md"} <= names


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_relative_links_resolve(path):
    bad = []
    for target in links(path):
        file, _, frag = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{target}: no heading #{frag} in {dest.relative_to(ROOT)}")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_every_doc_is_linked_from_the_readme():
    readme = links(ROOT / "README.md")
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"docs/{doc.name} is not in the README's Documentation list"


def test_the_anchor_spelling():
    assert anchors(ROOT / "README.md") >= {"how-udpflannel-differs-from-flanneld", "health-and-metrics"}
