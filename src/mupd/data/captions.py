"""Captions: joined from CSV/JSON/JSONL by id, or templated from labels.

Real pathology image-caption pairs are not available offline; the PCam template turns its binary
label into a sentence so text conditioning can be trained and tested on real patches.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from ..errors import MupdError, require
from .records import Record

log = logging.getLogger("mupd.data")

TEMPLATES: dict[str, dict] = {
    "pcam": {
        0: "lymph node tissue without metastatic tumour",
        1: "lymph node tissue with metastatic tumour",
    },
}


def apply_template(records: Sequence[Record], template: str | dict) -> None:
    """Set ``caption`` from ``label`` via a preset name or ``{label: text}``; unknown labels are an error."""
    if isinstance(template, str):
        require(template in TEMPLATES, f"unknown caption template '{template}'; known: {sorted(TEMPLATES)}")
        template = TEMPLATES[template]
    table = {str(k): v for k, v in template.items()}
    bad = [r.id for r in records if str(r.label) not in table]
    if bad:
        raise MupdError(f"caption template has no text for the labels of {len(bad)} records, first {bad[:3]} "
                        f"(template labels: {sorted(table)})")
    for r in records:
        r.caption = table[str(r.label)]


def read_captions(path: str | os.PathLike, *, id_field: str = "id", text_field: str | None = None) -> dict[str, str]:
    """``{id: caption}`` from a CSV/TSV (columns ``id`` + ``caption``/``text``), a JSONL file (one
    object per line) or a JSON file (a list of objects or ARCH's ``{key: {...}}`` mapping)."""
    path = Path(path)
    require(path.exists(), f"caption file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pandas as pd

            rows = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str).to_dict("records")
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else [dict(v, **({id_field: k} if id_field not in v else {})) for k, v in data.items()]
        else:
            raise MupdError(f"caption file {path}: unsupported suffix '{suffix}' (use .csv, .tsv, .jsonl or .json)")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MupdError(f"caption file {path} is damaged ({exc})") from None
    require(len(rows) > 0, f"caption file {path} is empty")
    if text_field is None:
        text_field = next((f for f in ("caption", "text") if f in rows[0]), None)
    require(text_field is not None and text_field in rows[0] and id_field in rows[0],
            f"caption file {path}: needs fields '{id_field}' and 'caption' or 'text' (has {sorted(rows[0])[:8]})")
    out: dict[str, str] = {}
    dups = []
    for row in rows:
        key = str(row[id_field])
        if key in out:
            dups.append(key)
        out[key] = str(row[text_field]).strip()
    if dups:
        raise MupdError(f"caption file {path}: {len(dups)} duplicate ids, first {dups[:3]}")
    return out


def join_captions(records: Sequence[Record], captions: dict[str, str] | str | os.PathLike, *,
                  key: str = "id", require_all: bool = False) -> dict:
    """Attach captions by record id (or by ``meta[key]``). Returns ``{"matched", "unmatched",
    "first_unmatched"}``; unmatched records keep no caption and are reported, never silently."""
    if not isinstance(captions, dict):
        captions = read_captions(captions)
    unmatched = []
    for r in records:
        k = r.id if key == "id" else str(r.meta.get(key))
        if k in captions:
            r.caption = captions[k]
        else:
            unmatched.append(r.id)
    report = {"matched": len(records) - len(unmatched), "unmatched": len(unmatched), "first_unmatched": unmatched[:5]}
    if unmatched:
        msg = f"{len(unmatched)} of {len(records)} records have no caption, first {unmatched[:5]}"
        if require_all:
            raise MupdError(msg + "; add them to the caption file or drop require_all")
        log.warning(msg)
    return report
