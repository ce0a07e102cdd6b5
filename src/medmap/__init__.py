"""medmap: 3D medical vision-language models for multi-sequence MRI (MedMAP, MG-3D).

The Python API (:mod:`medmap.api`), imported on first use so ``import medmap`` stays light:

    >>> import medmap
    >>> model = medmap.load("medmap-demo/runs/liver/finetune")     # doctest: +SKIP
    >>> model.predict({"T2WI": "T2WI.nii.gz"}, masks={"lesion": "lesion.nii.gz"})  # doctest: +SKIP
"""

from medmap._lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["load", "Classifier", "Pretrained", "Prediction", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {"load": "medmap.api", "Classifier": "medmap.api",
                                               "Pretrained": "medmap.api",
                                               "Prediction": "medmap.api"}, globals())
