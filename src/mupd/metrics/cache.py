"""Features of an image set cached by content, so several generated sets compare against one real set
while its features are extracted once.

The key hashes every image's resolved path, byte size and modification time (nanoseconds), the
extractor's identity (``FeatureExtractor.describe()``: name, weights file, preprocessing) and the
pixel preprocessing (resize rule). Any changed, added or removed file, another extractor or another
resize gives another key. Entries are ``.npz`` files (no pickles) under ``<cache>/features/``,
where ``<cache>`` is ``$MUPD_CACHE`` or ``~/.cache/mupd`` (``mupd.settings.cache_dir``); delete the
folder to clear it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import MupdError


def content_key(paths, extractor_identity: dict, preprocessing: dict) -> str:
    """A hex digest of the files' (path, size, mtime) and how their features were made."""
    h = hashlib.sha256()
    h.update(json.dumps([extractor_identity, preprocessing], sort_keys=True, default=str).encode())
    for path in paths:
        resolved = Path(path).resolve()
        try:
            stat = resolved.stat()
        except OSError as exc:
            raise MupdError(f"{path} cannot be read ({exc.strerror}); fix the image set") from None
        h.update(f"\0{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def features_cache_dir() -> Path:
    from ..settings import cache_dir

    return cache_dir() / "features"


def load_cached(key: str, folder: Path | None = None) -> np.ndarray | None:
    """The cached features for ``key``, or None (absent or unreadable: it is then re-made)."""
    path = (folder or features_cache_dir()) / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return np.asarray(data["features"])
    except (OSError, ValueError, KeyError):
        return None


def store_cached(key: str, features: np.ndarray, folder: Path | None = None) -> Path:
    """Write atomically (a temporary name, then rename), so a killed run leaves no half entry."""
    folder = folder or features_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.npz"
    tmp = folder / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, features=features, key=np.array(key))
    os.replace(tmp, path)
    return path
