"""``tritoncorr eval compare A B --html``: the self-contained report, checked in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_cli
from tritoncorr.evals.davis import DavisDataset, evaluate_results, write_palette_png
from tritoncorr.evals.synthetic import make_synthetic_davis

from tritoncorr.report import per_frame_j

ROOT = Path(__file__).resolve().parents[1]
N_SEQ = 6


def _predictions(root: Path, out: Path, seed: int, drop: float) -> Path:
    """Ground truth with a random fraction ``drop`` of each frame's object pixels set to background."""
    rng = np.random.default_rng(seed)
    ds = DavisDataset(root, "val", "480p", None, require_all_masks=True)
    for seq in ds:
        p = drop * rng.uniform(0.2, 1.0)
        for t, fid in enumerate(seq.mask_ids):
            m = seq.load_mask(t).copy()
            m[rng.random(m.shape) < (p if t else 0.0)] = 0
            write_palette_png(out / seq.name / f"{fid}.png", m)
    evaluate_results(root, out).write_csvs(out)
    (out / "provenance.json").write_text(
        json.dumps(
            {
                "eval": {
                    "benchmark": "davis",
                    "split": "val",
                    "resolution": "480p",
                    "root": str(root),
                    "input_size": None,
                    "precision": "fp32",
                    "propagation": {"topk": 10},
                }
            }
        )
    )
    return out


@pytest.fixture(scope="module")
def two_evals(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = make_synthetic_davis(tmp / "DAVIS", num_sequences=N_SEQ, num_frames=6, height=48, width=64, seed=4)
    return root, _predictions(root, tmp / "a", 1, 0.5), _predictions(root, tmp / "b", 2, 0.2), tmp


def test_report_is_self_contained(two_evals):
    root, a, b, tmp = two_evals
    html_path = tmp / "report.html"
    run_cli("eval", "compare", a, b, "--html", html_path, "--bootstrap", "500")
    text = html_path.read_text()
    assert text.count('<tr class="seq">') == N_SEQ
    # nothing fetched at view time: no script, no external reference; every image is a data: URI
    assert "<script" not in text and "http://" not in text and "https://" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "Largest wins and losses" in text and "Per-frame J" in text


def test_report_needs_the_frames(two_evals, tmp_path):
    root, a, b, tmp = two_evals
    a2, b2 = shutil.copytree(a, tmp_path / "a"), shutil.copytree(b, tmp_path / "b")
    for f in (a2, b2):
        (f / "provenance.json").unlink()
    r = run_cli("eval", "compare", a2, b2, "--html", tmp_path / "r.html", exit_code=2)
    assert "--root" in r.output
    run_cli("eval", "compare", a2, b2, "--html", tmp_path / "r.html", "--root", root)


def test_per_frame_j():
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[:, :2] = 1
    pred = gt.copy()
    pred[2] = 0
    assert per_frame_j(gt, pred).tolist() == [1.0, 0.0]  # frames 1 and 2 (first and last excluded)


def test_report_in_headless_chromium(two_evals):
    from tools.chromium_cdp import chromium_path, load_page

    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client (test extra) is not installed")
    root, a, b, tmp = two_evals
    html_path = tmp / "report-browser.html"
    run_cli("eval", "compare", a, b, "--html", html_path, "--bootstrap", "500")
    shot = tmp / "report.png"
    res = load_page(
        html_path.as_uri(),
        screenshot=shot,
        expressions={
            "rows": "document.querySelectorAll('#sequences tbody tr.seq').length",
            "images": "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length",
            "all_images": "document.images.length",
        },
    )
    assert res.errors == []
    assert res.values["rows"] == N_SEQ
    assert res.values["images"] == res.values["all_images"] >= 3  # every embedded image decoded
    assert all(u == html_path.as_uri() or u.startswith("data:") for u in res.requests), res.requests
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_browser_check_catches_errors(tmp_path):
    """The same check on a page with a console error and a missing image reports both (the check can fail)."""
    from tools.chromium_cdp import chromium_path, load_page

    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client (test extra) is not installed")
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    res = load_page(page.as_uri())
    assert any("boom" in e for e in res.errors) and any("missing.png" in e for e in res.errors)
