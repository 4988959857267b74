"""Downstream heads on frozen inputs: survival (discrete-time NLL, Cox) and classification, with
patient-level k-fold cross-validation, lifelines/scikit-learn metrics and an HTML report.

Inputs: expression tables (genes, SurvPath pathway scores, clinical covariates) and bags of patch
features (ABMIL / TransMIL from ``mupd.align.mil``). Fitted heads are saved per fold (``heads.saved``:
resume, and ``heads.apply`` applies them to a new cohort). See ``mupd heads train --help``.
"""
