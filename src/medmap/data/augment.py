"""Training-time augmentation of preprocessed batches with MONAI random transforms.

One random draw per case is shared by all of the case's sequences (they stay registered): the
case's ``M`` volumes are stacked as channels ``(M, D, H, W)`` and go through one MONAI
``Compose`` of ``RandFlip`` (each spatial axis), ``RandScaleIntensity`` and
``RandShiftIntensity``. Missing sequences (zero slots) stay zero. The transforms are re-seeded
for every case from a torch generator (the training modules pass one seeded by seed, epoch,
batch and rank), so a run is reproducible and a resumed run replays the same augmentation.

Set ``data.augment`` in the experiment config; the Lightning modules apply it to training
batches only (``on_after_batch_transfer``), so validation, evaluation and prediction see the
volumes as preprocessed.

Example:
    >>> from medmap.data.augment import AugmentConfig, BatchAugmenter
    >>> aug = BatchAugmenter(AugmentConfig(flip_prob=0.5, intensity_scale=0.1))
    >>> batch["images"] = aug.cases(batch["images"], batch["present"])     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    """Random augmentation of training batches (all zero: off, the default).

    Attributes:
        flip_prob: probability of flipping each spatial axis (independently), per case.
        intensity_scale: multiply intensities by ``1 + u``, ``u ~ U(-s, s)``, per case.
        intensity_shift: add ``u ~ U(-s, s)`` (z-score units), per case.
        rotate90_prob: probability of rotating a case by 90, 180 or 270 degrees (one of the
            three at random) in the axial plane (the first two spatial axes); needs crops whose
            first two sides are equal (``preprocess.size``).
        modality_drop: probability of hiding each present sequence of a case from the model
            for one training step (at least one is always kept). The fusion already handles
            missing sequences; dropping them makes every sequence's features carry the class
            on their own instead of leaning on the one or two that fit the training set
            fastest, and the dropped sequences are not encoded at all.
    """

    flip_prob: float = 0.0
    rotate90_prob: float = 0.0
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    modality_drop: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.flip_prob) <= 1.0:
            raise ValueError(f"augment.flip_prob must be in [0, 1], got {self.flip_prob}")
        if not 0.0 <= float(self.rotate90_prob) <= 1.0:
            raise ValueError(f"augment.rotate90_prob must be in [0, 1], got {self.rotate90_prob}")
        if not 0.0 <= float(self.modality_drop) < 1.0:
            raise ValueError(f"augment.modality_drop must be in [0, 1), got {self.modality_drop}")
        for name in ("intensity_scale", "intensity_shift"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def volume_ops(self) -> bool:
        """Whether any flip or intensity change touches the volumes."""
        return bool(self.flip_prob or self.rotate90_prob or self.intensity_scale
                    or self.intensity_shift)

    @property
    def enabled(self) -> bool:
        return self.volume_ops or bool(self.modality_drop)


def _plain(x) -> torch.Tensor:
    """A plain contiguous ``torch.Tensor``: MONAI returns MetaTensors, whose per-operation
    ``__torch_function__`` bookkeeping made every later model operation several times slower
    (about half of a fine-tuning step's time)."""
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return t.contiguous()


class BatchAugmenter:
    """Applies :class:`AugmentConfig` to collated batches (see the module doc)."""

    def __init__(self, cfg: AugmentConfig):
        from monai.transforms import (Compose, RandFlip, RandRotate90, RandScaleIntensity,
                                      RandShiftIntensity)

        self.cfg = cfg
        spatial = ([RandFlip(prob=cfg.flip_prob, spatial_axis=a) for a in range(3)]
                   if cfg.flip_prob > 0 else [])
        if cfg.rotate90_prob > 0:
            spatial.append(RandRotate90(prob=cfg.rotate90_prob, max_k=3, spatial_axes=(0, 1)))
        intensity: list = []
        if cfg.intensity_scale > 0:
            intensity.append(RandScaleIntensity(factors=cfg.intensity_scale, prob=1.0))
        if cfg.intensity_shift > 0:
            intensity.append(RandShiftIntensity(offsets=cfg.intensity_shift, prob=1.0))
        self.transform = Compose(spatial + intensity)
        # the same two parts apart, for cases with a mask (flipped with the volumes, never
        # rescaled)
        self.spatial, self.intensity = Compose(spatial), Compose(intensity)

    def _one(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x: (C, D, H, W), every channel one sequence (or one volume) of the same case."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        self.transform.set_random_state(seed=seed)
        return _plain(self.transform(x))

    def cases(self, images: torch.Tensor, present: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, M, 1, D, H, W) -> same shape; absent slots (``present`` False) stay 0.
        ``generator``: source of the draws (default: torch's global RNG)."""
        if not self.cfg.volume_ops:   # nothing to do to the voxels
            return images
        B = images.shape[0]
        out = torch.stack([self._one(images[b, :, 0], generator) for b in range(B)])[:, :, None]
        if present is not None:
            out = out * present[:, :, None, None, None, None].to(out.dtype)
        return out

    def cases_with_mask(self, images: torch.Tensor, present: torch.Tensor | None,
                        mask: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, M, 1, D, H, W) and the cases' mask (B, 1, D, H, W) -> both augmented:
        the mask takes the case's flips, the intensity changes go to the volumes only."""
        if not self.cfg.volume_ops:   # nothing to do to the voxels
            return images, mask
        imgs, masks = [], []
        for b in range(images.shape[0]):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
            self.spatial.set_random_state(seed=seed)
            self.intensity.set_random_state(seed=seed + 1)
            both = _plain(self.spatial(torch.cat([images[b, :, 0], mask[b]])))
            imgs.append(_plain(self.intensity(both[:-1])))
            masks.append(both[-1:])
        out = torch.stack(imgs)[:, :, None].contiguous()
        if present is not None:
            out = out * present[:, :, None, None, None, None].to(out.dtype)
        return out, torch.stack(masks).contiguous()

    def drop_modalities(self, present: torch.Tensor, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """present (B, M) bool -> a copy with each present sequence dropped with probability
        ``modality_drop``; a case that would lose all of them keeps one present sequence,
        drawn at random.

        Example:
            >>> aug = BatchAugmenter(AugmentConfig(modality_drop=0.5))
            >>> kept = aug.drop_modalities(torch.ones(4, 8, dtype=torch.bool))
            >>> bool(kept.any(1).all())
            True
        """
        p = float(self.cfg.modality_drop)
        if p <= 0:
            return present
        u = torch.rand(present.shape, generator=generator)                     # (B, M)
        kept = present & (u >= p)
        empty = ~kept.any(1)
        if empty.any():     # restore the present sequence with the largest draw
            score = torch.where(present, u, torch.full_like(u, -1.0))
            pick = score.argmax(1)
            kept[empty, pick[empty]] = True
        return kept

    def volumes(self, image: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """image (B, 1, D, H, W) -> same shape, one draw per volume."""
        if not self.cfg.volume_ops:   # nothing to do to the voxels
            return image
        return torch.stack([self._one(image[b], generator) for b in range(image.shape[0])])


__all__ = ["AugmentConfig", "BatchAugmenter"]
