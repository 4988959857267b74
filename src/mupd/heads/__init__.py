"""Downstream heads on frozen inputs: survival (discrete-time NLL, Cox) and classification, with
patient-level k-fold cross-validation, lifelines/scikit-learn metrics and an HTML report.

Inputs: expression tables (genes, SurvPath pathway scores, clinical covariates) and bags of patch
features (ABMIL / TransMIL from ``mupd.align.mil``). See ``mupd heads train --help``.
"""
