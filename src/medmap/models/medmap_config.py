"""The configs of both MedMAP stages: :class:`MedMAPConfig` (the architecture, saved with the
weights) and :class:`MedMAPLossConfig` (the fine-tuning objective). The models are in
:mod:`medmap.models.medmap`, which re-exports both.

Example:
    >>> from medmap.models.medmap_config import MedMAPConfig
    >>> MedMAPConfig.tiny(["T2WI"], ["a", "b"]).embed_dim
    32
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from medmap.config import ConfigError
from medmap.models.encoders import CNNConfig, EncoderConfig, SwinConfig, tiny_encoder_config

CSAText = Literal["knowledge", "report", "modality", "none"]
Pooling = Literal["mean_max", "mask"]


@dataclass
class MedMAPLossConfig:
    """Objective settings of both stages (saved with the weights).

    ``case_alignment``: pre-training adds a symmetric InfoNCE term between each case's embedding
    (the mean of its present experts' normalised embeddings) and its global impression, weighted
    ``case_weight`` -- an extension beyond the paper; ``false`` is the paper's exact objective
    (per-modality InfoNCE only). It applies only when the training cases have a global report.
    ``kl_temperature``: the temperature of the fine-tuning KL term's softmaxes. ``cls_loss``,
    ``weighting``, ``cls_weight``, ``kl_weight``, ``label_smoothing`` and ``class_balance``
    set the fine-tuning objective (:func:`medmap.losses.medmap.medmap_loss`); the paper's is
    ``bce`` / ``ramp`` / 0.1 / 0.1.
    """

    case_alignment: bool = True
    case_weight: float = 1.0
    kl_temperature: float = 0.1
    # fine-tuning objective (medmap.losses.medmap.medmap_loss). Default: cross-entropy and the
    # KL term at constant weights 1 and 0.1. The paper's (cls_loss: bce, weighting: ramp,
    # cls_weight: 0.1, kl_weight: 0.1) ramps the classification weight up from 7e-4; in a
    # short run it left the classifier under-fitted (docs/method.md).
    cls_loss: Literal["bce", "ce"] = "ce"
    weighting: Literal["ramp", "constant"] = "constant"
    cls_weight: float = 1.0
    kl_weight: float = 0.1
    label_smoothing: float = 0.0
    class_balance: bool = False       # weight each case by 1 / its class's training frequency
    # deep supervision per sequence: each sequence's own feature (before the fusion across
    # sequences) also predicts the class through a linear head of its own, a cross-entropy
    # term of this weight (training only; 0: off, no heads)
    modality_weight: float = 0.0

    def __post_init__(self) -> None:
        if float(self.modality_weight) < 0:
            raise ValueError(f"losses.modality_weight must be >= 0 (0: off), got "
                             f"{self.modality_weight}")


@dataclass
class MedMAPConfig:
    """Architecture of both MedMAP stages (saved with the weights).

    ``modalities``, ``classes``, ``organ`` and ``text_dim`` are filled by the training stages
    from the data and the text encoder. ``language="random"`` records a model trained with every
    text embedding replaced by a fixed random vector of the same norm (the language-removed
    control of the ablation).
    """

    modalities: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    organ: str = ""
    encoder: EncoderConfig = field(default_factory=SwinConfig)
    conv_stream: EncoderConfig = field(default_factory=lambda: CNNConfig(channels=(16, 32, 64, 96)))
    embed_dim: int = 256
    text_dim: int = 384
    shared_encoder: bool = False        # one modality-agnostic encoder (ablation)
    use_conv: bool = True               # CSA's convolutional stream
    use_cct: bool = True                # Cross-Cognition Transformer
    csa_text: CSAText = "knowledge"     # what guides the Transformer stream (module doc)
    language: Literal["real", "random"] = "real"
    cct_layers: int = 1
    cct_heads: int = 4
    dropout: float = 0.1
    init_logit_scale: float = math.log(1 / 0.07)
    prompts: dict[str, str] = field(default_factory=dict)   # modality -> prompt ("modality" CSA)
    # recompute each expert's activations in the backward pass (memory for compute)
    expert_checkpoint: bool = False
    # how each stream's tokens become the modality's feature: "mean_max" (mean and max over the
    # tokens) or "mask" (mean inside the lesion mask and mean outside it, each token weighted
    # by the mask's fraction in its cell; the model then needs the mask ``mask_key`` at
    # inference, as it does for a lesion-crop roi_mask)
    pooling: Pooling = "mean_max"
    mask_key: str = "lesion"
    # the CSA conv stream also reads the lesion mask as a second input channel (it is trained
    # from scratch in fine-tuning, so it can see where the lesion's core and rim are at full
    # resolution); needs the mask at inference like pooling "mask"
    mask_channel: bool = False
    # mask-guided region pooling (medmap.models.regions): the expert's feature maps of these
    # stages (0 = the finest) averaged inside the lesion, its core, its rim and the tissue
    # around it, added to every modality's feature (empty: off); needs the mask at inference
    region_scales: list[int] = field(default_factory=list)
    # the input volume's own mean and standard deviation inside the same four regions (8
    # values per modality, standardised per modality by batch norm), added beside the region-
    # pooled features: the lesion's signal relative to its surroundings, read directly
    region_intensity: bool = False
    # the lesion mask's size and shape (medmap.models.regions.shape_stats: the lesion's, core's,
    # rim's and shell's share of the crop, the lesion box's span per axis, how much of that box
    # the lesion fills; 8 values per case, standardised by batch norm), added beside them:
    # a lesion crop resized to a fixed grid loses its size otherwise
    region_shape: bool = False
    # with region_intensity: every modality's standardised region statistics, each in its
    # fixed slot (zeros where the modality is absent), also feed a linear classifier whose
    # logits are added to the head's, so the statistics reach the decision without passing
    # through the fusion (a wide-and-deep model; the linear part is what a radiomics baseline
    # fits); zero-initialised, so training starts from the deep model's logits
    stats_head: bool = False
    # how the stats head starts fine-tuning (read only with stats_head: true): "fit" (first a
    # logistic regression, L2 strength by cross-validation, fitted to the training cases'
    # standardised statistics: the head starts from it and the statistics' batch norms from
    # their moments; the radiomics baseline's kind of fit, run to convergence before the joint
    # training, as linear-probe-then-fine-tune does for features; liver +0.039 accuracy and
    # +0.010 AUC over nine seeds, docs/method.md) or "zero" (training starts from the deep
    # model's logits)
    stats_head_init: Literal["zero", "fit"] = "fit"
    # how the present modalities' features become the case's: "mean" (a Transformer layer
    # over them, then their mean) or "concat" (the same layer, then every modality's slot in
    # a fixed order, absent ones a learned vector, projected to d: cross-phase contrasts)
    modality_pool: Literal["mean", "concat"] = "mean"
    losses: MedMAPLossConfig = field(default_factory=MedMAPLossConfig)

    def __post_init__(self) -> None:
        check_stats_head(self)

    @classmethod
    def tiny(cls, modalities: list[str], classes: list[str], **kw) -> MedMAPConfig:
        """A small config for tests at 32^3."""
        base = dict(modalities=list(modalities), classes=list(classes),
                    encoder=tiny_encoder_config("swin"),
                    conv_stream=CNNConfig(channels=(8, 16, 16)),
                    embed_dim=32, text_dim=32, cct_heads=2, dropout=0.0)
        base.update(kw)
        return cls(**base)


def check_stats_head(cfg: MedMAPConfig) -> None:
    """ConfigError unless ``stats_head`` comes with the ``region_intensity`` it reads (checked
    when a config is built or loaded, and again when a model is built from one edited since)."""
    if cfg.stats_head and not cfg.region_intensity:
        raise ConfigError("model.stats_head reads the region statistics of "
                          "model.region_intensity; set model.region_intensity: true too, "
                          "or model.stats_head: false")
    if cfg.stats_head_init not in ("zero", "fit"):
        raise ConfigError(f"model.stats_head_init must be 'zero' or 'fit', got "
                          f"{cfg.stats_head_init!r}")


__all__ = ["CSAText", "MedMAPConfig", "MedMAPLossConfig", "Pooling", "check_stats_head"]
