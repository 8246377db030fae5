"""Every relative link and anchor in README.md and docs/*.md resolves (as GitHub renders them: heading ids are
GitHub's, which mkdocs.yml also uses), docs/ links stay inside docs/ (the docs site has nothing else), and the API
page documents every public name of ``bitbench``. No mkdocs needed."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def doc_files() -> list[Path]:
    files = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "leaderboard" / "README.md"]
    files += [p for p in (REPO / "CHANGELOG.md",) if p.is_file()]
    return [p for p in files if p.is_file()]


FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HTML_ID = re.compile(r"""<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*(?:\s#+\s*)?$")


def _lines_outside_code(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) <= {fence[0]}:
                fence = None
            continue
        yield i, line


def github_slug(heading: str) -> str:
    """The id GitHub gives a heading: its text (markup removed), lower case, everything but letters, digits,
    '_', '-' and spaces dropped, each space a '-'."""
    t = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", heading)   # links and images: their text
    t = CODE_SPAN.sub(lambda m: m.group(2).strip(), t)                          # code spans: their content
    t = re.sub(r"<[^>]+>", "", t)                                               # inline HTML tags
    t = t.replace("*", "")
    return re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Heading ids of a markdown file (duplicates numbered -1, -2 ... as GitHub does) and explicit HTML ids."""
    out, seen, prev = set(), {}, ""
    for _, line in _lines_outside_code(path.read_text(encoding="utf-8")):
        text = None
        m = ATX.match(line)
        if m:
            text = m.group(2)
        elif re.fullmatch(r"\s{0,3}(=+|-+)\s*", line) and prev.strip() and not prev.lstrip().startswith(
                ("-", "*", "|", "#", ">")):
            text = prev.strip()  # a setext heading: the line above, underlined
        if text is not None:
            slug = github_slug(text)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
        out |= set(HTML_ID.findall(line))
        prev = line
    return out


def links(path: Path):
    """(line number, target) of every link and image in a markdown file, outside code (link texts may wrap)."""
    text = path.read_text(encoding="utf-8")
    kept = dict(_lines_outside_code(text))
    plain = "\n".join(kept.get(i, "") for i in range(1, text.count("\n") + 2))  # code blocks: empty lines
    plain = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), plain)      # code spans: blanks
    for m in INLINE.finditer(plain):
        yield plain.count("\n", 0, m.start()) + 1, m.group(2).strip("<>")
    for i, line in enumerate(plain.split("\n"), 1):
        m = REFDEF.match(line)
        if m:
            yield i, m.group(1).strip("<>")
        for target in HTML_LINK.findall(line):
            yield i, target


def _is_external(target: str) -> bool:
    return bool(re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target))


PLOT = re.compile(r"leaderboard/plots/(?P<suite>[\w.-]+?)(?:-flips)?\.png")


def pending_plot(dest: Path, repo: Path = REPO) -> str | None:
    """The suite of a generated leaderboard plot (``leaderboard/plots/<suite>.png``) that may be missing because its
    suite has no entries yet (they are regenerated from records, and the plot with them); None for any other file."""
    try:
        m = PLOT.fullmatch(dest.relative_to(repo).as_posix())
    except ValueError:
        return None
    if m is None or any((repo / "leaderboard" / "entries" / m.group("suite")).glob("*.json")):
        return None
    return m.group("suite")


def broken_links(path: Path, repo: Path = REPO, docs: Path = DOCS) -> list[str]:
    """What does not resolve among the links of ``path`` (a file of the repository ``repo``). A link to the plot of
    a suite without entries (:func:`pending_plot`) is not counted: :func:`test_pending_plots` reports it."""
    bad = []
    cache: dict[Path, set[str]] = {}
    for line, target in links(path):
        if _is_external(target):
            continue
        where = f"{path.relative_to(repo)}:{line}: {target}"
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if file_part:
            if repo not in dest.parents and dest != repo:
                bad.append(f"{where}: points outside the repository")
                continue
            if not dest.exists():
                if pending_plot(dest, repo) is None:
                    bad.append(f"{where}: {dest.relative_to(repo)} does not exist")
                continue
            if path.parent == docs and docs not in dest.parents:
                bad.append(f"{where}: docs/ pages may link only inside docs/ (the docs site has nothing else); "
                           "use an absolute URL")
                continue
        if anchor:
            if dest.suffix == ".md":
                ids = cache.setdefault(dest, anchors(dest))
                if unquote(anchor) not in ids:
                    bad.append(f"{where}: no heading #{anchor} in {dest.relative_to(repo)}")
            elif dest.is_dir() or not re.fullmatch(r"L\d+(-L\d+)?", anchor):
                bad.append(f"{where}: an anchor into a file that is not markdown")
    return bad


def test_slugs_are_githubs():
    assert github_slug("bitbench — bit-error robustness") == "bitbench--bit-error-robustness"
    assert github_slug("Protected memory (defense specs with `+`: `rquant+secded`, `clip+radar:group=16`)") == \
        "protected-memory-defense-specs-with--rquantsecded-clipradargroup16"
    assert github_slug("Your own model: evaluate a trained checkpoint") == \
        "your-own-model-evaluate-a-trained-checkpoint"
    assert github_slug("[Link](x.md) and **bold** snake_case") == "link-and-bold-snake_case"


def test_link_checker_finds_broken_links(tmp_path):
    """The checker itself: a broken file, a broken anchor, duplicate and setext headings, code, HTML ids."""
    repo = tmp_path.resolve()
    (repo / "docs").mkdir()
    (repo / "docs" / "a.md").write_text("# Title\n\n## Same\n\n## Same\n\nOther\n-----\n")
    (repo / "README.md").write_text(
        "[ok](docs/a.md#same-1) [ok2](docs/a.md#other) [self](#top) [gone](docs/nope.md)\n"
        "[bad link\ntext](docs/a.md#nope)\n"
        "<a id=\"top\"></a> `[code](ignored.md)` [web](https://example.org/x)\n"
        "```\n[fenced](ignored.md)\n```\n[ref]: docs/a.md#title\n")
    bad = broken_links(repo / "README.md", repo, repo / "docs")
    assert len(bad) == 2 and "nope.md does not exist" in bad[0] and "2: docs/a.md#nope: no heading" in bad[1], bad
    (repo / "docs" / "b.md").write_text("[out](../README.md)\n")
    assert "may link only inside docs/" in broken_links(repo / "docs" / "b.md", repo, repo / "docs")[0]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path):
    bad = broken_links(path)
    assert not bad, "\n".join(bad)


def test_api_page_documents_every_public_name():
    import bitbench

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^:::\s+(\S+)\s*$", api, re.M))
    missing = [f"{mod}.{name}" for name, mod in sorted(bitbench._API.items()) if f"{mod}.{name}" not in documented]
    assert not missing, f"docs/api.md lacks ::: entries for {missing}"


def test_pending_plots():
    """A linked leaderboard plot may be missing only while its suite has no entries (the entries and the plot are
    regenerated together); that state is reported as an expected failure, never passed silently."""
    pending = sorted({f"{p.relative_to(REPO)}:{line}: {target} (suite {suite!r} has no entries)"
                      for p in doc_files() for line, target in links(p) if not _is_external(target)
                      for suite in [pending_plot((p.parent / unquote(target.partition("#")[0])).resolve())]
                      if suite is not None and not (p.parent / unquote(target.partition("#")[0])).exists()})
    if pending:
        pytest.xfail("plots pending regeneration of their suite's entries: " + "; ".join(pending))


def test_pending_plot_rule(tmp_path):
    repo = tmp_path.resolve()
    (repo / "leaderboard" / "entries" / "cifar10").mkdir(parents=True)
    (repo / "leaderboard" / "entries" / "cifar10" / "row.json").write_text("{}")
    (repo / "README.md").write_text("![a](leaderboard/plots/default.png) ![b](leaderboard/plots/cifar10.png) "
                                    "![c](leaderboard/plots/other/x.png)\n")
    bad = broken_links(repo / "README.md", repo, repo / "docs")
    assert pending_plot(repo / "leaderboard" / "plots" / "default.png", repo) == "default"
    assert len(bad) == 2 and "cifar10.png does not exist" in bad[0] and "other/x.png" in bad[1], bad
