"""The miniature her2st fixtures of tests/impute (one definition), for models the integrations load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_impute_conftest", Path(__file__).parents[1] / "impute" / "conftest.py")
_impute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_impute)

mini_her2st = _impute.mini_her2st
mini_table = _impute.mini_table
