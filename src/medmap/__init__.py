"""medmap: 3D medical vision-language models for multi-sequence MRI (MedMAP, MG-3D)."""

__version__ = "0.1.0"
