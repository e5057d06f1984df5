"""The results site in a real browser: every page of a site built from a run, opened in headless Chromium.

The site is `$KD_GAT_SITE_DIR` when set (CI builds it from the demo run with `make site`), else one built here from a
tiny run (synthetic data, one seed, the small variant, one epoch) into a temporary data root, with the project's own
`_quarto.yml` and templates (`KD_GAT_SITE_CONFIG` names another `_quarto.yml`). Each page is served over loopback
HTTP and checked for console errors, network requests that leave the machine, plotly figures that did not draw, the
window graphs' node count, and internal links that do not resolve; a screenshot of each lands beside the site, in
`<site>_screenshots/`. Without Chromium the browser test is skipped, unless `KD_GAT_REQUIRE_CHROMIUM` is set (CI).
"""
from __future__ import annotations
import functools, html.parser, http.server, json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1280,900"]
REQUIRE = os.environ.get("KD_GAT_REQUIRE_CHROMIUM", "") not in ("", "0")


def _browser_paths() -> tuple[str, str]:
    "Chromium and chromedriver (KD_GAT_CHROMIUM / KD_GAT_CHROMEDRIVER, else the PATH); skip or fail when missing."
    given = os.environ.get("KD_GAT_CHROMIUM")
    chromium = shutil.which(given) if given else next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    driver = shutil.which(os.environ.get("KD_GAT_CHROMEDRIVER") or "chromedriver")
    try: import selenium  # noqa: F401
    except ImportError: selenium = None
    missing = [what for what, ok in (("chromium", chromium), ("chromedriver", driver), ("the selenium package", selenium)) if not ok]
    if missing:
        why = f"{', '.join(missing)} not found (Debian: apt install chromium chromium-driver; pip install selenium)"
        if REQUIRE: pytest.fail(f"KD_GAT_REQUIRE_CHROMIUM is set but {why}")
        pytest.skip(why)
    return chromium, driver


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "The built site to test: $KD_GAT_SITE_DIR, or one built here from a tiny run."
    if given := os.environ.get("KD_GAT_SITE_DIR"):
        site = Path(given).resolve()
        assert (site / "index.html").is_file(), f"KD_GAT_SITE_DIR={given} has no index.html: build it with `make site`"
        return site
    _browser_paths()  # no browser: skip now, before minutes of building a site for it
    tmp = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if k not in ("KD_GAT_CACHE_ROOT", "KD_GAT_RAW_ROOT")}
    # KD_GAT_STATIC_FIGURES=0: no PNG copies of the figures (kaleido), which the HTML pages never show
    env.update(KD_GAT_DATA_ROOT=str(tmp / "data"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", KD_GAT_STATIC_FIGURES="0")
    kdgat = shutil.which("kdgat", path=str(Path(sys.executable).parent)) or shutil.which("kdgat")
    r = subprocess.run([kdgat, "run", "--dataset", "synthetic", "--seeds", "0", "--variants", "small", "--no-baseline",
                        "--set", "training.max_epochs=1", "--tag", "site"], env=env, cwd=tmp, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"the tiny run failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    run_id = Path(re.findall(r"^run folder: (.+)$", r.stdout, re.M)[-1].strip()).name
    config = os.environ.get("KD_GAT_SITE_CONFIG") or str(ROOT / "_quarto.yml")
    build = ("import sys\nfrom kdgat.site import build_site\n"
             "build_site(sys.argv[1], sys.argv[2], config=sys.argv[3])")
    r = subprocess.run([sys.executable, "-c", build, run_id, str(tmp / "_site"), config], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"build_site failed for run {run_id}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return tmp / "_site"


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if "site_libs" not in p.parts)


_re_load = re.compile(r"""<(?:script|link|img|iframe|source|video|audio)\b[^>]*?\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", re.I)


def test_no_page_references_a_cdn(site):
    "Every page loads its scripts, styles and images from the site itself: it works offline."
    bad = []
    for rel in _pages(site):
        text = (site / rel).read_text(encoding="utf-8", errors="replace")
        bad += [f"{rel}: loads {u}" for u in _re_load.findall(text)]
        bad += [f"{rel}: names {u}" for u in re.findall(r"https?://[\w.-]*cdn[\w.-]*/[^\"'\s)]*", text, re.I)]
    assert not bad, "pages that need the network:\n" + "\n".join(bad[:50])
    assert (site / "index.html").is_file()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def served(site):
    "The site over HTTP on a free loopback port."
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS: opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")  # empty: no extensions, no state
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.set_page_load_timeout(60)
    yield d
    d.quit()


_FIGURES = """
const out = {figures: 0, undrawn: [], graphs: []};
for (const el of document.querySelectorAll('.plotly-graph-div, .js-plotly-plot')) {
  out.figures++;
  if (!(el.classList.contains('js-plotly-plot') && el._fullLayout && el.querySelector('svg.main-svg'))) out.undrawn.push(el.id || '(no id)');
  const meta = el.layout && el.layout.meta;
  if (meta && meta.kind === 'window-graph') {
    const want = Array.isArray(meta.can_ids) ? meta.can_ids.length : meta.can_ids;
    const drawn = [];
    for (const t of el.querySelectorAll('g.trace')) {
      const cd = t.__data__, trace = cd && cd[0] && cd[0].trace;
      if (trace && trace.name === 'CAN IDs') drawn.push(t.querySelectorAll('path.point').length);
    }
    out.graphs.push({id: el.id, want: want, drawn: drawn});
  }
}
return out;"""
_LINKS = """return [...document.querySelectorAll('a[href], link[href], script[src], img[src], iframe[src], source[src]')]
  .map(e => [e.tagName.toLowerCase(), e.getAttribute('href') ?? e.getAttribute('src')]);"""


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


def test_every_page_in_chromium(browser, site, served):
    "No console error, nothing from the network, every figure drawn, window graphs whole, every internal link resolves."
    from selenium.webdriver.support.ui import WebDriverWait
    pages = _pages(site)
    assert "index.html" in pages, f"no index.html in {site}"
    shots = site.parent / f"{site.name}_screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    ids: dict[Path, set[str]] = {}
    problems, figures, graphs, t0 = [], 0, 0, time.perf_counter()
    browser.get_log("browser"), browser.get_log("performance")  # start clean
    for rel in pages:
        url = served + rel
        browser.get(url)
        try: WebDriverWait(browser, 20, poll_frequency=0.1).until(lambda d: not d.execute_script(_FIGURES)["undrawn"])
        except Exception: pass  # reported below with the figures' ids
        state = browser.execute_script(_FIGURES)
        figures += state["figures"]
        problems += [f"{rel}: plotly figure {i} not drawn" for i in state["undrawn"]]
        for g in state["graphs"]:
            graphs += 1
            if g["drawn"] != [g["want"]]:
                problems.append(f"{rel}: window graph {g['id']} draws {g['drawn']} points in its 'CAN IDs' trace(s), "
                                f"its window has {g['want']} CAN IDs")
        for e in browser.get_log("browser"):
            if e["level"] == "SEVERE": problems.append(f"{rel}: console error: {e['message']}")
        for e in browser.get_log("performance"):
            m = json.loads(e["message"])["message"]
            if m["method"] == "Network.requestWillBeSent":
                u = m["params"]["request"]["url"]
                if urlparse(u).scheme in ("http", "https", "ws", "wss", "ftp") and not u.startswith(served):
                    problems.append(f"{rel}: requested {u}")  # (chrome:// and data: are no network)
        for tag, href in browser.execute_script(_LINKS):
            if not href or href.startswith(("mailto:", "javascript:", "data:", "blob:", "tel:")): continue
            target = urlparse(urljoin(url, href))
            if not target.geturl().startswith(served):
                if tag != "a": problems.append(f"{rel}: <{tag}> loads {href} from outside the site")
                continue
            path = site / unquote(target.path[len(urlparse(served).path):])
            if target.path.endswith("/"): path = path / "index.html"
            if not path.is_file(): problems.append(f"{rel}: <{tag}> {href} -> {path.relative_to(site)} does not exist"); continue
            if target.fragment and path.suffix == ".html":
                if path not in ids:
                    p = _Ids(); p.feed(path.read_text(encoding="utf-8", errors="replace")); ids[path] = p.ids
                if unquote(target.fragment) not in ids[path]: problems.append(f"{rel}: {href}: no #{target.fragment} in {path.relative_to(site)}")
        browser.save_screenshot(str(shots / (rel.removesuffix(".html").replace("/", "__") + ".png")))
    seconds = time.perf_counter() - t0
    print(f"{len(pages)} pages, {figures} plotly figures, {graphs} window graphs in {seconds:.0f} s; screenshots in {shots}")
    assert not problems, f"{len(problems)} problem(s) on {len(pages)} pages:\n" + "\n".join(problems[:80])
    assert figures > 0, "no plotly figure on any page: the result pages draw none"
    assert graphs > 0, "no window graph (layout.meta.kind == 'window-graph') on any page: the explanations draw none"
