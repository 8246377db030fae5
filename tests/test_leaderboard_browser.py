"""The leaderboard website in a real browser: headless Chromium driven by selenium loads the generated site from a
localhost server, sorts columns by clicking their headers (numbers as numbers, missing values last, lower bounds
above their value), filters rows, follows an entry link, and takes screenshots that must not be blank.

Needs the optional extra ``browser`` (selenium) and the Debian packages ``chromium`` and ``chromium-driver``;
skipped, with the reason, where either is missing, unless BITBENCH_REQUIRE_BROWSER=1 (CI), where it fails."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest

from bitbench.leaderboard import site
from bitbench.leaderboard.entries import write_entry
from bitbench.leaderboard.svg import PALETTE

try:  # the hand-made suite and entries of the site tests (tests/ as a plain folder or as a package)
    from test_leaderboard_site import BOARD_SUITE, make_board
except ImportError:  # pragma: no cover
    from .test_leaderboard_site import BOARD_SUITE, make_board

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.browser
REQUIRED = os.environ.get("BITBENCH_REQUIRE_BROWSER") == "1"


def _missing(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (BITBENCH_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _browser_binaries():
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return chromium, driver


# ----------------------------------------------------------------------------------------------------------------
# a PNG decoder (8-bit RGB/RGBA, not interlaced: what Chromium writes), so that the check needs no imaging library
def decode_png(data: bytes):
    """``(width, height, channels, rows)``: each row the bytes of its pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, [], None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG {head}"
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride, rows, prev, i = w * bpp, [], bytearray(w * bpp), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        if f == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + prev[x]) >> 1)) & 255
        elif f == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        else:
            assert f == 0, f"bad PNG filter {f}"
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def pixel_stats(png: bytes):
    """(distinct colours, share of pixels that are not white, {(r, g, b): count})."""
    w, h, bpp, rows = decode_png(png)
    counts: dict = {}
    for row in rows:
        for x in range(0, len(row), bpp):
            c = (row[x], row[x + 1], row[x + 2])
            counts[c] = counts.get(c, 0) + 1
    white = counts.get((255, 255, 255), 0)
    return len(counts), 1 - white / (w * h), counts


def test_png_decoder_against_zlib_written_image():
    """The decoder reads every filter type back (an image written here, independent of any browser)."""
    w, h = 5, 5
    pixels = [[((x * 50) & 255, (y * 60) & 255, (x * y * 7) & 255) for x in range(w)] for y in range(h)]
    raw = bytearray()
    prev = bytes(w * 3)
    for y, row in enumerate(pixels):
        line = bytes(v for p in row for v in p)
        f = y % 5
        if f == 0:
            enc = line
        elif f == 1:
            enc = bytes((line[x] - (line[x - 3] if x >= 3 else 0)) & 255 for x in range(len(line)))
        elif f == 2:
            enc = bytes((a - b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            enc = bytes((line[x] - (((line[x - 3] if x >= 3 else 0) + prev[x]) >> 1)) & 255 for x in range(len(line)))
        else:
            out = []
            for x in range(len(line)):
                a = line[x - 3] if x >= 3 else 0
                b, c = prev[x], (prev[x - 3] if x >= 3 else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                out.append((line[x] - (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255)
            enc = bytes(out)
        raw += bytes([f]) + enc
        prev = line

    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
    _, _, _, rows = decode_png(png)
    assert [list(zip(r[0::3], r[1::3], r[2::3])) for r in rows] == pixels


# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The site of the hand-made board suite (entries of format /2, several models each), served on 127.0.0.1 (a
    thread; stopped after the module): ``(base URL, (suite, entries), entries folder)``."""
    root = tmp_path_factory.mktemp("site")
    configs = root / "configs"
    configs.mkdir()
    (configs / "board.toml").write_text(BOARD_SUITE)
    board = make_board(configs)
    for e in board[1]:
        write_entry(e, root / "entries" / "board" / f"{e['name']}.json")
    site.write_site(root / "site", root / "entries", configs_dir=configs)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root / "site"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", board, root / "entries"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[browser]')")
    chromium, driver_path = _browser_binaries()
    if chromium is None or driver_path is None:
        _missing("no headless browser: chromium and chromedriver are not installed "
                 "(apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium's driver manager must not look anything up
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions", "--window-size=1100,800", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _column(drv, table_id: str, key: str):
    """[(data-sort or None, data-bound, text)] of the visible rows of one column, top to bottom."""
    return drv.execute_script("""
        const t = document.getElementById(arguments[0]);
        const ths = Array.from(t.tHead.rows[0].cells);
        const i = ths.findIndex(th => th.dataset.key === arguments[1]);
        if (i < 0) return null;
        return Array.from(t.tBodies[0].rows).filter(r => !r.hidden).map(r => {
            const td = r.cells[i];
            return [td.getAttribute('data-sort'), td.getAttribute('data-bound'), td.textContent.trim(),
                    r.dataset.entry];
        });""", table_id, key)


def _click_header(drv, table_id: str, key: str):
    from selenium.webdriver.common.by import By

    th = drv.find_element(By.CSS_SELECTOR, f'#{table_id} th[data-key="{key}"] button')
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", th)
    th.click()
    return drv.find_element(By.CSS_SELECTOR, f'#{table_id} th[data-key="{key}"]').get_attribute("aria-sort")


def _check_order(cells, descending: bool):
    have = [(float(s), int(b or 0)) for s, b, _, _ in cells if s is not None]
    missing = [c for c in cells if c[0] is None]
    assert cells[len(have):] == missing, "missing values must come last"
    assert have == sorted(have, reverse=descending), have


def test_sort_filter_follow_and_screenshot(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    base, (suite, entries), entries_dir = served
    browser.get(f"{base}/board/index.html")
    assert browser.title == "bitbench leaderboard: suite board"
    _no_console_errors(browser)
    box = browser.find_element(By.ID, "filter")
    assert box.is_displayed(), "the script did not run (the filter box stays hidden without it)"

    # numbers sort as numbers: a column whose text order differs from its numeric order
    key = "err@2"
    cells = _column(browser, "t-adversarial", key)
    texts = [c[2] for c in cells]
    assert sorted(texts) != [c[2] for c in sorted(cells, key=lambda c: float(c[0]))], "column does not discriminate"
    assert _click_header(browser, "t-adversarial", key) == "ascending"  # lower is better: best first
    cells = _column(browser, "t-adversarial", key)
    _check_order(cells, descending=False)
    assert cells[-1][3] == "lenet-normal" and float(cells[-1][2].split()[0]) > 50  # most trials near chance
    assert cells[0][2].startswith("1.") and "[" in cells[0][2]  # mean [95% CI]
    assert _click_header(browser, "t-adversarial", key) == "descending"
    _check_order(_column(browser, "t-adversarial", key), descending=True)

    # missing values last in both directions (decode time: only the protected entries have one)
    for want in ("ascending", "descending"):
        assert _click_header(browser, "t-random", "decode_ms") == want
        cells = _column(browser, "t-random", "decode_ms")
        _check_order(cells, descending=want == "descending")
        protected = {e["name"] for e in entries if any(r.get("decode_ms") for r in e["results"])}
        assert {c[3] for c in cells if c[0] is not None} == protected and cells[-1][0] is None

    # flips to chance, higher is better: the lower bounds ("> 100": not reached) come first
    assert _click_header(browser, "t-adversarial", "flips_to_chance") == "descending"
    cells = _column(browser, "t-adversarial", "flips_to_chance")
    _check_order(cells, descending=True)
    assert cells[0][2] == "> 100 (0/15)" and cells[1][2].startswith("> 100 [")  # censored medians first
    assert cells[-1][2] == "3 [2, 5] (15/15)"

    # text column: alphabetical
    assert _click_header(browser, "t-random", "entry") == "ascending"
    names = [c[3] for c in _column(browser, "t-random", "entry")]
    assert names == sorted(e["name"] for e in entries)

    # filter: every word must match the entry, defense or model
    box.send_keys("rquant")
    want = sorted(e["name"] for e in entries if "rquant" in f"{e['name']} {e['defense']} {e['model']}".lower())
    assert sorted(c[3] for c in _column(browser, "t-random", "entry")) == want
    count = browser.find_element(By.CSS_SELECTOR, '.count[data-table="t-random"]').text
    assert count == f"{len(want)} of {len(entries)} rows"
    box.send_keys(" SECDED")
    assert [c[3] for c in _column(browser, "t-random", "entry")] == ["lenet-rquant-secded"]
    assert [c[3] for c in _column(browser, "t-adversarial", "entry")] == ["lenet-rquant-secded"]
    box.clear()
    box.send_keys("no-such-row")
    assert _column(browser, "t-random", "entry") == []
    for _ in range(len("no-such-row")):
        box.send_keys("\b")
    assert len(_column(browser, "t-random", "entry")) == len(entries)

    # screenshot of the suite page: not blank, and the plot drew in the palette's colours
    browser.execute_script("window.scrollTo(0, 0)")
    shot = browser.get_screenshot_as_png()
    (tmp_path / "suite.png").write_bytes(shot)
    colours, ink, _ = pixel_stats(shot)
    assert colours >= 40 and ink > 0.05, f"blank-looking screenshot: {colours} colours, {ink:.1%} non-white"
    figure = browser.find_element(By.CSS_SELECTOR, "#random figure svg")
    browser.execute_script("arguments[0].scrollIntoView()", figure)
    plot = figure.screenshot_as_png
    _, _, counts = pixel_stats(plot)
    drawn = [c for c in PALETTE[:3] if counts.get(tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)), 0) >= 10]
    assert len(drawn) == 3, "the first three series' colours are not in the plot"

    # follow the first row's entry link
    browser.execute_script("window.scrollTo(0, 0)")
    first = browser.find_element(By.CSS_SELECTOR, "#t-random tbody tr:not([hidden]) td a")
    name = first.text
    first.click()
    assert browser.current_url == f"{base}/board/entries/{name}.html"
    assert browser.find_element(By.TAG_NAME, "h1").text == name
    code = browser.find_element(By.CSS_SELECTOR, "pre code").text
    assert code == f"python -m benchmark run --entry {entries_dir.as_posix()}/board/{name}.json"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.plot")) == 2
    shot = browser.get_screenshot_as_png()
    colours, ink, _ = pixel_stats(shot)
    assert colours >= 20 and ink > 0.03, f"blank-looking entry page: {colours} colours, {ink:.1%} non-white"
    _no_console_errors(browser)


def _no_console_errors(drv):
    """No script error and no Content-Security-Policy violation on the page (the console's SEVERE messages)."""
    errors = [m["message"] for m in drv.get_log("browser") if m["level"] == "SEVERE"]
    assert not errors, errors
