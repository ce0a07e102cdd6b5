"""MG-3D multi-grained 3D vision-language pre-training (intra-patient MIM / MLM / SFR / CML,
inter-patient SSM / DFA) on MedMAP's modality experts.

* :mod:`medmap.mg3d.fusion` - the paper's cross-modal attention and fusion layers
* :mod:`medmap.mg3d.losses` - the six losses as pure functions, :class:`MG3DLossConfig`
* :mod:`medmap.mg3d.model` - :class:`MG3DConfig`, :class:`MG3DModel`
* :mod:`medmap.train.mg3d` - the Lightning module and ``pretrain_mg3d``

Example:
    >>> from medmap.mg3d import MG3DConfig, MG3DModel, MG3DLossConfig     # doctest: +SKIP
"""

from medmap.mg3d.fusion import AttentionPool, CrossModalAttention, FusionLayer, FusionStack
from medmap.mg3d.losses import MG3DLossConfig
from medmap.mg3d.model import MG3DConfig, MG3DModel

__all__ = ["AttentionPool", "CrossModalAttention", "FusionLayer", "FusionStack",
           "MG3DConfig", "MG3DLossConfig", "MG3DModel"]
