"""Histology -> expression ("imputation"): spot-level regressors and retrieval, slide-level attention-MIL,
and the named evaluation protocols whose numbers mean exactly what they say (``protocols``).

    from mupd.impute import protocols, runner
    result = runner.run_protocol(protocols.get("her2st-loso"), methods=["mean", "pixels", "aligned-ridge"])
"""
