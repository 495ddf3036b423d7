"""Weights by name (tritoncorr.weights): download, resume, hash checks, convert-once cache, offline errors.

Every transfer goes through a loopback HTTP server on 127.0.0.1 that serves generated checkpoints in
the official layouts (builders of tests/test_convert.py); nothing touches the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from cli_runs import run_cli
from test_convert import crw_modify, prefixed, randomize, tv_resnet

from tritoncorr import weights
from tritoncorr.methods.inference import load_feature_model


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path] = bytes`` with Range support; ``server.cut[path] = n`` sends only the
    first n bytes of a full (non-Range) response and closes; ``server.html`` paths answer a web page."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path in srv.html:
            body = b"<html>confirm</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = 0
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = srv.cut.pop(self.path, None)
        if cut is not None and start == 0:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut, srv.html, srv.requests, srv.ranges = {}, {}, set(), [], True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TRITONCORR_CACHE", str(root))
    monkeypatch.delenv("TRITONCORR_OFFLINE", raising=False)
    return root


def _crw_bytes(tmp_path: Path, seed: int = 0) -> tuple[bytes, torch.nn.Module]:
    enc = randomize(crw_modify(tv_resnet(18), padding="reflect"), seed=seed)
    sd = prefixed({k: v for k, v in enc.state_dict().items() if not k.startswith("fc.")}, "encoder.model.")
    path = tmp_path / f"crw-{seed}.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    return path.read_bytes(), enc


def _register(monkeypatch, server, name="crw-test", data=b"", **kw) -> weights.PublishedWeights:
    server.files[f"/{name}.pth"] = data
    entry = weights.PublishedWeights(
        name, f"{server.url}/{name}.pth", f"{name}.pth", "crw", "test", None, "test", "MIT", **kw
    )
    monkeypatch.setitem(weights.REGISTRY, name, entry)
    return entry


def test_download_convert_once_and_load(tmp_path, server, cache, monkeypatch):
    data, enc = _crw_bytes(tmp_path)
    _register(monkeypatch, server, data=data)
    path = weights.resolve_checkpoint("crw-test", progress=False)
    assert path == cache / "weights" / "crw-test" / "model.safetensors"
    record = weights._read_record(path.parent)
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert (path.parent / "crw-test.pth").read_bytes() == data
    fm = load_feature_model("crw-test")
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fm.features(x), enc.forward_to(x, "layer3"), rtol=1e-4, atol=1e-5)
    # second use: no request, no conversion (the converted file's mtime is unchanged)
    n, mtime = len(server.requests), path.stat().st_mtime_ns
    assert weights.resolve_checkpoint("crw-test", progress=False) == path
    assert len(server.requests) == n and path.stat().st_mtime_ns == mtime
    assert [r[2] for r in weights.verify("crw-test")] == ["ok (recorded)", "ok (converted)"]


def test_resume_after_a_cut_transfer(tmp_path, server, cache, monkeypatch):
    data, _ = _crw_bytes(tmp_path)
    _register(monkeypatch, server, data=data)
    server.cut["/crw-test.pth"] = len(data) // 3
    with pytest.raises(weights.WeightsError, match="interrupted .* run the same command again to resume"):
        weights.resolve_checkpoint("crw-test", progress=False)
    part = cache / "weights" / "crw-test" / "crw-test.pth.part"
    assert part.stat().st_size == len(data) // 3
    assert not (cache / "weights" / "crw-test" / "crw-test.pth").exists()  # nothing half-written in place
    path = weights.resolve_checkpoint("crw-test", progress=False)
    assert server.requests[-1] == ("/crw-test.pth", f"bytes={len(data) // 3}-")
    assert (path.parent / "crw-test.pth").read_bytes() == data and not part.exists()


def test_server_without_range_support_restarts(tmp_path, server, cache, monkeypatch):
    data, _ = _crw_bytes(tmp_path)
    _register(monkeypatch, server, data=data)
    server.ranges = False
    d = cache / "weights" / "crw-test"
    d.mkdir(parents=True)
    (d / "crw-test.pth.part").write_bytes(b"garbage that is not the start of the file")
    weights.resolve_checkpoint("crw-test", progress=False)
    assert (d / "crw-test.pth").read_bytes() == data


def test_pinned_hash_mismatch_is_refused_and_the_file_deleted(tmp_path, server, cache, monkeypatch):
    data, _ = _crw_bytes(tmp_path)
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    _register(monkeypatch, server, data=bytes(corrupted), sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(weights.WeightsError, match="SHA-256 .* does not match the expected .* deleted"):
        weights.resolve_checkpoint("crw-test", progress=False)
    d = cache / "weights" / "crw-test"
    assert not (d / "crw-test.pth").exists() and not (d / "crw-test.pth.part").exists()
    server.files["/crw-test.pth"] = data  # the server is fixed: the next attempt succeeds
    assert weights.resolve_checkpoint("crw-test", progress=False).is_file()


def test_published_md5_is_checked(tmp_path, server, cache, monkeypatch):
    data, _ = _crw_bytes(tmp_path)
    md5 = hashlib.new("md5", data).hexdigest()
    _register(monkeypatch, server, name="good", data=data, published_md5_head=md5[:5], published_md5_tail=md5[-5:])
    assert weights.resolve_checkpoint("good", progress=False).is_file()
    _register(monkeypatch, server, name="bad", data=data, published_md5_head="00000", published_md5_tail=md5[-5:])
    with pytest.raises(weights.WeightsError, match="MD5 .* does not match the 00000"):
        weights.resolve_checkpoint("bad", progress=False)
    assert not (cache / "weights" / "bad" / "bad.pth").exists()


def test_cached_file_changed_later_is_detected(tmp_path, server, cache, monkeypatch):
    data, _ = _crw_bytes(tmp_path)
    _register(monkeypatch, server, data=data)
    path = weights.resolve_checkpoint("crw-test", progress=False)
    raw = path.parent / "crw-test.pth"
    raw.write_bytes(raw.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(weights.WeightsError, match="differs from the recorded"):
        weights.verify("crw-test")
    # a damaged converted file is rebuilt from the (verified) download; here the download is damaged too
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(weights.WeightsError, match="differs from the recorded"):
        weights.resolve_checkpoint("crw-test", progress=False)


def test_offline_error_names_the_file_and_where_to_place_it(tmp_path, server, cache, monkeypatch):
    data, _ = _crw_bytes(tmp_path)
    entry = _register(monkeypatch, server, data=data)
    monkeypatch.setenv("TRITONCORR_OFFLINE", "1")
    place = cache / "weights" / "crw-test" / "crw-test.pth"
    with pytest.raises(weights.WeightsError) as err:
        weights.resolve_checkpoint("crw-test", progress=False)
    assert entry.url in str(err.value) and str(place) in str(err.value)
    assert not server.requests
    # placing the file there by hand makes it work offline (hash recorded on first use)
    place.write_bytes(data)
    assert weights.resolve_checkpoint("crw-test", progress=False).is_file()
    assert weights._read_record(place.parent)["placed_by_hand"] is True


def test_unreachable_server_error(tmp_path, cache, monkeypatch):
    entry = weights.PublishedWeights("gone", "http://127.0.0.1:9/x.pth", "x.pth", "crw", "t", None, "t", "MIT")
    monkeypatch.setitem(weights.REGISTRY, "gone", entry)
    with pytest.raises(weights.WeightsError, match=r"cannot download http://127.0.0.1:9/x.pth .*place it at .*x.pth"):
        weights.resolve_checkpoint("gone", progress=False)


def test_web_page_instead_of_a_file(server, cache, monkeypatch):
    server.html.add("/page.pth")
    entry = weights.PublishedWeights("page", f"{server.url}/page.pth", "page.pth", "crw", "t", None, "t", "MIT")
    monkeypatch.setitem(weights.REGISTRY, "page", entry)
    with pytest.raises(weights.WeightsError, match="returned a web page"):
        weights.resolve_checkpoint("page", progress=False)


def test_plain_url_and_cli_checkpoint(tmp_path, server, cache):
    data, _ = _crw_bytes(tmp_path, seed=3)
    server.files["/some/dir/released.pth"] = data
    url = f"{server.url}/some/dir/released.pth"
    path = weights.resolve_checkpoint(url, progress=False)
    assert path.name == "model.safetensors" and "released.pth" in path.parent.name
    res = run_cli("weights", "download", url)
    assert str(path.parent.name) in res.output.replace("\n", "")


def test_unknown_names_and_missing_paths():
    with pytest.raises(weights.WeightsError, match="did you mean dul-ytvos"):
        weights.resolve_checkpoint("dul-ytvo")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.resolve_checkpoint("runs/nothing/model.safetensors")
    res = run_cli("eval", "davis", "--checkpoint", "no-such-model", "--sequence", "x", exit_code=2)
    assert "not a file or folder, nor a registered name" in res.output


def test_hf_spec_offline_error(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TRITONCORR_OFFLINE", "1")
    with pytest.raises(
        weights.WeightsError, match="cannot fetch model.pth from the Hugging Face repository owner/repo"
    ):
        weights.resolve_checkpoint("hf://owner/repo/model.pth")
    with pytest.raises(weights.WeightsError, match="expected hf://OWNER/REPO/PATH"):
        weights.resolve_checkpoint("hf://just-a-name")


def test_registry_entries_are_complete():
    for w in weights.REGISTRY.values():
        assert w.licence and w.reported_in and w.method
        assert w.package_file or w.url.startswith("https://")
        assert w.format in ("crw", "dul", "stt", "mast", "liir", "tritoncorr")
    assert len([n for n in weights.REGISTRY if n.startswith("dul-")]) == 4
    assert {"stt-r18-d8", "stt-r50-d8", "stt-r18-d4", "stt-r50-d4", "crw", "mast"} <= set(weights.REGISTRY)
    assert weights.REGISTRY["stt-r18-d8"].download_url().startswith("https://drive.google.com/uc?export=download")
    res = run_cli("weights", "list")
    assert "dul-kinetics" in res.output


def test_registry_entry_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.REGISTRY["crw"].url = "x"  # type: ignore[misc]


@pytest.mark.parametrize("half", [False, True])
def test_export_inference_weights_keeps_the_features(tmp_path, half):
    # an STT training checkpoint -> the compact stride-8 layer3 file the package ships (fp16 when half)
    from safetensors.torch import save_file

    from tritoncorr.methods.inference import method_metadata
    from tritoncorr.methods.stt import STTConfig

    torch.manual_seed(0)
    model = STTConfig(depth=18, radii=(4, 2), use_teacher=False, teacher_weights="", student_init="scratch").build()
    randomize(model.backbone, seed=5)
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src), metadata=method_metadata(model))
    dst = tmp_path / "small.safetensors"
    meta = weights.export_inference_weights(src, dst, half=half)
    assert meta["tritoncorr.method"] == "stt" and meta["tritoncorr.preset"] == "stt"
    fm = load_feature_model(dst)
    assert (fm.method, fm.color, fm.preset) == ("stt", "lab", "stt")
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.eval().features(x)
        got = fm.features(x)
    assert got.shape == want.shape == (1, 256, 6, 8)
    if half:  # fp16 weights: features within fp16 rounding of the original
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
        assert dst.stat().st_size < 6e6
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    from safetensors.torch import load_file

    assert not any(k.startswith("backbone.layer4") for k in load_file(str(dst)))
    with pytest.raises(weights.WeightsError, match="takes an STT training checkpoint"):
        weights.export_inference_weights(_non_stt(tmp_path), tmp_path / "o.safetensors")


def _non_stt(tmp_path: Path) -> Path:
    from tritoncorr.models import dul_backbone
    from tritoncorr.models.loading import save_backbone_weights

    return save_backbone_weights(dul_backbone(), tmp_path / "plain.safetensors")


def test_training_weight_options_take_names(tmp_path, server, cache, monkeypatch):
    """``init_from`` / ``method.teacher_weights`` resolve like ``--checkpoint`` (file, run folder, published
    name, URL); a published name gives the converted feature backbone, which an STT teacher (it needs
    layer4 for res5) refuses with a message naming the option and what is missing."""
    from safetensors.torch import save_file

    from tritoncorr.engine.checkpoint import resolve_weights_option
    from tritoncorr.engine.config import ConfigError
    from tritoncorr.methods.stt import STTConfig

    data, _ = _crw_bytes(tmp_path, seed=5)
    _register(monkeypatch, server, data=data)
    assert resolve_weights_option("crw-test", "init_from") == cache / "weights" / "crw-test" / "model.safetensors"
    # an STT teacher from a run folder holding a full ResNet-18
    full = STTConfig(depth=18, teacher_weights="random", student_init="scratch").build().teacher
    torch.manual_seed(7)
    for p in full.parameters():
        p.data.normal_()
    (tmp_path / "run").mkdir()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "run" / "model.safetensors"))
    model = STTConfig(depth=18, teacher_weights=str(tmp_path / "run"), student_init="teacher").build()
    for name in ("conv1.weight", "layer4.1.bn2.weight"):
        torch.testing.assert_close(model.teacher.state_dict()[name], full.state_dict()[name], rtol=0, atol=0)
        torch.testing.assert_close(model.backbone.state_dict()[name], full.state_dict()[name], rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"^method.teacher_weights='crw-test' does not fit .* missing 30: layer4"):
        STTConfig(depth=18, teacher_weights="crw-test", student_init="teacher").build()
    with pytest.raises(ConfigError, match=r"^init_from: checkpoint 'crw-tset' is not .* did you mean crw-test"):
        resolve_weights_option("crw-tset", "init_from")
    with pytest.raises(ConfigError, match=r"^method.teacher_weights: checkpoint .*absent.safetensors does not exist"):
        resolve_weights_option(str(tmp_path / "absent.safetensors"), "method.teacher_weights")
