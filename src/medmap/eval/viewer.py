"""Interactive 3D CAM viewer for the HTML report, built on NiiVue.

NiiVue (the WebGL viewer imaging tools embed) comes from the ``ipyniivue`` package, which ships
it as an anywidget front-end module (``ipyniivue/static/widget.js``). The report inlines that
module as a classic script and hosts it with ``viewer_host.js``, a small implementation of the
anywidget model interface over JSON embedded in the page: no CDN, no kernel, the report opens
offline as one file. Volumes are the preprocessed crops the model saw, as gzipped uint8 NIfTI,
with the Grad-CAM of the predicted class (and the lesion mask, when the case has one) as
overlays. The user picks the case, the sequence and the view plane, scrolls slices (slider or
mouse wheel) and fades the CAM.

Size cap: at most :data:`MAX_VIEWER_CASES` cases, each volume down-sampled so its longest side
is at most :data:`MAX_VIEWER_SIDE` voxels and stored as uint8. The static PNG overlays stay in
the report as the fallback (no JavaScript, or no ``ipyniivue`` installed).

Example:
    >>> html = viewer_section([{"case_id": "c1", "caption": "c1: HCC (correct)",
    ...     "orientation": "RAS", "mask": None,
    ...     "sequences": [{"modality": "T2WI", "image": img, "cam": cam}]}])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import gzip
import html
import importlib.util
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_VIEWER_CASES", "MAX_VIEWER_SIDE", "niivue_available", "viewer_cases",
           "viewer_section", "viewer_volumes", "volume_nifti"]

MAX_VIEWER_CASES = 6
MAX_VIEWER_SIDE = 48
NIIVUE_PACKAGE = "ipyniivue"

# view planes: NiiVue's SliceType values
_PLANES = (("axial", 0), ("coronal", 1), ("sagittal", 2), ("multiplanar", 3), ("3D render", 4))


def _bundle_path() -> Path | None:
    spec = importlib.util.find_spec(NIIVUE_PACKAGE)     # locate without importing (no Jupyter)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "static" / "widget.js"
    return path if path.is_file() else None


def niivue_available() -> bool:
    """Whether the NiiVue bundle (``pip install ipyniivue``) is installed."""
    return _bundle_path() is not None


@lru_cache(maxsize=1)
def _niivue_script() -> str:
    """ipyniivue's ES module as a classic script that sets ``window.medmapNiivueWidget``.

    Module scripts cannot be imported from ``file://`` pages, classic ones can be inlined.
    """
    path = _bundle_path()
    if path is None:
        raise RuntimeError(f"{NIIVUE_PACKAGE} is not installed")
    src = path.read_text(encoding="utf-8")
    m = re.search(r"export\s*\{\s*([\w$]+)\s+as\s+default\s*\}\s*;?\s*$", src)
    if m is None or re.search(r"^\s*(import|export)\s", src[:m.start()], re.M) \
            or "import.meta" in src:
        raise RuntimeError(f"{path}: not the single-export module this viewer expects")
    body = src[:m.start()].replace("</script", "<\\/script")
    return f'(function(){{"use strict";\n{body}\nwindow.medmapNiivueWidget={m.group(1)};}})();'


@lru_cache(maxsize=1)
def _host_script() -> str:
    return (Path(__file__).with_name("viewer_host.js")).read_text(encoding="utf-8")


def _downsample(vol: np.ndarray, side: int) -> np.ndarray:
    """Area down-sampling so that the longest side is at most ``side`` voxels."""
    scale = side / max(vol.shape)
    if scale >= 1:
        return vol
    import torch

    shape = [max(1, int(round(s * scale))) for s in vol.shape]
    t = torch.as_tensor(np.ascontiguousarray(vol), dtype=torch.float32)[None, None]
    return torch.nn.functional.adaptive_avg_pool3d(t, shape)[0, 0].numpy()


def viewer_volumes(images: dict[str, Any], cams: dict[str, Any], mask: Any,
                   orientation: str) -> dict[str, Any]:
    """What the viewer needs of one case, kept small while evaluation runs: each sequence's
    image and CAM (3D tensors or arrays on one grid) and the mask, down-sampled to
    :data:`MAX_VIEWER_SIDE` voxels a side, float16 (uint8 for the mask)."""
    def small(x: Any) -> np.ndarray:
        a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        return _downsample(a.astype(np.float32), MAX_VIEWER_SIDE).astype(np.float16)

    return {"orientation": str(orientation),
            "sequences": [{"modality": n, "image": small(images[n]), "cam": small(cams[n])}
                          for n in images],
            "mask": None if mask is None else (small(mask) > 0.5).astype(np.uint8)}


def viewer_cases(overlays: Sequence[dict[str, Any]], n: int = MAX_VIEWER_CASES) -> list[dict]:
    """Up to ``n`` overlay records for the viewer, spread over the true classes: one per class
    (a correct case first), then a second round, and so on."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for o in overlays:
        if o.get("volumes"):
            groups.setdefault(o.get("true_index"), []).append(o)
    for g in groups.values():
        g.sort(key=lambda o: not o.get("correct"))          # stable: correct ones first
    out: list[dict[str, Any]] = []
    while len(out) < n and any(groups.values()):
        for k in sorted(groups, key=str):
            if groups[k] and len(out) < n:
                out.append(groups[k].pop(0))
    return out


def _affine(orientation: str) -> np.ndarray:
    """Voxel-to-world affine of a volume whose array axes follow ``orientation`` (1 voxel = 1
    unit: the crops are resized, so they have no single mm scale)."""
    import nibabel as nib

    ornt = nib.orientations.axcodes2ornt(tuple(orientation.upper()))
    aff = np.zeros((4, 4))
    for i, (axis, flip) in enumerate(ornt):
        aff[int(axis), i] = float(flip)
    aff[3, 3] = 1.0
    return aff


def volume_nifti(vol: np.ndarray, orientation: str = "RAS", *, lo: float | None = None,
                 hi: float | None = None, side: int = MAX_VIEWER_SIDE) -> bytes:
    """A 3D array as gzipped uint8 NIfTI bytes, down-sampled to ``side`` voxels at most.

    Intensities are mapped linearly from ``[lo, hi]`` (default: the 1st-99th percentiles) to
    ``[0, 255]``. Example: ``volume_nifti(cam, lo=0, hi=1)``.
    """
    import nibabel as nib

    v = _downsample(np.asarray(vol, dtype=np.float32), side)
    if lo is None or hi is None:
        lo, hi = (np.percentile(v, [1, 99]) if v.size else (0.0, 1.0))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    u8 = np.clip((v - lo) * scale, 0, 255).round().astype(np.uint8)
    img = nib.Nifti1Image(u8, _affine(orientation))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)


def _focus(case: dict[str, Any]) -> list[float]:
    """Crosshair start (RAS fractions) at the lesion centroid, else the CAM maximum."""
    import nibabel as nib

    mask = case.get("mask")
    ref = np.asarray(case["sequences"][0]["cam"])
    if mask is not None and np.asarray(mask).any():
        idx = np.argwhere(np.asarray(mask) > 0).mean(0)
    else:
        total = sum(np.asarray(s["cam"], dtype=np.float64) for s in case["sequences"])
        idx = np.array(np.unravel_index(int(np.argmax(total)), ref.shape), dtype=np.float64)
    ornt = nib.orientations.axcodes2ornt(tuple(str(case.get("orientation", "RAS")).upper()))
    pos = [0.5, 0.5, 0.5]
    for i, (axis, flip) in enumerate(ornt):
        frac = (idx[i] + 0.5) / ref.shape[i]
        pos[int(axis)] = float(frac if flip > 0 else 1.0 - frac)
    return pos


def _entry(data: bytes, name: str, colormap: str, opacity: float, cal: tuple[float, float]):
    return {"state": {"name": name, "colormap": colormap, "opacity": opacity,
                      "cal_min": cal[0], "cal_max": cal[1]},
            "data": base64.b64encode(data).decode("ascii")}


def _widget_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """Default states of ipyniivue's NiiVue and Volume widgets, as their front end expects."""
    import ipyniivue

    nv = ipyniivue.NiiVue(height=420)
    nv.opts.is_colorbar = False
    nv.opts.crosshair_width = 0.25                       # voxels: thin on 32^3 crops
    nv.opts.crosshair_color = (1.0, 0.2, 0.2, 0.6)
    drop = {"layout", "tooltip", "tabbable", "_dom_classes"}
    state = {k: v for k, v in nv.get_state().items() if not k.startswith("_esm") and k not in drop}
    vol = ipyniivue.Volume(data=b"\0", name="x.nii.gz")
    vstate = {k: v for k, v in vol.get_state().items()
              if not k.startswith("_") and k not in drop and not isinstance(v, (bytes, memoryview))}
    return state, vstate


def _payload(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    widget, vstate = _widget_state()
    out = []
    for c in cases[:MAX_VIEWER_CASES]:
        orient = str(c.get("orientation", "RAS"))
        seqs = [{"modality": str(s["modality"]),
                 "image": _entry(volume_nifti(s["image"], orient), f"{s['modality']}.nii.gz",
                                 "gray", 1.0, (0, 255)),
                 "cam": _entry(volume_nifti(s["cam"], orient, lo=0.0, hi=1.0), "cam.nii.gz",
                               "warm", 0.5, (51, 255))}
                for s in c["sequences"]]
        mask = c.get("mask")
        has_mask = mask is not None and np.asarray(mask).any()
        out.append({"case_id": str(c["case_id"]), "caption": str(c.get("caption", c["case_id"])),
                    "sequences": seqs, "focus": _focus(c),
                    "mask": _entry(volume_nifti(np.asarray(mask) > 0, orient, lo=0.0, hi=1.0),
                                   "mask.nii.gz", "green", 0.25, (1, 255)) if has_mask else None})
    return {"widget": widget, "volume_state": vstate, "cases": out}


def viewer_section(cases: Sequence[dict[str, Any]]) -> str:
    """HTML of the interactive viewer for ``cases`` (``case_id``, ``caption``, ``orientation``,
    ``mask`` (3D array or None) and ``sequences``: ``modality``, ``image`` and ``cam`` 3D arrays
    on the same grid, CAM in [0, 1]). A note instead when there is nothing to show or NiiVue is
    not installed."""
    if not cases:
        return "<p class='note'>No case to show in the 3D viewer.</p>"
    if not niivue_available():
        return ("<p class='note'>3D viewer not included: install NiiVue with "
                f"<code>pip install {NIIVUE_PACKAGE}</code> (part of medmap's install); the "
                "static slices below show the same CAMs.</p>")
    payload = json.dumps(_payload(cases), separators=(",", ":"), default=float)
    payload = payload.replace("</", "<\\/")
    options = "".join(f"<option value='{i}'>{html.escape(str(c.get('caption', c['case_id'])))}"
                      "</option>" for i, c in enumerate(cases[:MAX_VIEWER_CASES]))
    planes = "".join(f"<option value='{v}'{' selected' if v == 0 else ''}>{n}</option>"
                     for n, v in _PLANES)
    shown = min(len(cases), MAX_VIEWER_CASES)
    return f"""<div class='viewer' id='viewer'>
<p id='nv-fallback' class='note'>The 3D viewer needs JavaScript; the static slices below show
the same CAMs.</p>
<div id='nv-ui' hidden>
<div class='nv-controls'>
<label>case <select id='nv-case'>{options}</select></label>
<label>sequence <select id='nv-seq'></select></label>
<label>plane <select id='nv-plane'>{planes}</select></label>
<label>slice <input id='nv-slice' type='range' min='0' max='1' step='0.01' value='0.5'></label>
<label>CAM opacity <input id='nv-opacity' type='range' min='0' max='1' step='0.05'
value='0.5'></label>
<label><input id='nv-mask' type='checkbox'> lesion mask</label>
</div>
<div id='nv-caption' class='cap'></div>
<div id='nv-canvas' style='width:100%;max-width:720px;height:420px;background:#000'></div>
<div id='nv-status' class='note'>loading the viewer&hellip;</div>
<p class='note'>{shown} cases (at most {MAX_VIEWER_CASES}, spread over the classes); volumes are the model's preprocessed crops,
down-sampled to at most {MAX_VIEWER_SIDE} voxels a side, 8-bit. Scroll slices with the slider
or the mouse wheel; grey: the sequence; red to yellow: Grad-CAM of the predicted class above 0.2 of
its maximum; green: lesion mask. Viewer: NiiVue (via {NIIVUE_PACKAGE}), embedded, works offline.</p>
</div>
</div>
<script>{_niivue_script()}</script>
<script type='application/json' id='nv-data'>{payload}</script>
<script>{_host_script()}</script>"""
