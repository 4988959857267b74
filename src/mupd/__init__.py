"""mupd: multimodal generative pathology (MuPD re-implementation).

``from mupd import MuPD`` gives the diffusion transformer; submodules hold the rest
(``mupd.flow``, ``mupd.data``, ``mupd.encoders``, ``mupd.train``, ``mupd.pipelines``,
``mupd.align``, ``mupd.metrics``). Heavy imports are deferred until used.
"""

__version__ = "0.1.0"

from .errors import MupdError  # noqa: E402
from .settings import settings  # noqa: E402

__all__ = ["MuPD", "Pipeline", "MupdError", "settings", "__version__"]


def __getattr__(name):
    if name == "MuPD":
        from .models.mupd import MuPD

        return MuPD
    if name == "Pipeline":
        from .pipelines import Pipeline

        return Pipeline
    raise AttributeError(f"module 'mupd' has no attribute {name!r}")
