"""Colour spaces, clip augmentations and DUL's regularising-view transform.

Conventions: images are float tensors ``(..., 3, H, W)`` with RGB in [0, 1] unless stated; a clip is
``(T, 3, H, W)`` and a batch of clips ``(B, T, 3, S, S)``. Every random decision takes an explicit
``torch.Generator`` (CPU or on the clips' device), so results are reproducible from a seed.

Coordinates: "normalised" coordinates follow ``align_corners=False``: -1 and +1 are the outer edges
of the first and last pixel, so pixel ``u`` (0-based) has centre ``(2u + 1) / S - 1``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAB_MEAN = (50.0, 0.0, 0.0)
LAB_STD = (50.0, 127.0, 127.0)

# OpenCV's float RGB -> Lab (imgproc color_lab.cpp): sRGB companding, the sRGB/D65 matrix with the
# white point folded into its rows, CIE f(t) with threshold 0.008856 and slope 7.787.
_SRGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)


def _channel_view(values, x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = len(values)
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(shape)


def _check_channels(name: str, x: torch.Tensor, dim: int = -3) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3 or x.shape[dim] != 3:
        raise ValueError(f"{name} must have shape (..., 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (RGB in [0, 1]), got {x.dtype}")


def _standardize(name: str, x: torch.Tensor, mean, std) -> torch.Tensor:
    """``(x - mean) / std`` per channel (dim -3) after checking that ``x`` has 3 floating channels."""
    _check_channels(name, x)
    return (x - _channel_view(mean, x)) / _channel_view(std, x)


def _unstandardize(name: str, x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`_standardize`: ``x * std + mean`` per channel (dim -3)."""
    _check_channels(name, x)
    return x * _channel_view(std, x) + _channel_view(mean, x)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with the ImageNet statistics. ``x``: RGB in [0, 1], ``(..., 3, H, W)``."""
    return _standardize("x", x, IMAGENET_MEAN, IMAGENET_STD)


def imagenet_denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`imagenet_normalize`, ``(..., 3, H, W)``."""
    return _unstandardize("x", x, IMAGENET_MEAN, IMAGENET_STD)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab of sRGB images, matching OpenCV's float ``cv2.cvtColor(img, cv2.COLOR_RGB2Lab)``.

    ``rgb``: float ``(..., 3, H, W)`` in [0, 1]. Returns ``(..., 3, H, W)`` with L in [0, 100] and
    a, b roughly in [-127, 127] (OpenCV's float output: no offset, no rescaling). Computed in fp32
    (fp64 input stays fp64); the result has the input's dtype.
    """
    _check_channels("rgb", rgb)
    out_dtype = rgb.dtype
    x = rgb.to(torch.float64 if rgb.dtype == torch.float64 else torch.float32)
    return _linear_to_lab(_srgb_to_linear(x)).to(out_dtype)


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


@functools.lru_cache(maxsize=4)
def _srgb_lut(device: str) -> torch.Tensor:
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    return _srgb_to_linear(levels).to(torch.float32).to(device)


def rgb_uint8_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """:func:`rgb_to_lab` of ``rgb / 255`` for uint8 ``(..., 3, H, W)`` (float32 out), with the
    sRGB linearisation read from a 256-entry table (same formula; faster on CPU)."""
    if rgb.dtype != torch.uint8 or rgb.dim() < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb must be uint8 (..., 3, H, W), got {rgb.dtype} {tuple(rgb.shape)}")
    lin = _srgb_lut(str(rgb.device)).index_select(0, rgb.reshape(-1).long()).view(rgb.shape)
    return _linear_to_lab(lin)


def _linear_to_lab(lin: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(_SRGB_TO_XYZ, dtype=lin.dtype, device=lin.device)
    m = m / torch.tensor(_WHITE_D65, dtype=lin.dtype, device=lin.device).view(3, 1)
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin)
    thr = 0.008856
    f = torch.where(xyz > thr, xyz.clamp_min(thr) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=-3)
    y = xyz.select(-3, 1)
    L = torch.where(y > thr, 116.0 * fy - 16.0, 903.3 * y)
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack((L, a, b), dim=-3)


def lab_normalize(lab: torch.Tensor) -> torch.Tensor:
    """``((L - 50) / 50, a / 127, b / 127)`` (MAST/STT/LIIR). ``lab``: ``(..., 3, H, W)``."""
    return _standardize("lab", lab, LAB_MEAN, LAB_STD)


def lab_denormalize(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`lab_normalize`, ``(..., 3, H, W)``."""
    return _unstandardize("lab", lab, LAB_MEAN, LAB_STD)


def channel_dropout(lab: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """MAST/STT/LIIR channel-wise dropout of normalised Lab.

    Draws **one** chroma channel ``k`` in {1 (a), 2 (b)} with probability 1/2 each, for the whole
    batch (every clip and frame), sets it to 0 and multiplies all three channels by 1.5 (= 3/(3-1),
    L and the kept chroma channel included). ``lab``: ``(..., 3, H, W)`` normalised Lab (channel
    axis -3). Returns ``(input, k)``: a new tensor (``lab`` is not modified) and the index of the
    **dropped** channel, which is the reconstruction target (take it from the clean ``lab``).
    """
    _check_channels("lab", lab)
    k = 1 + int(
        torch.randint(
            0, 2, (1,), generator=generator, device=generator.device if generator is not None else "cpu"
        ).item()
    )
    out = lab * 1.5
    out.select(-3, k).zero_()
    return out, k


# ----------------------------------------------------------------------------------------------
# Clip augmentations (one clip (T, 3, H, W), same parameters for every frame)
# ----------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator).item())


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``lo .. hi`` inclusive."""
    if hi <= lo:
        return lo
    return int(torch.randint(lo, hi + 1, (), generator=generator).item())


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(..., C, H, W)`` to ``size = (h, w)``; antialiased when shrinking
    (like PIL's BILINEAR, which DUL uses).

    uint8 input stays uint8 and takes PyTorch's uint8 channels-last kernel, which follows PIL (within
    one grey level) and is about 10x faster on CPU than the float path (5 frames 854x480 -> 512x288:
    11 ms vs 112 ms on one core); float input gives float output.
    """
    lead = clip.shape[:-3]
    x = clip.reshape(-1, *clip.shape[-3:])
    if tuple(x.shape[-2:]) == tuple(size):
        return clip.clone()
    if x.dtype == torch.uint8:
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).contiguous()
    else:
        antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return y.reshape(*lead, *y.shape[-3:])


def resize_shorter_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    """Resize so the shorter side is ``short``; the long side is ``int(short * aspect)`` (DUL)."""
    h, w = clip.shape[-2:]
    if h <= w:
        size = (short, max(short, int(short * w / h)))
    else:
        size = (max(short, int(short * h / w)), short)
    return resize(clip, size)


def sample_short_side(short_side: tuple[int, int], generator: torch.Generator | None) -> int:
    """DUL's ``MaskScaleSmallest``: ``lo + int((hi - lo) * U[0, 1))``, i.e. uniform in ``lo .. hi-1``
    (exactly ``lo`` when ``lo == hi``)."""
    lo, hi = short_side
    return lo + int((hi - lo) * _uniform(generator))


def crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Crop ``(..., H, W)``; raises ``ValueError`` if the box leaves the image."""
    H, W = clip.shape[-2:]
    if top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(f"crop box top={top} left={left} {height}x{width} outside a {H}x{W} image")
    return clip[..., top : top + height, left : left + width]


def random_crop(clip: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random ``size x size`` crop, uniform top-left."""
    H, W = clip.shape[-2:]
    if H < size or W < size:
        raise ValueError(f"cannot crop {size}x{size} from a {H}x{W} image")
    top = _randint(0, H - size, generator)
    left = _randint(0, W - size, generator)
    return crop(clip, top, left, size, size)


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Centre ``size x size`` crop."""
    H, W = clip.shape[-2:]
    if H < size or W < size:
        raise ValueError(f"cannot crop {size}x{size} from a {H}x{W} image")
    return crop(clip, (H - size) // 2, (W - size) // 2, size, size)


def random_resized_crop_box(
    height: int,
    width: int,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
    generator: torch.Generator | None,
    tries: int = 20,
) -> tuple[int, int, int, int]:
    """STT's random resized crop box ``(top, left, h, w)`` in a ``height x width`` frame.

    Area fraction ``A ~ U(area_range)``, aspect ``ar`` (w/h) log-uniform in ``aspect_range``,
    ``w = round(sqrt(A * ar))``, ``h = round(sqrt(A / ar))`` (A in pixels); the first of ``tries``
    draws that fits wins, with a uniform offset; fallback: centred square of side ``min(H, W)``.
    """
    area = height * width
    lo, hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(tries):
        target = area * (area_range[0] + (area_range[1] - area_range[0]) * _uniform(generator))
        ar = math.exp(lo + (hi - lo) * _uniform(generator))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h, generator), _randint(0, width - w, generator), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def hflip(clip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of ``(..., W)``."""
    return clip.flip(-1)


def augment_clip(
    clip: torch.Tensor,
    *,
    crop_mode: str,
    crop_size: int,
    short_side: tuple[int, int],
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
    flip: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Spatial augmentation of one clip, the same parameters for all frames.

    ``clip``: uint8 or float ``(T, 3, H, W)``. Returns ``(T, 3, S, S)`` of the same dtype, ``S = crop_size``.
    ``crop_mode``: ``"random"``/``"center"`` (shorter side to ``U{short_side}``, then a random/centre
    crop), ``"resized"`` (random resized crop), ``"full"`` (whole frame resized to S x S). Then a
    whole-clip horizontal flip with probability 0.5 when ``flip``.
    """
    if clip.dim() != 4 or clip.shape[1] != 3:
        raise ValueError(f"clip must have shape (T, 3, H, W), got {tuple(clip.shape)}")
    S = crop_size
    if crop_mode in ("random", "center"):
        x = resize_shorter_side(clip, sample_short_side(short_side, generator))
        x = random_crop(x, S, generator) if crop_mode == "random" else center_crop(x, S)
    elif crop_mode == "resized":
        top, left, h, w = random_resized_crop_box(clip.shape[-2], clip.shape[-1], area_range, aspect_range, generator)
        x = resize(crop(clip, top, left, h, w), (S, S))
    elif crop_mode == "full":
        x = resize(clip, (S, S))
    else:
        raise ValueError(f"unknown crop mode {crop_mode!r} (random, center, resized, full)")
    if flip and _uniform(generator) < 0.5:
        x = hflip(x)
    return x.contiguous()


# ----------------------------------------------------------------------------------------------
# DUL's regularising view (dul.md §2.2)
# ----------------------------------------------------------------------------------------------


def view_affine(
    flip: torch.Tensor, side: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int
) -> torch.Tensor:
    """The affine ``A_b`` (B, 2, 3) of a flip + square crop, from its parameters (each ``(B,)``).

    ``flip``: -1 (flipped) or +1; ``side``: crop side in pixels; ``top``/``left``: crop corner in the
    flipped frame. ``A_b = [[f*s, 0, f*dx/(S/2)], [0, s, dy/(S/2)]]`` with ``s = side / S`` (the true
    crop factor) and ``dx = left + side/2 - S/2``, ``dy = top + side/2 - S/2`` (crop-centre offset).
    """
    f = flip.to(torch.float32)
    s = side.to(torch.float32) / size
    half = size / 2.0
    dx = left.to(torch.float32) + side.to(torch.float32) / 2 - half
    dy = top.to(torch.float32) + side.to(torch.float32) / 2 - half
    zero = torch.zeros_like(s)
    row0 = torch.stack((f * s, zero, f * dx / half), dim=-1)
    row1 = torch.stack((zero, s, dy / half), dim=-1)
    return torch.stack((row0, row1), dim=-2)


def random_view_transform(
    clips: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    scale_range: tuple[float, float] = (0.5, 1.0),
    flip_p: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DUL's regularising view: per clip one h-flip and one square zoom-in crop, resized back.

    ``clips``: float ``(B, T, 3, S, S)`` (any normalisation; the transform is linear). Per clip
    (same for its T frames): flip with probability ``flip_p`` (``f = -1``, else ``+1``), then
    ``s ~ U(scale_range)``, a square crop of side ``c = int(s * S)`` at a uniform integer corner
    (inside the flipped frame), resized back to S x S with bilinear interpolation.

    Returns ``(views (B, T, 3, S, S), affine (B, 2, 3))`` where
    ``affine = [[f*s', 0, f*dx/(S/2)], [0, s', dy/(S/2)]]`` maps normalised (align_corners=False)
    coordinates of the **new view** to those of the **original** clip, i.e.
    ``views = warp_to_view(clips, affine, mode="bilinear")``. Deviation from DUL's code: we use the
    true crop factor ``s' = c / S`` rather than the drawn ``s`` (the reference's truncation makes its
    matrix up to 0.5 px wrong); with it the mapping is exact. The view is computed with
    ``grid_sample(bilinear, padding_mode="border")`` on the whole clip. Away from its outermost
    ring of pixels this equals cropping and then resizing with ``F.interpolate(bilinear,
    align_corners=False)`` (zooming in only enlarges, so no anti-aliasing is involved; PIL's bilinear
    enlarge, as in DUL, is the same interpolation); on that ring (sample points up to half a crop
    pixel beyond the crop's last pixel centre) we interpolate with the real neighbouring content
    instead of replicating the crop's edge, which keeps the view exactly the affine image of the clip.
    """
    if clips.dim() != 5 or clips.shape[2] != 3 or clips.shape[-1] != clips.shape[-2]:
        raise ValueError(f"clips must have shape (B, T, 3, S, S), got {tuple(clips.shape)}")
    if not clips.is_floating_point():
        raise TypeError(f"clips must be floating, got {clips.dtype}")
    lo, hi = scale_range
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1 (zoom-in only), got {scale_range}")
    B, T, C, S, _ = clips.shape
    gdev = generator.device if generator is not None else torch.device("cpu")
    flip = torch.where(torch.rand(B, generator=generator, device=gdev) < flip_p, -1.0, 1.0)
    s = lo + (hi - lo) * torch.rand(B, generator=generator, device=gdev)
    side = torch.floor(s * S).clamp(1, S)
    top = torch.floor(torch.rand(B, generator=generator, device=gdev) * (S - side + 1)).clamp(max=S - side)
    left = torch.floor(torch.rand(B, generator=generator, device=gdev) * (S - side + 1)).clamp(max=S - side)
    affine = view_affine(flip, side, top, left, S).to(clips.device)
    x = clips.reshape(B, T * C, S, S)
    views = warp_to_view(x, affine, mode="bilinear", padding_mode="border")
    return views.reshape(B, T, C, S, S), affine


def warp_to_view(
    x: torch.Tensor,
    affine: torch.Tensor,
    mode: str = "nearest",
    padding_mode: str = "zeros",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resample maps given in the original view's frame into the new view's frame.

    ``x``: ``(B, C, h, w)`` (e.g. DUL's main-view logits at feature resolution); ``affine``:
    ``(B, 2, 3)`` from :func:`random_view_transform` (normalised coordinates are resolution-free,
    so the same matrix serves any ``h x w``). Returns ``(B, C, h, w)`` (or ``size``) in ``x``'s dtype
    (half-precision inputs are sampled in fp32):
    ``grid_sample(x, affine_grid(affine, size, align_corners=False), mode, align_corners=False)``.
    DUL warps logits with ``mode="nearest"``.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, h, w), got {tuple(x.shape)}")
    if affine.shape != (x.shape[0], 2, 3):
        raise ValueError(f"affine must have shape ({x.shape[0]}, 2, 3), got {tuple(affine.shape)}")
    out_hw = tuple(size) if size is not None else tuple(x.shape[-2:])
    # half-precision sampling grids are off by up to ~0.4% of the image (bf16): sample in fp32
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(
        affine.to(device=x.device, dtype=work.dtype), (x.shape[0], x.shape[1], *out_hw), align_corners=False
    )
    return F.grid_sample(work, grid, mode=mode, padding_mode=padding_mode, align_corners=False).to(x.dtype)


def affine_apply(affine: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Map normalised points ``xy`` ``(B, N, 2)`` (x, y) through ``affine`` ``(B, 2, 3)``."""
    return torch.einsum("bij,bnj->bni", affine[..., :2], xy) + affine[:, None, :, 2]


def to_normalised(pix: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates (centre of pixel ``u`` is ``u``) to align_corners=False normalised ones."""
    return (2 * pix + 1) / size - 1


def to_pixels(norm: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`to_normalised`."""
    return ((norm + 1) * size - 1) / 2


# ----------------------------------------------------------------------------------------------
# Lab -> RGB (STT's teacher sees ImageNet-normalised RGB of the same crop as the Lab student)
# ----------------------------------------------------------------------------------------------


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`: OpenCV-float Lab ``(..., 3, H, W)`` (L in [0, 100]) -> sRGB.

    Each step of the forward conversion is inverted exactly (CIE ``f^-1`` with the same threshold and
    slope, the inverse of the white-folded sRGB matrix, sRGB companding); out-of-gamut values are
    clamped to [0, 1]. Round trip ``lab_to_rgb(rgb_to_lab(x))`` is ``x`` to ~1e-5 in float32.
    Computed in fp32 (fp64 input stays fp64); returns the input's dtype.
    """
    _check_channels("lab", lab)
    out_dtype = lab.dtype
    x = lab.to(torch.float64 if lab.dtype == torch.float64 else torch.float32)
    L, a, b = x.unbind(dim=-3)
    thr = 0.008856
    y = torch.where(L > 903.3 * thr, ((L + 16.0) / 116.0).clamp_min(0) ** 3, L / 903.3)
    fy = torch.where(y > thr, y.clamp_min(thr) ** (1.0 / 3.0), 7.787 * y + 16.0 / 116.0)
    f_thr = thr ** (1.0 / 3.0)

    def f_inv(f: torch.Tensor) -> torch.Tensor:
        return torch.where(f > f_thr, f.clamp_min(0) ** 3, (f - 16.0 / 116.0) / 7.787)

    xyz = torch.stack((f_inv(fy + a / 500.0), y, f_inv(fy - b / 200.0)), dim=-3)
    m = torch.tensor(_SRGB_TO_XYZ, dtype=torch.float64)
    m = m / torch.tensor(_WHITE_D65, dtype=torch.float64).view(3, 1)
    m_inv = torch.linalg.inv(m).to(dtype=x.dtype, device=x.device)
    lin = torch.einsum("ij,...jhw->...ihw", m_inv, xyz).clamp(0.0, 1.0)
    rgb = torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055)
    return rgb.clamp(0.0, 1.0).to(out_dtype)
