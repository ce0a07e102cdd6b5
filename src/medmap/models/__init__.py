"""Models: 3D encoders, modality experts, MedMAP and MG-3D, and the safetensors hub.

Importing this package registers the built-in model types with :mod:`medmap.models.hub`
(each model class registers itself where it is defined), so ``from_pretrained`` can rebuild
any folder ``save_pretrained`` wrote.
"""

from medmap.models import medmap as _medmap  # noqa: F401  (registers medmap_clip / _classifier)
from medmap.models import mg3d as _mg3d  # noqa: F401  (registers mg3d)
