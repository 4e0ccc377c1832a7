"""The HTML report: every section from a small synthetic results store, graceful gaps, and a real browser."""

from __future__ import annotations

import base64
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from rllc.report.html import write_report
from rllc.pipeline.store import ResultRow, ResultStore

from _browser import check_page, find_chromium
from tests.conftest import tiny_configs

pytest.importorskip("sklearn")  # the clustering section (the `test` extra installs it)

SECTIONS = ("Configuration and provenance", "Loss and full-model LLC, with stages", "Per-head rLLC curves",
            "Data-refined LLC per data set", "Head table", "Composition", "Hessian comparisons", "Clustering",
            "Diagnostics")


def _fill_store(run_dir: Path, seed: int) -> None:
    """Synthetic rows of every measure the report reads, at the run's checkpoint steps.

    Two families of heads per layer (rising early vs late), so that clustering has structure to find; one invalid
    and one unconverged LLC estimate for the diagnostics.
    """
    from rllc.train import load_run

    run = load_run(run_dir)
    steps = run.steps
    L, H = run.config.model.n_layers, run.config.model.n_heads
    rng = np.random.default_rng(seed)
    x = np.log1p(np.asarray(steps, dtype=float)) / math.log1p(steps[-1])  # (T,) in [0, 1]
    ok = {"diverged": [], "converged": True, "negative": False, "rhat": 1.01, "bias": 0.0, "bias_se": 0.1,
          "messages": []}
    rows: list[ResultRow] = []

    def llc(step_i: int, comp: str, data: str, value: float, **kw) -> None:
        rows.append(ResultRow(steps[step_i], comp, data, "llc", "llc000000001", value, 0.05 * abs(value) + 0.01,
                              kw.pop("valid", True), {"per_chain": [value] * 4, "diagnostics": {**ok, **kw}}))

    for i in range(len(steps)):
        llc(i, "all", "pretrain", 40 * x[i] - 90 * max(0.0, x[i] - 0.7) + rng.normal(0, 0.3))
        llc(i, "all", "code", 30 * x[i] + rng.normal(0, 0.3))
        for l in range(L):
            for h in range(H):
                early = h % 2 == 0
                shape = np.tanh(6 * x[i]) if early else x[i] ** 3
                for data, scale in (("pretrain", 5.0), ("code", 3.0 + l)):
                    llc(i, f"{l}:{h}", data, scale * shape + 0.5 * h + rng.normal(0, 0.05))
    rows[3] = ResultRow(*rows[3].key, rows[3].value, rows[3].std, False,
                        {"diagnostics": {**ok, "diverged": [2], "messages": ["chain 2 diverged at draw 17"]}})
    rows[5] = ResultRow(*rows[5].key, rows[5].value, rows[5].std, True,
                        {"diagnostics": {**ok, "converged": False, "rhat": 1.3, "bias": -0.8, "bias_se": 0.2,
                                         "messages": ["the loss trace still drifts over the last half"]}})
    last = steps[-1]
    labels = ("previous-token", "induction", "current-token", "n-gram")
    for i, s in enumerate(steps):
        for l in range(L):
            for h in range(H):
                c = f"{l}:{h}"
                for m in ("prev_token_score", "current_token_score", "induction_score", "prefix_matching_score",
                          "icl_score"):
                    rows.append(ResultRow(s, c, "prose", m, "heads0000001", float(rng.uniform(0, 1) * x[i])))
                for k in ("zero", "mean", "resample"):
                    rows.append(ResultRow(s, c, "prose", f"ablation_{k}", "heads0000001", float(rng.uniform(0, .2))))
                if s == last:
                    lab = labels[(l * H + h) % len(labels)]
                    rows.append(ResultRow(s, c, "prose", "head_type", "tic000000001", 0.6,
                                          extra={"label": lab, "family": lab, "evidence": f"{lab} score 0.60 >= 0.3"}))
        for mode in "qkv":
            rows.append(ResultRow(s, "random", "weights", f"{mode}_composition", "comp00000001", 0.05, 0.01))
            rows += [ResultRow(s, f"0:{a}->1:{b}", "weights", f"{mode}_composition", "comp00000001",
                               float(rng.uniform(0, 0.4))) for a in range(H) for b in range(H)]
        for comp in ("all", "0:0", "1:1"):
            rows.append(ResultRow(s, comp, "pretrain", "hessian_trace", "hess00000001", 100 * x[i] + 1, 2.0))
            rows.append(ResultRow(s, comp, "self", "fim_trace", "hess00000001", 80 * x[i] + 1, 2.0))
            rows.append(ResultRow(s, comp, "pretrain", "hessian_rank", "hess00000001", 50 * x[i] + 3))
    store = ResultStore(run_dir)
    store.put_config("llc000000001", {"sampler": {"epsilon": 1e-3, "nbeta": 30, "gamma": 200, "chains": 4,
                                                  "draws": 200, "batch_size": 32}, "n_samples": 2048})
    store.put_many(rows)


@pytest.fixture(scope="module")
def report_runs(tiny_text, tmp_path_factory) -> list[Path]:
    """Two 4-head runs (a trained one and a copy standing in for a second seed) with synthetic results."""
    from rllc.train import train_model

    root = tmp_path_factory.mktemp("report")
    a = root / "seed0"
    train_model(*tiny_configs(tiny_text, n_heads=4, steps=30, checkpoints="every:5"), a, progress=False)
    b = root / "seed1"
    shutil.copytree(a, b)
    _fill_store(a, 0)
    _fill_store(b, 1)
    return [a, b]


@pytest.fixture(scope="module")
def report(report_runs) -> Path:
    """The report of both runs (written once: figures are most of the cost)."""
    return write_report(report_runs, report_runs[0].parent / "report.html")


def _images(page: str) -> list[bytes]:
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs]


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


def test_report_has_every_section_for_every_run(report):
    page = report.read_text()
    toc = page.split("</nav>")[0]
    assert ">Run seed0</h2>" in page and ">Run seed1</h2>" in page and ">Comparison across runs</h2>" in page
    for i in (0, 1):
        for title in SECTIONS:
            assert f">{title}</h3>" in page, title
        for sid in ("config", "loss", "heads", "drllc", "table", "composition", "hessian", "clustering",
                    "diagnostics"):
            assert f'href="#r{i}-{sid}"' in toc and f'<section id="r{i}-{sid}">' in page, (i, sid)
    assert "could not be drawn" not in page, re.findall(r"could not be drawn \([^)]*\)", page)
    imgs = _images(page)
    # per run: loss+LLC, wrLLC by cluster, by type, full drLLC, wdrLLC on code, composition, Hessian,
    # 2 layers x (metrics, split tree); then the cross-run overlay
    assert len(imgs) == 2 * 11 + 1
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000 for png in imgs)
    # the stage table found the synthetic LLC peak; the head table has labels and evidence
    loss = _section(page, "r0-loss")
    assert "Developmental stages" in loss and ">S2<" in loss and ">falling<" in loss
    assert "<th>llc_change</th>" in loss and "<th>rises</th>" in loss and "<th>falls</th>" in loss  # LM1–LM5
    assert "induction score 0.60" in _section(page, "r0-table") and "previous-token" in page
    diag = _section(page, "r0-diagnostics")
    assert "chain 2 diverged at draw 17" in diag and "not converged" in diag and "R-hat 1.30" in diag
    assert re.search(r"2 of \d+ LLC estimates are flagged \(1 invalid\)", diag)
    # the unconverged row's short-chain bias, in its issues and its own column
    assert "likely low by 0.8" in diag and "+0.8 ± 0.2" in diag
    assert "Cluster transfer" in _section(page, "cross") and "ARI" in page
    # nothing that could reach the network
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_report_says_what_to_run_when_measures_are_missing(tiny_run, tmp_path):
    run = tmp_path / "bare"
    shutil.copytree(tiny_run.path, run)
    ResultStore(run).put_many([ResultRow(s, "all", "pretrain", "llc", "h", 1.0 + s / 10) for s in (0, 10, 20)])
    page = write_report(run).read_text()  # default path: RUN_DIR/report.html
    assert (run / "report.html").exists()
    assert "could not be drawn" not in page
    for title in SECTIONS:  # one run: its sections are the top level
        assert f">{title}</h2>" in page, title
    for cmd in (f"rllc heads {run}", f"rllc hessian {run}", f"rllc sweep {run} --data code"):
        assert cmd in page, cmd
    assert len(_images(page)) == 1  # loss and LLC
    assert "All 3 LLC estimates are valid and converged" in page
    shutil.rmtree(run / "checkpoints")  # no checkpoints, no store: still a report, saying why
    (run / "results.sqlite").unlink()
    page = write_report(run, tmp_path / "empty.html").read_text()
    assert "could not be drawn" not in page and f"rllc sweep {run}" in page


def test_report_renders_in_headless_chromium(report):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y --no-install-recommends chromium)")
    shot = report.with_name("report_screenshot.png")
    got = check_page(report, shot, chromium=chromium)
    assert got.title.startswith("rllc report")
    assert len(got.images) == 2 * 11 + 1
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in got.images), got.images
    assert got.console == []
    assert got.external_requests == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")
