"""The documentation runs: every ```python block executes and every relative link resolves.

Blocks are collected from README.md, docs/*.md and benchmarks/README.md: every
fenced block whose info string is exactly ``python`` (```text, ```bash and
unlabelled fences are not run). Each block is one test, with the id
``file:line`` of its opening fence.

Execution: ``exec`` in a fresh namespace in this process (``__name__`` set to
``"__main__"``), with the working directory set to the repository root. Blocks
are self-contained (each does its own imports) and must not touch global
state: the documented API has none beyond JAX's compilation cache, and sharing
one process keeps JAX imported once, so each block costs seconds on a CPU. A
block that writes files must write them to a temporary directory.

Blocks run on the files the repository ships (``pretrained/``); none is
skipped, so a shipped file a block needs cannot go missing unnoticed.

Links: every markdown link or image ``[text](target)`` in those pages and in
pretrained/README.md and experiments/*/README.md whose target is not a URL (``scheme:``) or a bare
``#anchor`` must name an existing file or directory, relative to the page's
own folder (the ``#fragment`` is ignored). Links inside code blocks and inline
code are not links and are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
# [text](target) and ![alt](target); the target ends at whitespace or ")".
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def doc_pages() -> list[Path]:
    """The pages whose ```python blocks are executed."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages.append(ROOT / "benchmarks" / "README.md")
    return [p for p in pages if p.is_file()]


def linked_pages() -> list[Path]:
    """The pages whose relative links are checked."""
    return [
        *doc_pages(),
        ROOT / "pretrained" / "README.md",
        *sorted((ROOT / "experiments").glob("*/README.md")),
    ]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def split_fences(text: str):
    """Yields ``(kind, start_line, info, lines)``; kind is "code" or "prose".

    ``start_line`` is 1-based: the fence line for code, the first line for prose.
    An unclosed fence runs to the end of the file, as CommonMark reads it.
    """
    lines = text.splitlines()
    i, prose_start, prose = 0, 1, []
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None or (m.group(2)[0] == "`" and "`" in m.group(3)):
            prose.append(lines[i])
            i += 1
            continue
        yield "prose", prose_start, "", prose
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        start, body = i + 1, []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and close.group(2)[0] == fence[0]
                and len(close.group(2)) >= len(fence)
                and not close.group(3).strip()
            ):
                break
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        yield "code", start, info, body
        i += 1
        prose_start, prose = i + 1, []
    yield "prose", prose_start, "", prose


def python_blocks():
    """``pytest.param(code, id="file:line")`` for every ```python block."""
    params = []
    for page in doc_pages():
        for kind, start, info, body in split_fences(page.read_text(encoding="utf-8")):
            if kind == "code" and info == "python":
                params.append(pytest.param("\n".join(body) + "\n", id=f"{_rel(page)}:{start}"))
    return params


def test_docs_have_python_blocks():
    """The collector finds blocks at all (a parser bug must not pass silently)."""
    assert any(_rel(p).startswith("docs/") for p in doc_pages())
    assert python_blocks()


@pytest.mark.parametrize("code", python_blocks())
def test_python_block_runs(code, monkeypatch, request):
    monkeypatch.chdir(ROOT)
    filename = request.node.callspec.id  # "docs/usage.md:17" in tracebacks
    exec(compile(code, filename, "exec"), {"__name__": "__main__"})


def relative_links(page: Path):
    """``(line, target)`` for every link in the page's prose that is not a URL or an anchor."""
    text = page.read_text(encoding="utf-8")
    for kind, start, _, body in split_fences(text):
        if kind != "prose":
            continue
        for offset, line in enumerate(body):
            for m in _LINK.finditer(_INLINE_CODE.sub("", line)):
                target = m.group(1)
                if target.startswith("#") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target):
                    continue
                yield start + offset, target


@pytest.mark.parametrize("page", linked_pages(), ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for line, target in relative_links(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(f"{_rel(page)}:{line}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_checks_see_what_they_must():
    """The parser finds links and blocks where they are, and nowhere else."""
    text = (
        "See [a](x.md) and ![b](img/y.png#frag), `[c](not-a-link)`.\n"
        '<!-- a comment -->\n```python\nprint("[d](in-code)")\n```\n'
        "```text\nz\n```\n[e](https://example.com) [f](#anchor)\n"
    )
    parts = list(split_fences(text))
    code = [(start, info) for kind, start, info, _ in parts if kind == "code"]
    assert code == [(3, "python"), (6, "text")]
    found = [
        m.group(1)
        for kind, _, _, body in parts
        if kind == "prose"
        for line in body
        for m in _LINK.finditer(_INLINE_CODE.sub("", line))
    ]
    assert found == ["x.md", "img/y.png#frag", "https://example.com", "#anchor"]
