"""Lesion segmentation: MONAI's SwinUNETR decoder on a pre-trained expert (Swin, CNN or ResNet).

:class:`SwinUNETRSegmenter` = one modality's pre-trained expert (its multi-scale
:meth:`~medmap.models.encoders.Encoder3D.feature_maps`, for Swin the stages 0..``out_stage``
of :meth:`~medmap.models.encoders.SwinEncoder.hidden_states`) + the SwinUNETR decoder built from
MONAI's own blocks, generalised to any number of stages (described here for Swin; other
encoders upsample by the ratios of their ``feature_strides``):

* ``enc0 = UnetrBasicBlock(image)`` at full resolution, ``skip_i = UnetrBasicBlock(h_i)`` for
  ``i < S``, ``bottleneck = UnetrBasicBlock(h_S)``;
* ``d = UnetrUpBlock(d, skip_i)`` for ``i = S-1 .. 0`` (channels ``fs*2^(i+1) -> fs*2^i``), then
  ``UnetrUpBlock(d, enc0)`` back to full resolution and ``UnetOutBlock`` -> class logits.

(With ``out_stage=4`` this is SwinUNETR's decoder, except that SwinUNETR feeds its deepest skip
``h_3`` raw where every skip here has its residual block.) The whole network is fine-tuned with
MONAI's ``DiceCELoss`` (softmax, one-hot targets; the encoder at ``encoder_lr_ratio`` times the
decoder's learning rate) on the manifest's ``masks["lesion"]`` binarised (> 0): 2 classes,
background and lesion. Input: the volume of one modality (default: the model's first modality,
which for MedMoM-Sim is the reference grid the lesion masks are drawn in). Evaluation: MONAI's
``DiceMetric`` (lesion class only) per case, mean over the cases whose mask is not empty.
:func:`predict_masks` writes the argmax mask in the input's own voxel grid (same shape and
affine) through :meth:`~medmap.data.preprocess.Preprocessor.invert` (nearest).

Example:
    >>> from medmap.downstream.segment import segment
    >>> res = segment("runs/pretrain/model", "sim/manifest.jsonl", "runs/seg", epochs=20)  # doctest: +SKIP
    >>> res["test"]["dice"]                                                                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.data.preprocess import PreprocessConfig
from medmap.downstream.common import TaskNotApplicable, safe_name, write_json
from medmap.downstream.vlm import LoadedVLM, VolumeItem, load_vlm
from medmap.train.loop import ListDataset, fit
from medmap.models.encoders import EncoderConfig, SwinConfig, build_encoder
from medmap.models.hub import register_model
from medmap.train.engine import OptimConfig

__all__ = ["SegmenterConfig", "SwinUNETRSegmenter", "segmenter_from_vlm", "train_segmenter",
           "evaluate_segmenter", "predict_masks", "segment", "dice_scores", "load_segmenter"]

MODEL_TYPE = "swin_unetr_segmenter"


@dataclass
class SegmenterConfig:
    """Architecture of the segmenter (saved with its weights)."""

    encoder: EncoderConfig = field(default_factory=SwinConfig)
    modality: str = ""
    organ: str = ""
    num_classes: int = 2
    norm_name: str = "instance"
    mask_key: str = "lesion"


@register_model(MODEL_TYPE, SegmenterConfig)
class SwinUNETRSegmenter(nn.Module):
    """Any medmap encoder (its multi-scale :meth:`~medmap.models.encoders.Encoder3D.feature_maps`,
    timm's ``features_only``) + the SwinUNETR decoder; ``forward(x) -> logits``.

    Each skip map goes through a residual ``UnetrBasicBlock``; ``UnetrUpBlock`` upsamples by the
    ratio of neighbouring maps' strides (2 for Swin and CNN stages, 1 between a ResNet's stem
    and first layer) and a last up block returns to the input's resolution. On a Swin encoder
    this is exactly the decoder the module doc describes."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder)
        ch = list(self.encoder.feature_channels)           # finest first
        strides = list(self.encoder.feature_strides)
        if len(ch) != len(strides) or len(ch) < 2:
            raise TaskNotApplicable(f"segmentation needs an encoder with multi-scale feature "
                                    f"maps; the {cfg.encoder.name!r} encoder gives {len(ch)}")
        S, nn_, fs = len(ch) - 1, cfg.norm_name, ch[0]

        def basic(c_in, c_out):
            return UnetrBasicBlock(3, c_in, c_out, kernel_size=3, stride=1, norm_name=nn_,
                                   res_block=True)

        def up(c_in, c_out, ratio):
            return UnetrUpBlock(3, c_in, c_out, kernel_size=3, upsample_kernel_size=ratio,
                                norm_name=nn_, res_block=True)

        self.enc0 = basic(cfg.encoder.in_channels, fs)
        self.skips = nn.ModuleList([basic(ch[i], ch[i]) for i in range(S)])
        self.bottleneck = basic(ch[S], ch[S])
        self.ups = nn.ModuleList([up(ch[i + 1], ch[i], strides[i + 1] // strides[i])
                                  for i in range(S)])
        self.up0 = up(fs, fs, strides[0])
        self.out = UnetOutBlock(3, fs, cfg.num_classes)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.enc0, self.skips, self.bottleneck, self.ups, self.up0, self.out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder.feature_maps(x)              # S+1 maps, h_i: (B, ch_i, D/stride_i, ...)
        d = self.bottleneck(h[-1])
        for i in reversed(range(len(self.skips))):
            d = self.ups[i](d, self.skips[i](h[i]))    # (B, ch_i, D/stride_i, ...)
        return self.out(self.up0(d, self.enc0(x)))    # (B, num_classes, D, H, W)


def segmenter_from_vlm(vlm: LoadedVLM, modality: str | None = None,
                       num_classes: int = 2, mask_key: str = "lesion") -> SwinUNETRSegmenter:
    """A segmenter of manifest mask ``mask_key`` whose encoder is a copy of ``modality``'s
    pre-trained expert."""
    model = vlm.model
    modality = modality or vlm.modalities[0]
    key = model.experts.key(modality)
    cfg = SegmenterConfig(encoder=model.cfg.encoder, modality=modality, organ=vlm.organ,
                          num_classes=num_classes, mask_key=mask_key)
    seg = SwinUNETRSegmenter(cfg)
    seg.encoder.load_state_dict(model.experts.encoders[key].state_dict())
    return seg.to(vlm.device)


def _seg_items(vlm_or_modality, cases, modality: str, mask_key: str,
               need_mask: bool) -> list[VolumeItem]:
    out = []
    for c in cases:
        if modality not in c.modalities or (need_mask and mask_key not in c.masks):
            continue
        out.append(VolumeItem(c, modality, 0, c.modalities[modality], None))
    return out


def _load_pair(loader, it: VolumeItem, mask_key: str) -> dict[str, torch.Tensor]:
    from medmap.data.datasets import roi_path

    x = it.load(loader)
    key = getattr(getattr(loader, "cfg", None), "roi_mask", None)
    m = loader.get_mask(it.case.masks[mask_key]) if key is None else \
        loader.get_mask(it.case.masks[mask_key], roi=roi_path(it.case, key))
    return {"image": x, "mask": (m > 0.5).float()}


def _collate(b):
    return {"image": torch.stack([i["image"] for i in b]), "mask": torch.stack([i["mask"] for i in b])}


def train_segmenter(seg: SwinUNETRSegmenter, items: list[VolumeItem], loader,
                    optim: OptimConfig, encoder_lr_ratio: float = 0.1) -> list[float]:
    """Fine-tune with ``DiceCELoss`` on ``items`` (volume + lesion mask); returns epoch losses."""
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    dev = next(seg.parameters()).device
    ds = ListDataset(items, lambda it: _load_pair(loader, it, seg.cfg.mask_key))

    def step(batch):
        logits = seg(batch["image"].to(dev))
        return loss_fn(logits, batch["mask"].to(dev))

    groups = [(nn.ModuleList(seg.decoder_modules()), 1.0), (seg.encoder, encoder_lr_ratio)]
    return fit(step, ds, _collate, groups, optim, train_modules=[seg])


def dice_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 2) -> np.ndarray:
    """Per-case Dice of the foreground classes with MONAI's ``DiceMetric``; ``pred`` / ``target``
    (B, 1, D, H, W) label maps. NaN where a case's target (and prediction) is empty."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    vals = metric(one_hot(pred.long(), num_classes), one_hot(target.long(), num_classes))
    return vals.float().mean(1).cpu().numpy()   # (B,) mean over foreground classes


@torch.no_grad()
def evaluate_segmenter(seg: SwinUNETRSegmenter, items: list[VolumeItem], loader,
                       batch_size: int = 2) -> dict[str, Any]:
    """Mean Dice (lesion) over the cases with a non-empty mask, plus per-case values."""
    seg.eval()
    dev = next(seg.parameters()).device
    per: dict[str, float | None] = {}
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        b = _collate([_load_pair(loader, it, seg.cfg.mask_key) for it in chunk])
        pred = seg(b["image"].to(dev)).argmax(1, keepdim=True).cpu()
        for it, v in zip(chunk, dice_scores(pred, b["mask"], seg.cfg.num_classes)):
            per[it.case.case_id] = float(v) if np.isfinite(v) else None
    from medmap.metrics import mean_ci

    vals = [v for v in per.values() if v is not None]
    return {"dice": float(np.mean(vals)) if vals else None, "ci": mean_ci(vals),
            "n": len(vals), "n_cases": len(items), "per_case": per}


@torch.no_grad()
def predict_masks(seg: SwinUNETRSegmenter, preprocess: PreprocessConfig, volumes: dict[str, str],
                  out_dir: str | Path, filename: str = "lesion_pred.nii.gz",
                  rois: dict[str, str] | None = None) -> dict[str, Path]:
    """Segment ``{case_id: volume path}`` (volumes of the segmenter's modality) and write each
    argmax label map as ``<out_dir>/<case_id>/<filename>`` (uint8) on the volume's own voxel
    grid: same shape and affine as the input file. ``rois``: ``{case_id: organ mask}`` when
    ``preprocess.roi_mask`` is set."""
    import nibabel as nib

    from medmap.data.preprocess import Preprocessor

    pre = Preprocessor(preprocess)
    seg.eval()
    dev = next(seg.parameters()).device
    written: dict[str, Path] = {}
    for cid, path in volumes.items():
        roi = (rois or {}).get(cid)
        x = pre(path, seg.cfg.modality, roi=roi)[None].to(dev)  # (1, 1, D, H, W)
        pred = seg(x).argmax(1)[0].float().cpu()                 # (D, H, W)
        native = pre.invert(pred, path, mask=True, roi=roi)      # (1, X, Y, Z) MetaTensor
        arr = np.rint(np.asarray(native[0].detach().cpu().numpy())).astype(np.uint8)
        aff = np.asarray(native.affine.detach().cpu().numpy(), dtype=np.float64)
        folder = Path(out_dir) / safe_name(cid)
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, aff), str(folder / filename))
        written[cid] = folder / filename
    return written


def load_segmenter(path: str | Path) -> tuple[SwinUNETRSegmenter, PreprocessConfig]:
    """A segmenter saved by :func:`segment` (``OUT/model``) and its preprocessing."""
    from medmap.models.hub import from_pretrained

    seg, doc = from_pretrained(path, expect_type=MODEL_TYPE)
    return seg, PreprocessConfig.from_dict(doc["preprocess"])


def segment(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
            out_dir: str | Path | None = None, *, modality: str | None = None,
            train_split: str = "train", eval_split: str = "test", epochs: int = 20,
            batch_size: int = 2, lr: float = 1e-3, encoder_lr_ratio: float = 0.1,
            seed: int = 0, write_masks: bool = True, cache_dir: str | Path | None = None,
            loader=None, device: str | None = None, experiment=None,
            mask: str = "lesion") -> dict[str, Any]:
    """Fine-tune a SwinUNETR segmenter of manifest mask ``mask`` (``"lesion"``, or an organ:
    ``"liver"``) on ``train_split`` and evaluate Dice on ``eval_split``.

    With ``out_dir``: ``segment.json`` (metrics), ``model/`` (the segmenter, safetensors) and,
    with ``write_masks``, ``masks/<case_id>/<mask>_pred.nii.gz`` for every ``eval_split`` case
    in the input's own space (same shape and affine as the input volume). Returns the metrics.
    """
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    modality = modality or vlm.modalities[0]
    if modality not in vlm.modalities:
        raise UserError(f"modality {modality!r} has no expert; the model has {vlm.modalities}")
    if loader is None:
        loader = vlm.loader(cache_dir)
    mkey = mask
    train = _seg_items(vlm, vlm.cases(manifest, train_split), modality, mkey, True)
    test = _seg_items(vlm, vlm.cases(manifest, eval_split), modality, mkey, True)
    if not train:
        raise UserError(f"no {vlm.organ} case of split {train_split!r} has a {modality} volume "
                        f"and a '{mkey}' mask; segmentation needs masks['{mkey}']")
    seg = segmenter_from_vlm(vlm, modality, mask_key=mkey)
    optim = OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        warmup_epochs=min(1.0, epochs / 10), weight_decay=1e-4)
    losses = train_segmenter(seg, train, loader, optim, encoder_lr_ratio)
    res: dict[str, Any] = {"model": vlm.name, "organ": vlm.organ, "modality": modality,
                           "mask": mkey,
                           "train_split": train_split, "eval_split": eval_split,
                           "n_train": len(train), "epochs": epochs, "train_loss": losses}
    res[eval_split] = evaluate_segmenter(seg, test, loader) if test else None
    res["dice"] = res[eval_split]["dice"] if test else None
    res["dice_ci"] = res[eval_split]["ci"] if test else None
    if out_dir is not None:
        from medmap.models.hub import save_pretrained

        out = Path(out_dir)
        save_pretrained(seg, out / "model", preprocess=vlm.preprocess.to_dict(),
                        organ=vlm.organ, init=vlm.source)
        if write_masks and test:
            roi = vlm.preprocess.roi_mask
            written = predict_masks(seg, vlm.preprocess, {it.case.case_id: it.path for it in test},
                                    out / "masks", filename=f"{safe_name(mkey)}_pred.nii.gz",
                                    rois={it.case.case_id: it.case.masks[roi] for it in test}
                                    if roi else None)
            res["masks"] = {k: str(v) for k, v in written.items()}
        write_json(res, out / "segment.json")
    return res
