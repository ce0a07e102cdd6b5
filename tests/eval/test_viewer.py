"""The report's NiiVue viewer: the volumes it embeds (grid, orientation, cap), its case
selection, and the page in headless Chromium (canvas drawn, no console error, still readable
with JavaScript off)."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmap.eval.viewer import (MAX_VIEWER_SIDE, niivue_available, viewer_cases,
                                viewer_section, viewer_volumes, volume_nifti)

from test_report import CHROME_FLAGS, chromium

# WebGL without a GPU: Chromium's software rasteriser
WEBGL_FLAGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


def _case(cid="c1", shape=(20, 24, 16), mask=True):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    cam = np.zeros(shape, np.float32)
    cam[12:16, 4:8, 10:14] = 1.0
    m = np.zeros(shape, np.uint8)
    m[2:6, 3:9, 4:8] = 1
    vols = viewer_volumes({"T2WI": image, "DWI": image * 2}, {"T2WI": cam, "DWI": cam},
                          m if mask else None, "RAS")
    return {"case_id": cid, "caption": f"{cid}: test", **vols}


def test_volume_nifti_grid_orientation_and_cap():
    vol = np.arange(60 * 30 * 10, dtype=np.float32).reshape(60, 30, 10)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(volume_nifti(vol, "LPS", lo=0, hi=vol.max())))
    assert img.shape == (MAX_VIEWER_SIDE, 24, 8)            # longest side capped, aspect kept
    assert img.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    data = np.asarray(img.dataobj)
    assert data.min() <= 5 and data.max() >= 245              # [lo, hi] -> [0, 255]
    small = nib.Nifti1Image.from_bytes(gzip.decompress(volume_nifti(vol[:8, :8, :8])))
    assert small.shape == (8, 8, 8)                           # below the cap: untouched


def test_viewer_cases_spread_over_classes():
    ovs = [{"case_id": f"{k}{i}", "true_index": k, "correct": i == 1, "volumes": {"x": 1}}
           for k in range(3) for i in range(3)]
    picked = viewer_cases(ovs, n=4)
    assert [o["true_index"] for o in picked] == [0, 1, 2, 0]  # one per class first
    assert all(o["correct"] for o in picked[:3])              # a correct case first
    assert viewer_cases([{"case_id": "a", "true_index": 0, "correct": True}]) == []


def test_focus_starts_on_the_lesion():
    from medmap.eval.viewer import _focus

    case = _case()
    pos = _focus({**case, "mask": case["mask"]})
    assert np.allclose(pos, [(3.5 + 0.5) / 20, (5.5 + 0.5) / 24, (5.5 + 0.5) / 16])
    pos = _focus({**case, "mask": None})                      # no mask: the CAM's maximum
    assert 12 / 20 <= pos[0] <= 16 / 20


@pytest.mark.skipif(not niivue_available(), reason="ipyniivue is not installed")
def test_viewer_section_is_offline():
    page = viewer_section([_case("a"), _case("b", mask=False)])
    assert "medmapNiivueWidget" in page and "id='nv-data'" in page
    assert not re.search(r"(src|href)=['\"](https?:)?//", page)
    assert page.count("<option value='") >= 2 + 5          # cases + view planes
    data = re.search(r"id='nv-data'>(.*?)</script>", page, re.S)
    doc = json.loads(data.group(1))                       # no "</script" cut the JSON short
    assert [c["case_id"] for c in doc["cases"]] == ["a", "b"]
    assert doc["cases"][0]["mask"] and doc["cases"][1]["mask"] is None
    assert [s["modality"] for s in doc["cases"][0]["sequences"]] == ["T2WI", "DWI"]


def _chrome(exe, tmp_path, args, profile):
    try:
        return subprocess.run([exe, *CHROME_FLAGS, *WEBGL_FLAGS,
                               f"--user-data-dir={tmp_path / profile}", *args],
                              capture_output=True, timeout=120, check=False, text=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail(f"headless chromium did not finish within 120 s: {args}")


def _body(dom: str) -> str:
    body = re.search(r"<body[^>]*>", dom)
    assert body, f"no <body> in the dumped DOM: {dom[:300]!r}"
    return body.group(0)


@pytest.mark.skipif(not niivue_available(), reason="ipyniivue is not installed")
def test_report_viewer_renders_in_chromium(tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (run .ci/install-browser)")
    from medmap.eval.report import render_report

    overlays = [{"case_id": "liver_0001", "true_index": 0, "true": "a", "pred": "a",
                 "prob": 0.9, "correct": True, "slice_index": 4, "slice_axis": 2,
                 "slice_source": "lesion mask centroid",
                 "panels": [{"modality": "T2WI", "image": np.ones((20, 24)),
                             "cam": np.zeros((20, 24)), "mask": None}],
                 "volumes": {k: v for k, v in _case().items()
                             if k in ("orientation", "sequences", "mask")}}]
    res = {"classes": ["a", "b"], "info": {"split": "test"}, "metrics": None,
           "localisation": None}
    page = render_report(res, labels=np.array([0, 1, 0]), probs=np.full((3, 2), 0.5),
                         fusion=np.random.default_rng(0).normal(size=(3, 4)), overlays=overlays)
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")

    body = _body(_chrome(exe, tmp_path, ["--virtual-time-budget=15000", "--dump-dom",
                                         report.as_uri()], "on"))
    assert 'data-viewer="ready"' in body, body
    assert 'data-console-errors="0"' in body, body
    pixels = re.search(r'data-viewer-pixels="(\d+)"', body)
    assert pixels and int(pixels.group(1)) > 1000, body       # the canvas holds the volume

    # JavaScript off (a Content-Security-Policy that blocks every script: headless Chromium
    # cannot dump or screenshot a page with scripting disabled): the static figures remain and
    # the viewer's place says why it is empty
    nojs = tmp_path / "nojs.html"
    nojs.write_text(page.replace("<head>", "<head><meta http-equiv='Content-Security-Policy' "
                                 "content=\"script-src 'none'\">", 1), encoding="utf-8")
    dom = _chrome(exe, tmp_path, ["--virtual-time-budget=3000", "--dump-dom", nojs.as_uri()],
                  "off")
    assert "data-viewer" not in _body(dom) and "data-console-errors" not in _body(dom)
    assert re.search(r"<div id=.nv-ui. hidden", dom)              # controls stay hidden
    assert "The 3D viewer needs JavaScript" in dom and dom.count("<img ") >= 2
    shot = tmp_path / "nojs.png"
    _chrome(exe, tmp_path, [f"--screenshot={shot}", "--window-size=1000,2400", nojs.as_uri()],
            "off2")
    from matplotlib.image import imread

    px = imread(str(shot))[..., :3]
    assert float(px.var()) > 1e-3, "blank page with JavaScript off"

    # control: without the NiiVue bundle the page records the failure instead of going blank
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("window.medmapNiivueWidget=", "window.somethingElse="),
                      encoding="utf-8")
    body = _body(_chrome(exe, tmp_path, ["--virtual-time-budget=5000", "--dump-dom",
                                         broken.as_uri()], "broken"))
    assert 'data-console-errors="1"' in body and "data-viewer-pixels" not in body
