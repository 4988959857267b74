"""The HEST-Benchmark read-out done right: standardise -> PCA -> ridge, with alpha chosen by
cross-validation *grouped by section inside the training fold* (random K-fold over neighbouring
spots of one section would leak and pick too little shrinkage). The chosen alpha is reported."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import require

ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


@dataclass
class RidgeReadout:
    n_components: int = 64
    alphas: tuple = ALPHAS
    alpha: float | None = None
    cv: str = ""
    params: dict = field(default_factory=dict)  # mean, scale, components, coef, intercept (numpy)

    def fit(self, x: np.ndarray, y: np.ndarray, groups) -> "RidgeReadout":
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import GridSearchCV, GroupKFold, KFold

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale < 1e-8, 1.0, scale)
        k = int(min(self.n_components, x.shape[0] - 1, x.shape[1]))
        pca = PCA(k, random_state=0).fit((x - mean) / scale)
        z = pca.transform((x - mean) / scale)
        groups = np.asarray(groups)
        n_groups = len(set(groups.tolist()))
        if n_groups >= 2:
            splitter, self.cv = GroupKFold(min(n_groups, 5)), f"GroupKFold({min(n_groups, 5)}) by section"
        else:  # one training section: contiguous (unshuffled) blocks of spots, the least leaky option left
            splitter, self.cv = KFold(5, shuffle=False), "KFold(5) contiguous blocks (one training section)"
        search = GridSearchCV(Ridge(), {"alpha": list(self.alphas)}, cv=splitter, scoring="neg_mean_squared_error")
        search.fit(z, y, groups=groups if n_groups >= 2 else None)
        self.alpha = float(search.best_params_["alpha"])
        ridge = Ridge(alpha=self.alpha).fit(z, y)
        self.params = {"mean": mean, "scale": scale, "components": pca.components_, "pca_mean": pca.mean_,
                       "coef": ridge.coef_, "intercept": np.atleast_1d(ridge.intercept_)}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        require(np.asarray(x).shape[1] == p["mean"].shape[0],
                f"features have width {np.asarray(x).shape[1]} but the read-out was fitted on width {p['mean'].shape[0]}")
        z = ((np.asarray(x, np.float64) - p["mean"]) / p["scale"] - p["pca_mean"]) @ p["components"].T
        return z @ p["coef"].T + p["intercept"]

    def describe(self) -> dict:
        return {"n_components": int(self.params["components"].shape[0]), "alpha": self.alpha,
                "alpha_grid": [min(self.alphas), max(self.alphas), len(self.alphas)], "alpha_cv": self.cv}
