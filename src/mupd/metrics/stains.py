"""Virtual-staining agreement: marker intensity of generated vs real stains, and biomarker AUC.

IHC marker intensity is the DAB optical density of ``skimage.color.rgb2hed``; multiplex IF is read
per channel (the image's own channel values). Agreement is Pearson's r between generated and real
intensities: per patch (pixel maps, then averaged), across patches (mean intensity per patch), and
across slides (mean per slide). ``biomarker_auc`` asks how well each stain's mean intensity
predicts a biomarker status (sklearn's ROC AUC), for the real and the generated stain.
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from .bootstrap import DEFAULT_RESAMPLES, bootstrap_ci, run_single_threaded


def _to_hwc(images) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim == 4 and a.shape[1] in (1, 3, 4, 16) and a.shape[-1] not in (1, 3, 4, 16):
        a = a.transpose(0, 2, 3, 1)  # (N,C,H,W) -> (N,H,W,C)
    require(a.ndim == 4, f"stain images must be (N,H,W,C) or (N,C,H,W), got shape {np.asarray(images).shape}")
    require(np.isfinite(a).all(), "stain images contain NaN/inf")
    return a


def marker_maps(images, channel: str | int = "dab") -> np.ndarray:
    """(N,H,W) marker intensity: ``"dab"`` (IHC, RGB uint8) or a channel index (mIF)."""
    a = _to_hwc(images)
    if channel == "dab":
        from skimage.color import rgb2hed

        require(a.shape[-1] == 3, f"DAB needs RGB images, got {a.shape[-1]} channels; pass channel=INDEX for mIF")
        return np.stack([rgb2hed(x)[..., 2] for x in a])
    require(isinstance(channel, int) and 0 <= channel < a.shape[-1], f"channel {channel!r} not in 0..{a.shape[-1] - 1}")
    return a[..., channel].astype(np.float64)


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    require(x.shape == y.shape, f"Pearson: shapes differ ({x.shape} vs {y.shape})")
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc**2).sum() * (yc**2).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


@run_single_threaded
def marker_correlation(generated, real, *, channel: str | int = "dab", slides=None,
                       n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Pearson r of marker intensity, generated vs real (paired by index)."""
    g, r = marker_maps(generated, channel), marker_maps(real, channel)
    require(g.shape == r.shape, f"generated {g.shape} and real {r.shape} stains must pair one to one at the same size")
    pixel = np.array([pearson(a, b) for a, b in zip(g, r)])
    g_mean, r_mean = g.reshape(len(g), -1).mean(1), r.reshape(len(r), -1).mean(1)
    out = {
        "channel": channel,
        "pixel_pearson_mean": float(np.nanmean(pixel)) if np.isfinite(pixel).any() else float("nan"),
        "n_patches": int(len(g)),
    }
    if len(g) > 2:
        pairs = np.stack([g_mean, r_mean], 1)
        out["patch_pearson"] = bootstrap_ci(lambda p: pearson(p[:, 0], p[:, 1]), pairs, n_resamples=n_resamples, seed=seed,
                                            recentre=False).to_dict()
    if slides is not None:
        slides = np.asarray(slides)
        require(len(slides) == len(g), f"slides has {len(slides)} entries for {len(g)} patches")
        ids = np.unique(slides)
        gs = np.array([g_mean[slides == s].mean() for s in ids])
        rs = np.array([r_mean[slides == s].mean() for s in ids])
        out["slide_pearson"] = pearson(gs, rs) if len(ids) > 2 else float("nan")
        out["n_slides"] = int(len(ids))
    return out


@run_single_threaded
def biomarker_auc(status, real_stain, generated_stain, *, channel: str | int = "dab",
                  n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """ROC AUC of predicting a binary biomarker status from mean marker intensity, real vs generated."""
    from sklearn.metrics import roc_auc_score

    status = np.asarray(status).astype(int)
    require(set(np.unique(status)) == {0, 1}, "biomarker status must contain both classes 0 and 1")
    out = {}
    for name, images in (("real", real_stain), ("generated", generated_stain)):
        score = marker_maps(images, channel).reshape(len(status), -1).mean(1)
        data = np.stack([status, score], 1)
        auc = lambda d: roc_auc_score(d[:, 0], d[:, 1]) if len(np.unique(d[:, 0])) == 2 else np.nan  # noqa: E731
        out[name] = bootstrap_ci(auc, data, n_resamples=n_resamples, seed=seed, recentre=False).to_dict()
    return out
