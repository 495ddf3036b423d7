"""The benchmark machinery: peak-memory tracking on CPU, timing quantiles, result files."""

from __future__ import annotations

import csv

import numpy as np
import torch
from cli_runs import run_cli

from tritoncorr.bench.core import BenchCase, SkipProvider, peak_memory_bytes, time_fn
from tritoncorr.bench.runner import append_csv, run_case


def test_peak_memory_counts_live_temporaries():
    def fn():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 4 MB, both alive
        del a
        c = b + 1  # 4 MB; a is freed, so at most 8 MB alive
        return c.sum()

    peak = peak_memory_bytes(fn, torch.device("cpu"))
    assert 8_000_000 <= peak < 8_100_000


def test_peak_memory_ignores_inplace_and_sees_inside_custom_ops():
    x = torch.ones(1000, 1000)

    def inplace():
        x.mul_(2)
        x[10:].add_(1)

    assert peak_memory_bytes(inplace, torch.device("cpu")) < 1000

    @torch.library.custom_op("tritoncorr_test::double_sum", mutates_args=())
    def double_sum(t: torch.Tensor) -> torch.Tensor:
        tmp = t * 2  # 4 MB temporary, invisible to anything that only sees op outputs
        return tmp.sum().reshape(1)

    peak = peak_memory_bytes(lambda: double_sum(x), torch.device("cpu"))
    assert 4_000_000 <= peak < 4_100_000


def test_time_fn_quantiles_are_ordered():
    p50, p20, p80 = time_fn(lambda: torch.randn(100, 100) @ torch.randn(100, 100), torch.device("cpu"), quick=True)
    assert 0 < p20 <= p50 <= p80


def test_run_case_and_csv(tmp_path):
    def skip():
        raise SkipProvider("needs CUDA")

    case = BenchCase(
        kernel="demo",
        shape="n=256",
        mode="fwd",
        flops=2 * 256**3,
        providers={"torch": lambda: lambda: torch.randn(256, 256) @ torch.randn(256, 256), "triton": skip},
    )
    results = run_case(case, torch.device("cpu"), quick=True)
    assert [r.provider for r in results] == ["torch", "triton"]
    assert results[0].p50_ms > 0 and results[0].tflops > 0 and results[0].peak_mb > 0
    assert results[1].note == "skipped: needs CUDA"
    path = tmp_path / "bench.csv"
    append_csv(path, results)
    append_csv(path, results)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 4 and {"device", "torch", "triton", "date", "p50_ms"} <= set(rows[0])


def test_eval_davis_bench_providers_give_crw_masks():
    """The end-to-end benchmark's providers on a tiny generated video: ours (float32) gives the masks
    of CRW's dense propagation over every repeated context slot (up to argmax flips of near-tied
    pixels: the two compute the same float32 scores in different summation orders, and soft
    feedback carries a flip on); bf16 features nearly so."""
    from tritoncorr.bench.eval_davis import _ours_factory, _slots_factory, cases

    dev = torch.device("cpu")
    t, h, w = 23, 64, 96  # 23 frames: frame 0 repeated early on, then a full 21-frame context
    ours = _ours_factory(dev, t, h, w, "fp32")()()
    crw = _slots_factory(dev, t, h, w, dense=True)()()
    slots = _slots_factory(dev, t, h, w, dense=False)()()
    bf16 = _ours_factory(dev, t, h, w, "bf16")()()
    assert len(ours) == len(crw) == t
    for i, (a, b) in enumerate(zip(ours, crw)):
        assert (a != b).sum() <= 3, f"frame {i}: {(a != b).sum()} of {a.size} pixels differ from CRW's propagation"
    assert np.mean([np.mean(a == b) for a, b in zip(ours, crw)]) > 0.9995
    assert np.mean([np.mean(a == b) for a, b in zip(slots, crw)]) > 0.9995
    agree = np.mean([np.mean(a == b) for a, b in zip(ours, bf16)])
    assert agree > 0.97, agree
    (case,) = cases(dev, quick=False)
    assert cases(dev, quick=True) == []  # end to end: not part of --quick
    assert case.kernel == "eval_davis" and set(case.providers) == {
        "tritoncorr",
        "tritoncorr-bf16",
        "repeated-slots",
        "crw",
    }


def test_quick_bench_writes_to_the_user_cache_and_prints_no_profiler_noise(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = run_cli("bench", "-k", "knn_propagate", "--quick", "--device", "cpu")
    out_csv = tmp_path / "cache" / "tritoncorr" / "bench" / "bench-quick.csv"
    assert out_csv.is_file() and "knn_propagate" in out_csv.read_text()
    assert list(work.iterdir()) == []  # nothing in the current folder
    captured = capfd.readouterr()
    assert "USDT" not in captured.out + captured.err + res.output
    run_cli("bench", "-k", "knn_propagate", "--quick", "--device", "cpu", "--out", tmp_path / "mine")
    assert (tmp_path / "mine" / "bench-quick.csv").is_file()


def test_quick_cases_are_training_shapes_fwd_bwd():
    """--quick keeps shapes of the full rows (tiny shapes measure call overheads and contradict them)."""
    from tritoncorr.bench import anchor_softmax, local_corr

    dev = torch.device("cpu")
    for mod in (local_corr, anchor_softmax):
        full = {(c.kernel, c.shape) for c in mod.cases(dev, quick=False)}
        quick = mod.cases(dev, quick=True)
        assert quick and all(c.mode == "fwd+bwd" for c in quick)
        assert {(c.kernel, c.shape) for c in quick} <= full
        assert all("compiled" not in c.providers for c in quick)
