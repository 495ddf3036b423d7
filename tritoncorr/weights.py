"""Weights by name: the registry of published checkpoints, download, cache, verification, conversion.

A checkpoint is given everywhere (``--checkpoint`` of ``propagate`` and every ``eval``,
:meth:`tritoncorr.VideoPredictor.from_pretrained`) as one string, resolved by
:func:`resolve_checkpoint`:

* a local file or run folder (as before);
* a registered name (:data:`REGISTRY`, ``tritoncorr weights list``): the authors' file, downloaded
  from where they publish it, converted once with :mod:`tritoncorr.models.convert`;
* ``https://...`` (or ``http://``): any published checkpoint file (format detected by ``convert``);
* ``hf://OWNER/REPO/PATH/IN/REPO`` (optionally ``hf://OWNER/REPO@REVISION/PATH``): a file of a
  Hugging Face Hub model repository, fetched with ``huggingface_hub`` (its own cache), then converted.

Cache. ``$TRITONCORR_CACHE`` (default ``~/.cache/tritoncorr``) holds ``weights/<key>/``:

* ``<file>``: the file as downloaded (kept, so that ``tritoncorr weights verify`` can re-check it);
* ``<file>.part``: an interrupted download; the next attempt resumes it with an HTTP ``Range``
  request (a server that ignores ``Range`` makes it start over);
* ``source.json``: URL, size, SHA-256 recorded at the first complete download (or pinned by the
  registry), and the SHA-256 of the converted file;
* ``model.safetensors``: the converted weights (tritoncorr metadata: method, colour, preset).

A download is written to ``.part`` and renamed only after its hash checks out, so a cache entry is
either complete and verified or absent; a hash that differs from the pinned / recorded one is refused
and the bad file deleted. Every later use re-hashes the converted file against ``source.json``.

Offline (``TRITONCORR_OFFLINE=1``, or no network): a :class:`WeightsError` that names the file, the URL
to fetch it from by hand and the path to place it at.

The embedded default (:data:`DEFAULT_NAME`) ships inside the package (no download): a ResNet-18 STT
model trained here on CPU, on clips whose licences allow redistributing a derived model.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_NAME",
    "REGISTRY",
    "PublishedWeights",
    "WeightsError",
    "cache_root",
    "download_file",
    "export_inference_weights",
    "fetch",
    "is_path_like",
    "resolve_checkpoint",
    "verify",
]

CHUNK = 1 << 20


class WeightsError(ValueError):
    """A checkpoint name / URL that cannot be resolved, a failed or corrupted download."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint.

    Attributes:
        name: the registry key (what ``--checkpoint NAME`` takes).
        url: where the authors publish the file (their README's link).
        filename: the name the file gets in the cache.
        format: :mod:`tritoncorr.models.convert` format (``crw``, ``dul``, ``stt``, ``mast``, ``liir``,
            ``tritoncorr`` for a file already in our layout).
        variant: the format's variant (STT ``d8`` / ``d4``), "" for none.
        method: what it is (the paper / repository), for the listing.
        davis_jf: DAVIS-2017 val J&F-Mean (%) as the authors report it for this file.
        reported_in: where that number is published.
        licence: the licence of the repository that publishes the file ("not stated" when none).
        sha256: pinned SHA-256 when known ("" = unknown: recorded at the first download).
        published_md5_head, published_md5_tail: the beginning and end of an MD5 the authors print truncated (DUL's README).
        package_file: a file inside the ``tritoncorr`` package (the embedded default; no download).
        note: one line for the listing.
        measured: what this project measured with it (the embedded default: davis-dev vs random init).
    """

    name: str
    url: str
    filename: str
    format: str
    method: str
    davis_jf: float | None
    reported_in: str
    licence: str
    variant: str = ""
    sha256: str = ""
    published_md5_head: str = ""
    published_md5_tail: str = ""
    package_file: str = ""
    note: str = ""
    measured: str = ""

    def download_url(self) -> str:
        """The URL a program can fetch: the published one, or for a Google Drive file page
        (``drive.google.com/file/d/ID/view``) its direct download form with the file ID."""
        m = re.match(r"https://drive\.google\.com/file/d/([\w-]+)", self.url)
        if m:
            return f"https://drive.google.com/uc?export=download&confirm=t&id={m.group(1)}"
        return self.url


_DUL = "https://download.visinf.tu-darmstadt.de/data/2021-neurips-araslanov-vos/snapshots/"
_DUL_README = "github.com/visinf/dense-ulearn-vos README (Training)"
_STT_README = "github.com/qianduoduolr/Spa-then-Temp README (Model Zoo)"
_LIIR = "https://github.com/shasha521/LIIR_pytorch/releases/download/v1.0/"
_LIIR_README = "github.com/shasha521/LIIR_pytorch README (Results and Models)"
_D4_NOTE = "stride 4: STT evaluates DAVIS with a radius-35 window, the kernels take radius <= 32 (--radius 32)"

#: The embedded default checkpoint (shipped in the package).
DEFAULT_NAME = "tritoncorr-stt-r18-cpu"


def _entries() -> list[PublishedWeights]:
    return [
        PublishedWeights(
            DEFAULT_NAME,
            "",
            "stt-r18-cpu.safetensors",
            "tritoncorr",
            "STT (ResNet-18 stride 8), trained here on CPU",
            None,
            "README (davis-dev, 10 sequences)",
            "Apache-2.0",
            package_file="assets/stt-r18-cpu.safetensors",
            note="embedded default; trained on 13 Apache-2.0 / MIT / BSD-3 clips",
            measured=(
                "davis-dev (10 sequences, eval davis --preset common --precision bf16): J&F 0.688 vs 0.614 "
                "for random init, +0.074, 95% interval [+0.033, +0.118], 9 wins / 1 loss: better than "
                "random init (README, 'The embedded default checkpoint')"
            ),
        ),
        PublishedWeights(
            "crw",
            "https://github.com/ajabri/videowalk/raw/master/pretrained.pth",
            "crw-pretrained.pth",
            "crw",
            "CRW (Jabri et al. 2020), Kinetics",
            67.6,
            "github.com/ajabri/videowalk README (pretrained.pth)",
            "MIT",
        ),
        PublishedWeights(
            "dul-ytvos",
            _DUL + "ytvos_e060_res4.pth",
            "ytvos_e060_res4.pth",
            "dul",
            "DUL (Araslanov et al. 2021), YouTube-VOS",
            69.3,
            _DUL_README,
            "Apache-2.0",
            published_md5_head="c3ae3",
            published_md5_tail="55faf",
        ),
        PublishedWeights(
            "dul-oxuva",
            _DUL + "oxuva_e430_res4.pth",
            "oxuva_e430_res4.pth",
            "dul",
            "DUL, OxUvA",
            65.3,
            _DUL_README,
            "Apache-2.0",
            published_md5_head="af541",
            published_md5_tail="d09b3",
        ),
        PublishedWeights(
            "dul-trackingnet",
            _DUL + "trackingnet_e088_res4.pth",
            "trackingnet_e088_res4.pth",
            "dul",
            "DUL, TrackingNet",
            69.4,
            _DUL_README,
            "Apache-2.0",
            published_md5_head="3e7e9",
            published_md5_tail="95fa9",
        ),
        PublishedWeights(
            "dul-kinetics",
            _DUL + "kinetics_e026_res4.pth",
            "kinetics_e026_res4.pth",
            "dul",
            "DUL, Kinetics-400",
            68.7,
            _DUL_README,
            "Apache-2.0",
            published_md5_head="086db",
            published_md5_tail="a7d98",
        ),
        PublishedWeights(
            "stt-r18-temporal-d8",
            "https://drive.google.com/file/d/1roBP0p0n8mIt0HvBsk6Wkszc6vuVUbxE/view",
            "stt-r18-temporal-d8.pth",
            "stt",
            "STT (Li & Liu 2023), ResNet-18 temporal only, stride 8",
            69.2,
            _STT_README,
            "MIT",
            variant="d8",
        ),
        PublishedWeights(
            "stt-r18-d8",
            "https://drive.google.com/file/d/1kksNGOklpPmlai6ljAIu1-dAcxSgMgml/view",
            "stt-r18-d8.pth",
            "stt",
            "STT, ResNet-18, stride 8",
            70.7,
            _STT_README,
            "MIT",
            variant="d8",
        ),
        PublishedWeights(
            "stt-r50-d8",
            "https://drive.google.com/file/d/190ND_w4yJC7njdWtmw5bJ-tl5VL8PSJ7/view",
            "stt-r50-d8.pth",
            "stt",
            "STT, ResNet-50, stride 8",
            71.2,
            _STT_README,
            "MIT",
            variant="d8",
        ),
        PublishedWeights(
            "stt-r18-d4",
            "https://drive.google.com/file/d/1ZJHyWMOpWhfmX6vMX5Qkm_2qkqS0grNM/view",
            "stt-r18-d4.pth",
            "stt",
            "STT, ResNet-18, stride 4",
            73.5,
            _STT_README,
            "MIT",
            variant="d4",
            note=_D4_NOTE,
        ),
        PublishedWeights(
            "stt-r50-d4",
            "https://drive.google.com/file/d/1HZYXhfaCDG9IeKX8ESBGHBn-kUrHC8Q8/view",
            "stt-r50-d4.pth",
            "stt",
            "STT, ResNet-50, stride 4",
            74.1,
            _STT_README,
            "MIT",
            variant="d4",
            note=_D4_NOTE,
        ),
        PublishedWeights(
            "mast",
            "https://drive.google.com/file/d/1vjiBdom75QzwCF5jnMRsxz897XyotVO8/view",
            "mast.pt",
            "mast",
            "MAST (Lai et al. 2020)",
            65.5,
            "MAST paper (as cited in LIIR's Table 2); github.com/zlai0/MAST README link",
            "not stated",
        ),
        PublishedWeights(
            "liir-ape",
            _LIIR + "APE_669.pt",
            "APE_669.pt",
            "liir",
            "LIIR reproduction (LIIR_pytorch), APE",
            66.9,
            _LIIR_README,
            "not stated",
        ),
        PublishedWeights(
            "liir-ape-compact",
            _LIIR + "APE_compact_690.pt",
            "APE_compact_690.pt",
            "liir",
            "LIIR reproduction, APE + compact prior",
            69.0,
            _LIIR_README,
            "not stated",
        ),
        PublishedWeights(
            "liir-ape-intervideo",
            _LIIR + "APE_intervideo_699.pt",
            "APE_intervideo_699.pt",
            "liir",
            "LIIR reproduction, APE + inter-video",
            69.9,
            _LIIR_README,
            "not stated",
        ),
        PublishedWeights(
            "liir-ape-compact-intervideo",
            _LIIR + "APE_compact_intervideo_722.pt",
            "APE_compact_intervideo_722.pt",
            "liir",
            "LIIR reproduction, APE + inter-video + compact prior",
            72.2,
            _LIIR_README,
            "not stated",
        ),
    ]


#: Published checkpoints by name.
REGISTRY: dict[str, PublishedWeights] = {w.name: w for w in _entries()}


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$TRITONCORR_CACHE`` or ``~/.cache/tritoncorr``."""
    env = os.environ.get("TRITONCORR_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/tritoncorr").expanduser()


def _offline() -> bool:
    return os.environ.get("TRITONCORR_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _entry_dir(key: str) -> Path:
    return cache_root() / "weights" / key


def _url_key(url: str) -> str:
    base = re.sub(r"[^\w.-]", "_", Path(urllib.parse.urlparse(url).path).name or "file")[:60]
    return f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def file_sha256(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (read in 1 MiB blocks); ``algorithm`` any :func:`hashlib.new` name."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_record(d: Path) -> dict:
    p = d / "source.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_record(d: Path, record: dict) -> None:
    tmp = d / "source.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(d / "source.json")


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def _progress(total: int | None, done: int, label: str):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    task = bar.add_task("download", total=total, completed=done)
    return bar, task


def download_file(
    url: str, dst: Path, *, sha256: str = "", timeout: float = 60.0, progress: bool = True, place_hint: str = ""
) -> str:
    """Download ``url`` to ``dst`` atomically, resuming ``dst.part`` when present; returns the SHA-256.

    Raises:
        WeightsError: network failure (with ``place_hint``: where to put a hand-downloaded copy), an
            HTML page instead of a file (Google Drive's confirmation page), or a hash mismatch with
            ``sha256`` (the partial file is deleted so that the next attempt starts clean).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    hint = place_hint or f"download {url} by hand and place it at {dst}"
    if _offline():
        raise WeightsError(f"offline (TRITONCORR_OFFLINE=1): {dst.name} is not in the cache; {hint}")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "tritoncorr"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file already holds everything the server has
            resp = None
        else:
            raise WeightsError(f"cannot download {url}: HTTP {err.code} {err.reason}; {hint}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(f"cannot download {url} ({reason}); {hint}") from err
    if resp is not None:
        with resp:
            if "text/html" in (resp.headers.get("Content-Type") or ""):
                raise WeightsError(
                    f"{url} returned a web page, not the checkpoint (Google Drive asks a browser to "
                    f"confirm large files); {hint}"
                )
            if have and resp.status != 206:
                have = 0  # the server ignored Range: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            mode = "ab" if have else "wb"
            bar, task = _progress(total, have, dst.name) if progress else (None, None)
            try:
                if bar is not None:
                    bar.start()
                with open(part, mode) as f:
                    while True:
                        try:
                            block = resp.read(CHUNK)
                        except (OSError, urllib.error.URLError) as err:
                            raise WeightsError(
                                f"download of {url} interrupted after {part.stat().st_size} bytes "
                                f"({err}); run the same command again to resume"
                            ) from err
                        if not block:
                            break
                        f.write(block)
                        if bar is not None:
                            bar.advance(task, len(block))
            finally:
                if bar is not None:
                    bar.stop()
            got = part.stat().st_size
            if total is not None and got < total:
                raise WeightsError(
                    f"download of {url} interrupted after {got} of {total} bytes; run the same command again to resume"
                )
    digest = file_sha256(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise WeightsError(
            f"{dst.name} from {url}: SHA-256 {digest} does not match the expected {sha256}; the file "
            "was deleted (corrupted transfer or a changed file on the server)"
        )
    part.replace(dst)
    return digest


# ----------------------------------------------------------------------------------------------
# Resolve
# ----------------------------------------------------------------------------------------------


def _package_path(entry: PublishedWeights) -> Path:
    return Path(__file__).parent / entry.package_file


def _converted(d: Path, record: dict) -> Path | None:
    """``d/model.safetensors`` when it exists and still has the SHA-256 recorded at conversion."""
    out = d / "model.safetensors"
    if out.is_file() and record.get("converted_sha256") and file_sha256(out) == record["converted_sha256"]:
        return out
    return None


def _convert(d: Path, raw: Path, fmt: str, variant: str, record: dict) -> Path:
    """Convert ``raw`` (already verified) to ``d/model.safetensors`` and record its SHA-256."""
    from tritoncorr.methods.inference import read_metadata
    from tritoncorr.models.convert import ConvertError, convert_checkpoint

    out = d / "model.safetensors"
    out.unlink(missing_ok=True)
    if raw.suffix == ".safetensors" and "tritoncorr.method_config" in read_metadata(raw):
        import shutil

        tmp = d / "model.safetensors.tmp"
        shutil.copyfile(raw, tmp)
        tmp.replace(out)
    else:
        try:
            convert_checkpoint(raw, out, "auto" if fmt in ("", "tritoncorr") else fmt, variant or None)
        except ConvertError as err:
            raise WeightsError(f"{raw}: {err}") from err
    record["converted_sha256"] = file_sha256(out)
    _write_record(d, record)
    return out


def _check_raw(raw: Path, record: dict, entry: PublishedWeights | None) -> None:
    """Verify a cached download against the pinned / recorded hashes."""
    digest = file_sha256(raw)
    want = (entry.sha256 if entry is not None and entry.sha256 else "") or record.get("sha256", "")
    if want and digest != want:
        raise WeightsError(
            f"{raw}: SHA-256 {digest} differs from the recorded {want} (the cached file changed); "
            f"delete {raw.parent} and download again"
        )
    if entry is not None and (entry.published_md5_head or entry.published_md5_tail):
        md5 = file_sha256(raw, "md5")
        if not (md5.startswith(entry.published_md5_head) and md5.endswith(entry.published_md5_tail)):
            raise WeightsError(
                f"{raw}: MD5 {md5} does not match the {entry.published_md5_head}...{entry.published_md5_tail} the "
                f"authors publish ({entry.reported_in}); delete {raw.parent} and download again"
            )


def _fetch_url(
    key: str, url: str, filename: str, fmt: str, variant: str, entry: PublishedWeights | None, progress: bool
) -> Path:
    d = _entry_dir(key)
    d.mkdir(parents=True, exist_ok=True)
    raw = d / filename
    record = _read_record(d)
    if not raw.is_file():
        hint = f"download {entry.url if entry else url} by hand and place it at {raw}"
        digest = download_file(url, raw, sha256=entry.sha256 if entry else "", progress=progress, place_hint=hint)
        record = {
            "url": url,
            "file": filename,
            "size": raw.stat().st_size,
            "sha256": digest,
            "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        try:
            _check_raw(raw, record, entry)
        except WeightsError:
            raw.unlink()
            raise
        _write_record(d, record)
    elif not record.get("sha256"):  # placed by hand: record it now
        record = {
            "url": url,
            "file": filename,
            "size": raw.stat().st_size,
            "sha256": file_sha256(raw),
            "placed_by_hand": True,
        }
        _check_raw(raw, record, entry)
        _write_record(d, record)
    done = _converted(d, record)
    if done is not None:
        return done
    _check_raw(raw, record, entry)  # a missing or damaged conversion is redone from the verified download
    return _convert(d, raw, fmt, variant, record)


def _fetch_hf(spec: str, progress: bool) -> Path:
    m = re.match(r"^hf://([^/@]+)/([^/@]+)(?:@([^/]+))?/(.+)$", spec)
    if not m:
        raise WeightsError(f"{spec!r}: expected hf://OWNER/REPO/PATH (or hf://OWNER/REPO@REVISION/PATH)")
    repo, revision, path = f"{m.group(1)}/{m.group(2)}", m.group(3), m.group(4)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - datasets depends on huggingface_hub
        raise WeightsError("hf:// checkpoints need huggingface_hub (pip install huggingface_hub)") from err
    try:
        local = Path(hf_hub_download(repo, path, revision=revision, local_files_only=_offline()))
    except Exception as err:  # huggingface_hub raises many types (offline, 404, gated, network)
        raise WeightsError(
            f"cannot fetch {path} from the Hugging Face repository {repo}: {type(err).__name__}: {err}"
        ) from err
    key = "hf-" + re.sub(r"[^\w.-]", "_", f"{repo}--{revision or 'main'}--{path}")[:120]
    d = _entry_dir(key)
    d.mkdir(parents=True, exist_ok=True)
    record = _read_record(d)
    digest = file_sha256(local)
    if record.get("sha256") and record["sha256"] != digest:  # a new revision: convert again
        record = {}
        (d / "model.safetensors").unlink(missing_ok=True)
    record.update({"url": spec, "file": str(local), "size": local.stat().st_size, "sha256": digest})
    _write_record(d, record)
    return _converted(d, record) or _convert(d, local, "auto", "", record)


def fetch(name: str, *, progress: bool = True) -> Path:
    """The converted ``.safetensors`` of a registered checkpoint (downloaded and converted once)."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise WeightsError(_unknown_message(name))
    if entry.package_file:
        path = _package_path(entry)
        if not path.is_file():
            raise WeightsError(
                f"the embedded checkpoint {path} is missing from this installation (reinstall tritoncorr)"
            )
        return path
    return _fetch_url(name, entry.download_url(), entry.filename, entry.format, entry.variant, entry, progress)


def _unknown_message(spec: str) -> str:
    close = difflib.get_close_matches(spec, list(REGISTRY), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"checkpoint {spec!r} is not a file or folder, nor a registered name{hint} "
        "(tritoncorr weights list), an https:// URL or hf://OWNER/REPO/PATH"
    )


def is_path_like(spec: str) -> bool:
    """Whether a checkpoint spec is meant as a path (a directory part or a file suffix), not a name."""
    return "/" in spec or os.sep in spec or bool(Path(spec).suffix)


def resolve_checkpoint(spec: str | Path | None, *, progress: bool = True) -> Path | None:
    """A checkpoint given as a path, a registered name, an ``https://`` URL or ``hf://...`` -> a local path
    (``None`` stays ``None``).

    Raises:
        WeightsError: unknown name, failed download, hash mismatch, unconvertible file.
        FileNotFoundError: a path-like spec (with a directory part or a file suffix) that does not exist.
    """
    if spec is None:
        return None
    s = str(spec)
    if s.startswith(("https://", "http://")):
        return _fetch_url(
            _url_key(s), s, Path(urllib.parse.urlparse(s).path).name or "checkpoint.pth", "auto", "", None, progress
        )
    if s.startswith("hf://"):
        return _fetch_hf(s, progress)
    path = Path(s).expanduser()
    if path.exists():
        return path
    if s in REGISTRY:
        return fetch(s, progress=progress)
    if is_path_like(s):
        raise FileNotFoundError(
            f"checkpoint {s} does not exist (a .safetensors / .pth file or a run folder; "
            "or a registered name: tritoncorr weights list)"
        )
    raise WeightsError(_unknown_message(s))


def verify(name: str) -> list[tuple[str, str, str]]:
    """Re-hash a cached registered checkpoint: rows ``(file, sha256, status)``; raises on a mismatch."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise WeightsError(_unknown_message(name))
    if entry.package_file:
        path = _package_path(entry)
        return [(str(path), file_sha256(path), "embedded")]
    d = _entry_dir(name)
    raw, record = d / entry.filename, _read_record(d)
    if not raw.is_file():
        raise WeightsError(f"{name} is not in the cache ({raw}); tritoncorr weights download {name}")
    _check_raw(raw, record, entry)
    rows = [(str(raw), record.get("sha256", ""), "ok" + (" (pinned)" if entry.sha256 else " (recorded)"))]
    conv = d / "model.safetensors"
    if conv.is_file():
        digest = file_sha256(conv)
        if digest != record.get("converted_sha256"):
            raise WeightsError(
                f"{conv}: SHA-256 {digest} differs from the recorded {record.get('converted_sha256')}; "
                f"delete it (it is converted again from the verified download)"
            )
        rows.append((str(conv), digest, "ok (converted)"))
    return rows


def cached(name: str) -> bool:
    """Whether a registered checkpoint is usable without a download."""
    entry = REGISTRY[name]
    if entry.package_file:
        return _package_path(entry).is_file()
    return (_entry_dir(name) / entry.filename).is_file()


# ----------------------------------------------------------------------------------------------
# Export a training run's inference weights (how the embedded default was made)
# ----------------------------------------------------------------------------------------------


def export_inference_weights(src: str | Path, dst: str | Path, *, half: bool = True) -> dict:
    """Write the compact inference form of a tritoncorr STT training checkpoint: only the backbone
    layers its features read (stem, layer1-3 at stride 8), as a :class:`~tritoncorr.models.convert.ConvertedModel`
    (format ``stt`` d8, Lab input, preset ``stt``), in float16 when ``half``. Returns the metadata.

    Raises:
        WeightsError: not an STT checkpoint.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from tritoncorr.engine.checkpoint import resolve_weights_path
    from tritoncorr.methods.inference import method_metadata, read_metadata
    from tritoncorr.models.convert import default_config

    src = resolve_weights_path(Path(src))
    meta = read_metadata(src)
    if meta.get("tritoncorr.method") != "stt":
        raise WeightsError(
            f"{src}: export_inference_weights takes an STT training checkpoint, got method "
            f"{meta.get('tritoncorr.method', 'none')!r}"
        )
    cfg = json.loads(meta.get("tritoncorr.method_config", "{}"))
    conv = dataclasses.replace(
        default_config("stt", "d8"), depth=int(cfg.get("depth", 18)), padding_mode=str(cfg.get("padding_mode", "zeros"))
    )
    model = conv.build()
    sd = load_file(str(src))
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    if missing:
        raise WeightsError(f"{src} lacks {len(missing)} backbone weights (e.g. {missing[:3]})")
    model.load_state_dict({k: sd[k] for k in want}, strict=True)
    out_meta = method_metadata(model)
    out_meta["tritoncorr.source"] = Path(src).name
    dtype = torch.float16 if half else torch.float32
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(tensors, str(tmp), metadata=out_meta)
    tmp.replace(dst)
    return out_meta
