"""The run report opens in a real browser: plots render, no JS errors, no network.

Headless Chromium (Debian's ``chromium``; ``make test`` installs it) loads the report
from a ``file://`` URL with every host name unresolvable. A test copy of the page
carries a small probe that records ``window.onerror``, ``console.error``, unhandled
rejections and every resource the page fetched, and writes them into the DOM, which
``--dump-dom`` returns. A screenshot goes to ``test-artifacts/`` for a human look.
"""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from roadinterp.store import RunStore
from roadinterp.viz.report import run_figures, write_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
]
PROBE = """<script>
(function () {
  var errs = [];
  window.addEventListener('error', function (e) { errs.push('error: ' + (e.message || e.type) + ' @' + (e.filename || (e.target && (e.target.src || e.target.href)) || '')); }, true);
  window.addEventListener('unhandledrejection', function (e) { errs.push('rejection: ' + e.reason); });
  var ce = console.error; console.error = function () { errs.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); return ce.apply(console, arguments); };
  window.addEventListener('load', function () {
    setTimeout(function () {
      var res = performance.getEntriesByType('resource').map(function (r) { return r.name; });
      var pre = document.createElement('pre'); pre.id = '__probe';
      pre.textContent = JSON.stringify({errors: errs, resources: res,
        svgs: document.querySelectorAll('svg.main-svg').length,
        plots: document.querySelectorAll('.js-plotly-plot').length});
      document.body.appendChild(pre);
    }, 1500);
  });
})();
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("headless chromium is required for the report browser tests but was not found; "
                    "install it with `bash scripts/ensure_chromium.sh` (apt-get install chromium) or `make test`",
                    pytrace=False)
    return exe


def run_chromium(args, user_data: Path, timeout=45) -> subprocess.CompletedProcess:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={user_data}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def make_run(path: Path, *, cells: bool = True) -> Path:
    cfg = {"task": "hierarchical-equality", "model": "zoo:<script>alert(1)</script>", "layers": [0, 1, 2],
           "components": ["block_output"], "positions": ["last", 0], "families": ["road", "butterfly"],
           "sizes": [2, 4], "seeds": 2, "controls": True}
    store = RunStore(path, cfg)
    rng = np.random.default_rng(0)
    if cells:
        for fam in ("road", "butterfly"):
            for layer in (0, 1, 2):
                for pos in ("last", 0):
                    for size in (2, 4):
                        for seed in range(2 if fam == "road" else 1):  # partial: butterfly has one seed
                            store.add(f"{fam}/{layer}/{pos}/{size}/{seed}", {
                                "task": "hierarchical-equality", "model": "m", "family": fam, "layer": layer,
                                "component": "block_output", "position": pos, "size": size, "seed": seed,
                                "iia": float(rng.uniform(0.4, 1.0)), "train_iia": float(rng.uniform(0.5, 1.0)),
                                "iia_random_model": float(rng.uniform(0, 0.3)), "iia_rival": float(rng.uniform(0, 0.5)),
                                "rival": "identity", "seconds": 1.0,
                            })
    store.close()
    return path


class _Refs(HTMLParser):
    """Every URL-bearing attribute of real tags, plus the text of <style> blocks and style attributes."""

    URL_ATTRS = frozenset({"src", "href", "srcset", "poster", "data", "action", "formaction", "background"})

    def __init__(self):
        super().__init__()
        self.refs, self.styles, self._in_style = [], [], False

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in self.URL_ATTRS and v is not None:
                self.refs.append((tag, k, v))
            if k == "style" and v:
                self.styles.append(v)
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


REMOTE = re.compile(r"^\s*(https?:|ftp:|wss?:)?//", re.IGNORECASE)


def assert_no_static_network_refs(text: str) -> None:
    p = _Refs()
    p.feed(text)
    remote = [(t, k, v) for t, k, v in p.refs if REMOTE.match(v)]
    assert not remote, f"tags that would fetch from the network: {remote}"
    # script src / link href / img src of any kind would be a second file: the page must be one file
    external = [(t, k, v) for t, k, v in p.refs if t in ("script", "link", "img", "iframe") and not v.startswith("data:")]
    assert not external, f"page is not self-contained: {external}"
    css = "\n".join(p.styles)
    assert "@import" not in css, "a <style> block @imports another stylesheet"
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", css, re.IGNORECASE), "CSS url() points at the network"
    # anywhere in the file (also inside the inlined plotly.js): no CSS url() or @import to a remote host
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", text, re.IGNORECASE)
    assert not re.search(r"@import\s+(url\()?\s*['\"]?\s*(https?:)?//", text, re.IGNORECASE)
    assert "cdn.plot.ly/plotly" not in re.sub(r"<script[^>]*>.*?</script>", "", text, flags=re.DOTALL)


def page_errors(stderr: str) -> list[str]:
    bad = re.compile(r"ERROR:CONSOLE|Uncaught|net::ERR_|Failed to load resource", re.IGNORECASE)
    return [line for line in stderr.splitlines() if bad.search(line)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("browser") / "partial-run")
    out = write_report(run, run / "report.html")
    return out


# The "Learned angles" section of a real run: every plot renders, and the numbers the browser holds
# are the parameters saved in the run directory. The probe reads each plot's data back from the
# page (plotly keeps them on the graph div) and hides everything but the section for the screenshot.
LEARNED_PROBE = """<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var out = {};
    document.querySelectorAll('div.figure').forEach(function (f) {
      var gd = f.querySelector('.js-plotly-plot');
      if (!gd || !gd._fullData) { return; }
      out[f.getAttribute('title')] = {
        rendered: gd.querySelectorAll('svg.main-svg').length,
        traces: gd._fullData.map(function (t) {  // decoded arrays (the page ships them base64-encoded)
          var arr = function (v) { return v ? Array.from(v, function (r) { return (r && r.length !== undefined && typeof r !== 'string') ? Array.from(r) : r; }) : null; };
          return {type: t.type, name: t.name, xaxis: t.xaxis || 'x', x: arr(t.x), y: arr(t.y), z: arr(t.z)};
        })};
    });
    var pre = document.createElement('pre'); pre.id = '__learned'; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 1500);
});
</script>"""
ONLY_SECTION = """<script>
window.addEventListener('load', function () {
  var inside = false;
  Array.from(document.body.children).forEach(function (el) {
    if (el.tagName === 'H2') { inside = el.textContent === 'Learned angles'; }
    if (!inside) { el.style.display = 'none'; }
  });
});
</script>"""


@pytest.fixture(scope="module")
def learned_report(tmp_path_factory):
    from learned_run import small_learned_run

    run = small_learned_run(tmp_path_factory.mktemp("learned") / "run", layers=(0, 1), n_train=1024, epochs=2)
    return run, write_report(run, run / "report.html")


def _dump(page: Path, user_data: Path, marker: str) -> str:
    import html as _html

    proc = run_chromium(["--dump-dom", "--virtual-time-budget=15000", page.as_uri()], user_data, timeout=90)
    m = re.search(rf'<pre id="{marker}">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert m, f"probe {marker} never ran (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    assert page_errors(proc.stderr) == [], page_errors(proc.stderr)
    return _html.unescape(m.group(1))


def test_learned_angles_section_renders_the_saved_parameters(learned_report, tmp_path):
    from roadinterp import io
    from roadinterp.store import read_run
    from roadinterp.viz.report import learned_figures

    run, report_path = learned_report
    text = report_path.read_text(encoding="utf-8")
    assert_no_static_network_refs(text)
    page = tmp_path / "probe.html"
    page.write_text(text.replace("<head>", "<head>" + PROBE + LEARNED_PROBE, 1), encoding="utf-8")
    probe = json.loads(_dump(page, tmp_path / "ud5", "__probe"))
    assert probe["errors"] == [], probe["errors"]
    assert [r for r in probe["resources"] if not r.startswith(("data:", "blob:"))] == [], probe["resources"]
    figs = json.loads(_dump(page, tmp_path / "ud6", "__learned"))
    table = read_run(run)[1]
    expected = [name for _, _, name, fig in learned_figures(run, table) if fig is not None]
    assert expected and all(name in figs for name in expected), (expected, list(figs))
    assert all(figs[name]["rendered"] >= 1 for name in expected)
    assert probe["plots"] == text.count("Plotly.newPlot")  # every plot on the page rendered a div
    # the angles the browser plots are the thetas saved for each seed (trained, then random-init control)
    angles = next(figs[n] for n in expected if n.startswith("angles-butterfly"))
    cell = next(n for n in expected if n.startswith("angles-butterfly"))[len("angles-"):].split("-")
    layer = cell[1]
    assert len(angles["traces"]) == 2 * 3
    for tr in angles["traces"]:
        control = "-random_model" if tr["xaxis"] == "x2" else ""
        saved = io.load(run / "cells" / f"butterfly-L{layer}-block_output-last-s2-{tr['name'].replace(' ', '')}{control}")
        np.testing.assert_allclose(tr["x"], saved.theta.detach().numpy().reshape(-1), rtol=1e-5)
    # the subspace matrices are the pairwise principal-angle agreement of the saved subspaces
    from roadinterp.subspace import pairwise_agreement

    for name in (n for n in expected if n.startswith("subspaces-")):
        fam, layer = name.split("-")[1:3]
        z = figs[name]["traces"][0]["z"]
        bases = [io.load(run / "subspaces" / f"{fam}-L{layer}-block_output-last-s2-seed{s}") for s in range(3)]
        np.testing.assert_allclose(z, pairwise_agreement([b.bases() for b in bases]), atol=1e-6)
    # the row-space split plots the stored dormant shares and the IIA of the subspace and its row-space part
    split = [n for n in expected if n.startswith("rowspace-")]
    assert len(split) == 2  # the best cell of each family (the MLP's next layer reads block_output)
    for name in split:
        fam, layer = name.split("-")[1:3]
        rows = table[(table["family"] == fam) & (table["layer"] == int(layer))].sort_values("seed")
        y = {tr["name"]: tr["y"] for tr in figs[name]["traces"]}
        np.testing.assert_allclose(y["null space (dormant)"], rows["dormant_fraction"], atol=1e-9)
        np.testing.assert_allclose(y["row space (read downstream)"], 1 - rows["dormant_fraction"], atol=1e-9)
        np.testing.assert_allclose(y["IIA, whole subspace"], rows["iia_joint"], atol=1e-9)
        np.testing.assert_allclose(y["IIA, row-space part only"], rows["iia_rowspace"], atol=1e-9)


def test_learned_angles_screenshot(learned_report, tmp_path):
    _, report_path = learned_report
    page = tmp_path / "section.html"
    page.write_text(report_path.read_text(encoding="utf-8").replace("<head>", "<head>" + ONLY_SECTION, 1),
                    encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-learned-angles.png"
    shot.unlink(missing_ok=True)
    proc = run_chromium([f"--screenshot={shot}", "--window-size=1200,2300", "--virtual-time-budget=15000",
                         page.as_uri()], tmp_path / "ud7", timeout=90)
    assert shot.exists() and shot.stat().st_size > 20_000, f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    assert page_errors(proc.stderr) == []


def test_report_renders_without_errors_or_network(report, tmp_path):
    text = report.read_text(encoding="utf-8")
    assert_no_static_network_refs(text)
    assert "<script>alert(1)</script>" not in text  # config values are escaped

    probe_page = tmp_path / "probe.html"
    probe_page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    proc = run_chromium(["--dump-dom", "--virtual-time-budget=10000", probe_page.as_uri()], tmp_path / "ud1")
    dom = proc.stdout
    assert "</html>" in dom, f"chromium did not dump the DOM (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    m = re.search(r'<pre id="__probe">(.*?)</pre>', dom, re.DOTALL)
    assert m, "the probe never ran (page load did not finish?)"
    import html as _html

    probe = json.loads(_html.unescape(m.group(1)))
    n_figures = len(run_figures(__import__("roadinterp.store", fromlist=["read_run"]).read_run(report.parent)[1]))
    assert probe["errors"] == [], probe["errors"]
    assert probe["plots"] == n_figures
    assert dom.count('class="main-svg"') >= n_figures and probe["svgs"] >= n_figures
    assert [r for r in probe["resources"] if not r.startswith(("data:", "blob:"))] == [], probe["resources"]
    assert page_errors(proc.stderr) == [], page_errors(proc.stderr)
    # rendered text the reader needs
    assert "Best alignment:" in dom and "control: random-init model" in dom


def test_report_screenshot(report, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = run_chromium([f"--screenshot={shot}", "--window-size=1200,2000", "--virtual-time-budget=10000",
                         report.as_uri()], tmp_path / "ud2")
    assert shot.exists() and shot.stat().st_size > 20_000, f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    assert page_errors(proc.stderr) == []
    shutil.copy(report, ARTIFACTS / "report.html")


def test_empty_run_report_in_browser(tmp_path):
    run = make_run(tmp_path / "empty-run", cells=False)
    out = write_report(run, run / "report.html")
    text = out.read_text(encoding="utf-8")
    assert_no_static_network_refs(text)
    proc = run_chromium(["--dump-dom", out.as_uri()], tmp_path / "ud3")
    assert "no finished cells yet" in proc.stdout.lower()
    assert page_errors(proc.stderr) == []


def test_adapter_report_in_browser(tmp_path):
    import torch

    from roadinterp.adapters.adapter import RoadAdapter
    from roadinterp.viz.adapter_report import write_adapter_report

    adapters = {}
    for name, blocks in (("task-a", [0, 1, 2]), ("task-b", [5, 6])):
        a = RoadAdapter({"0:block_output:last": 16, "model.layers.1.mlp.up_proj": 16}, group_size=8, blocks=blocks)
        for r in a.rotations.values():  # ModuleDict of RoadRotation
            torch.nn.init.uniform_(r.theta, -1, 1)
        adapters[name] = a
    out = write_adapter_report(adapters, tmp_path / "adapters.html", owners={"task-a": [0, 1, 2], "task-b": [5, 6]})
    text = out.read_text(encoding="utf-8")
    assert_no_static_network_refs(text)
    n_figures = text.count("Plotly.newPlot")
    assert n_figures == 1 + 4 * len(adapters)
    page = tmp_path / "probe.html"
    page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    proc = run_chromium(["--dump-dom", "--virtual-time-budget=10000", page.as_uri()], tmp_path / "ud4")
    import html as _html

    probe = json.loads(_html.unescape(re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.DOTALL).group(1)))
    assert probe["errors"] == [] and probe["plots"] == n_figures and probe["svgs"] >= n_figures
    assert [r for r in probe["resources"] if not r.startswith(("data:", "blob:"))] == []
    assert page_errors(proc.stderr) == []
