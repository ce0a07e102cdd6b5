"""3D vision encoders behind one interface, built by name from a typed config.

Every encoder maps a volume ``(B, 1, D, H, W)`` to :class:`EncoderOutput`: a token map
``(B, N, C)``, a pooled vector ``(B, C)`` and the spatial feature map ``(B, C, d, h, w)``.

Example:
    >>> import torch
    >>> from medmap.models.encoders import CNNConfig, build_encoder
    >>> enc = build_encoder(CNNConfig(channels=(8, 16)))
    >>> out = enc(torch.zeros(2, 1, 32, 32, 32))
    >>> tuple(out.tokens.shape), tuple(out.pooled.shape)
    ((2, 512, 16), (2, 16))
"""

from __future__ import annotations

import abc

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from medmap.config import ConfigError, UserError


class EncoderOutput(NamedTuple):
    tokens: torch.Tensor        # (B, N, C)
    pooled: torch.Tensor        # (B, C)
    feature_map: torch.Tensor   # (B, C, d, h, w)


@dataclass
class SwinConfig:
    """MONAI's SwinUNETR encoder (paper: feature_size 48, depths 2-2-2-2, window 7, patch 2).

    ``out_stage`` picks the Swin stage whose tokens are returned (4 = deepest, 1/32 of the
    input side); ``use_checkpoint`` is MONAI's per-block activation checkpointing.
    """

    name: Literal["swin"] = "swin"
    in_channels: int = 1
    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 2
    out_stage: int = 4
    use_checkpoint: bool = False
    drop_path_rate: float = 0.0


@dataclass
class ResNetConfig:
    """MONAI's 3D ResNet without its head (``depth`` 10/18/34, ``widths`` per layer)."""

    name: Literal["resnet"] = "resnet"
    in_channels: int = 1
    depth: Literal[10, 18, 34] = 10
    widths: tuple[int, ...] = (64, 128, 256, 512)


@dataclass
class CNNConfig:
    """A stack of stride-2 conv-norm-act blocks with ``channels`` (one block per entry)."""

    name: Literal["cnn"] = "cnn"
    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128)
    norm: Literal["instance", "batch"] = "instance"


# Any encoder's config; YAML picks the type with its ``name`` key.
EncoderConfig = SwinConfig | ResNetConfig | CNNConfig


class Encoder3D(nn.Module, abc.ABC):
    """Abstract base: subclasses set ``out_dim`` and implement ``feature_map``."""

    out_dim: int
    min_multiple: int = 1

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"{type(self).__name__} expects (B, C, D, H, W), got {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.min_multiple]
        if bad:
            raise UserError(
                f"{type(self).__name__}: spatial size {tuple(x.shape[2:])} does not fit the "
                f"architecture: every side must be divisible by {self.min_multiple}; "
                f"resize volumes (preprocess.size) to a multiple of {self.min_multiple}, e.g. "
                f"{tuple(max(self.min_multiple, round(s / self.min_multiple) * self.min_multiple) for s in x.shape[2:])}"
            )

    @abc.abstractmethod
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, d, h, w)
        """The encoder's last spatial feature map."""

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's feature map, finest first, the last being :meth:`feature_map`'s
        (timm's ``features_only``): what a decoder or multi-scale pooling reads. Each stage
        halves the side of the one before; ``feature_channels`` gives their widths."""
        self.check_input(x)
        return [self.feature_map(x)]

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each map of :meth:`feature_maps`."""
        return [self.out_dim]

    @property
    def feature_strides(self) -> list[int]:
        """Down-sampling factor of each map of :meth:`feature_maps` against the input (timm's
        ``feature_info.reduction()``): a decoder upsamples by the ratios of neighbours."""
        return [self.min_multiple]

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        self.check_input(x)
        fmap = self.feature_map(x)                       # (B, C, d, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)         # (B, N=d*h*w, C)
        return EncoderOutput(tokens, tokens.mean(dim=1), fmap)


class SwinEncoder(Encoder3D):
    """MONAI's 3D Swin Transformer (the SwinUNETR encoder)."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        if not 1 <= cfg.out_stage <= len(cfg.depths):
            raise ConfigError(f"swin out_stage must be in 1..{len(cfg.depths)}, got {cfg.out_stage}")
        self.swin = SwinTransformer(
            in_chans=cfg.in_channels,
            embed_dim=cfg.feature_size,
            window_size=(cfg.window_size,) * 3,
            patch_size=(cfg.patch_size,) * 3,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            drop_path_rate=cfg.drop_path_rate,
            use_checkpoint=cfg.use_checkpoint,
            spatial_dims=3,
        )
        # Stage 4 of the default 4-stage Swin has 16 x feature_size channels at 1/32 resolution.
        # Stages after ``out_stage`` are dropped so every parameter is used.
        self.out_stage = cfg.out_stage
        for i in range(cfg.out_stage + 1, len(cfg.depths) + 1):
            setattr(self.swin, f"layers{i}", nn.ModuleList())
        self.out_dim = cfg.feature_size * 2 ** cfg.out_stage
        self.min_multiple = cfg.patch_size * 2 ** len(cfg.depths)
        self._patch = cfg.patch_size

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Swin stage outputs 0..out_stage (patch embedding first), layer-normed as in MONAI;
        for decoders such as SwinUNETR's."""
        return self._stages(x, keep_all=True)

    def _stages(self, x: torch.Tensor, keep_all: bool) -> list[torch.Tensor]:
        self.check_input(x)
        sw = self.swin
        h = sw.pos_drop(sw.patch_embed(x))                # (B, fs, D/2, H/2, W/2)
        outs = [sw.proj_out(h, True)] if keep_all else []
        for i in range(1, self.out_stage + 1):
            h = getattr(sw, f"layers{i}")[0](h.contiguous())   # (B, fs*2^i, D/2^(i+1), ...)
            if keep_all or i == self.out_stage:
                outs.append(sw.proj_out(h, True))
        return outs

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        # only the returned stage is normalised (the others' layer norms would be wasted work)
        return self._stages(x, keep_all=False)[-1]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.hidden_states(x)

    @property
    def feature_channels(self) -> list[int]:
        fs = self.out_dim // 2 ** self.out_stage
        return [fs * 2 ** i for i in range(self.out_stage + 1)]

    @property
    def feature_strides(self) -> list[int]:
        return [self._patch * 2 ** i for i in range(self.out_stage + 1)]


class ResNetEncoder(Encoder3D):
    """MONAI's 3D ResNet without its classification head."""

    _layers = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        from monai.networks.nets import ResNet

        if cfg.depth not in self._layers:
            raise ConfigError(f"resnet depth must be one of {sorted(self._layers)}, got {cfg.depth}")
        net = ResNet(block="basic", layers=self._layers[cfg.depth], block_inplanes=list(cfg.widths),
                     spatial_dims=3, n_input_channels=cfg.in_channels, conv1_t_stride=2,
                     feed_forward=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_dim = cfg.widths[-1]
        self.min_multiple = 16
        self._channels = [cfg.widths[0]] + list(cfg.widths)   # the stem has widths[0]
        self._strides = [4, 4, 8, 16, 32]       # stem: stride-2 conv + max pool; layer1 keeps it

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        out = [self.stem(x)]
        for layer in self.layers:
            out.append(layer(out[-1]))
        return out

    @property
    def feature_channels(self) -> list[int]:
        return list(self._channels)

    @property
    def feature_strides(self) -> list[int]:
        return list(self._strides)


class ConvEncoder(Encoder3D):
    """A small stack of stride-2 3D conv-norm-act blocks (MONAI ``Convolution``)."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        from monai.networks.blocks import Convolution

        blocks = []
        c_in = cfg.in_channels
        for i, c in enumerate(cfg.channels):
            blocks.append(Convolution(3, c_in, c, strides=2, kernel_size=3, norm=cfg.norm,
                                      act="GELU"))
            # The last conv is left un-normalised: an instance norm there would fix every
            # channel's spatial mean, leaving the pooled vector almost no information.
            last = i == len(cfg.channels) - 1
            blocks.append(Convolution(3, c, c, strides=1, kernel_size=3, norm=cfg.norm,
                                      act="GELU", conv_only=last))
            c_in = c
        self.net = nn.Sequential(*blocks)
        self.out_dim = cfg.channels[-1]
        self.min_multiple = 2 ** len(cfg.channels)
        self._channels = list(cfg.channels)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        out, h = [], x
        for i in range(0, len(self.net), 2):            # (down-sampling conv, conv) per stage
            h = self.net[i + 1](self.net[i](h))
            out.append(h)
        return out

    @property
    def feature_channels(self) -> list[int]:
        return list(self._channels)

    @property
    def feature_strides(self) -> list[int]:
        return [2 ** (i + 1) for i in range(len(self._channels))]


ENCODERS: dict[str, Callable[[EncoderConfig], Encoder3D]] = {
    "swin": SwinEncoder,
    "resnet": ResNetEncoder,
    "cnn": ConvEncoder,
}


def register_encoder(name: str, factory: Callable[[EncoderConfig], Encoder3D]) -> None:
    """Add an encoder to the registry under ``name`` (its config's ``name`` tag)."""
    ENCODERS[name] = factory


def build_encoder(cfg: EncoderConfig) -> Encoder3D:
    """Build the encoder registered under ``cfg.name``."""
    try:
        factory = ENCODERS[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown encoder {cfg.name!r}; registered: {', '.join(ENCODERS)}") from None
    return factory(cfg)


def tiny_encoder_config(name: str = "swin") -> EncoderConfig:
    """A few-thousand-parameter config of ``name`` for tests (32^3 inputs)."""
    if name == "swin":
        return SwinConfig(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                          window_size=2, out_stage=3)
    if name == "resnet":
        return ResNetConfig(depth=10, widths=(8, 8, 16, 16))
    if name == "cnn":
        return CNNConfig(channels=(8, 16))
    raise ValueError(f"no tiny config for {name!r}")


__all__ = ["EncoderConfig", "SwinConfig", "ResNetConfig", "CNNConfig", "EncoderOutput",
           "Encoder3D", "build_encoder", "register_encoder", "tiny_encoder_config", "ENCODERS"]
