"""The README and docs say what is true of the repository: no issue numbers (a user cannot look
them up), no talk of how the tool was built (sessions, engineers: a user has neither), no link to a file that is not in it, and no reference from the source to notes outside it."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ISSUE = re.compile(r"\bissues? #?\d+|(?<![\w&/])#\d{1,3}\b|\bthis issue\b", re.IGNORECASE)
# the making of the tool, not the tool: a user has no session, engineer or lead
MAKING = re.compile(r"\b(?:this|that|a|the|earlier|later|next) session\b|\bsessions\b|\bengineers?'?s?\b|\bthe lead\b|"
                    r"\bhelpers?\b(?! (?:function|module|script))", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a shell comment `# 1` is not an issue number)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def test_docs_name_no_issue_numbers():
    found = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}"
             for p in DOCS for text in [_prose(p.read_text())] for m in ISSUE.finditer(text)]
    assert not found, "issue numbers in the docs:\n" + "\n".join(found)


def test_docs_speak_of_the_tool_not_of_its_making():
    found = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r}"
             for p in DOCS for text in [_prose(p.read_text())] for m in MAKING.finditer(text)]
    assert not found, "the docs speak of how the tool was made:\n" + "\n".join(found)


def test_docs_link_only_to_files_that_exist():
    missing = []
    for p in DOCS:
        for m in LINK.finditer(p.read_text()):
            target = m.group(1).split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):  # an anchor in the same file, or a URL
                continue
            if not (p.parent / target).exists():
                missing.append(f"{p.relative_to(ROOT)}: {m.group(1)}")
            elif "#" in m.group(1) and target.endswith(".md"):
                anchor = m.group(1).split("#", 1)[1]
                if anchor not in _anchors(p.parent / target):
                    missing.append(f"{p.relative_to(ROOT)}: {m.group(1)} (no such heading)")
    assert not missing, "links to missing files:\n" + "\n".join(missing)


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", _prose(md.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_nothing_refers_to_notes_outside_the_repository():
    files = [*DOCS, *ROOT.glob("configs/**/*.yaml"), *ROOT.glob("pipeline/**/*.py"), *ROOT.glob("tasks/*.py")]
    found = [str(p.relative_to(ROOT)) for p in files if "paper-notes.md" in p.read_text()]
    assert not found, "references to shared/paper-notes.md, which is not in the repository: " + ", ".join(found)
