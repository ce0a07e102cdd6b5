"""Classical baselines scored on the same split and metrics as the deep models
(:mod:`medmap.baselines.radiomics`: IBSI radiomics + logistic regression)."""
