"""Augment: write a synthetic labelled dataset for few-shot training.

Input: a class-per-folder dataset (``FOLDER/<class>/*.png``, as ``mupd.data.patch_folder`` reads).
Output: the same layout under ``OUT`` with ``per_class`` generated images per class, each PNG
carrying its generation parameters, plus ``OUT/manifest.csv`` (``id, path, label, class_name,
caption, reference, seed, sampler, steps, guidance, conditions, model``) that
``mupd.data.read_manifest`` reads back.

Each class is conditioned by what the model offers: its label caption (``labels`` in
model_index.json, keyed by class folder name), a real image of that class through the
reference-image stream (cycled over the class's images), and optionally SDEdit from a real image
(``strength`` < 1). Re-running the same command resumes: images already listed are kept.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ..errors import MupdError, require
from .output import append_manifest, manifest_row

CLASS_SEED_STRIDE = 100_003  # seeds of different classes never collide for per_class < stride


def augment(pipe, data: str | os.PathLike, out: str | os.PathLike, *, per_class: int, steps: int = 20,
            sampler: str = "heun", guidance: float | dict | None = None, scales: dict | None = None, seed: int = 0,
            strength: float | None = None, use_reference: bool = True, batch_size: int = 8,
            limit_real: int | None = None, progress: bool = True) -> Path:
    """Generate ``per_class`` images for every class folder of ``data`` into ``out``; returns the manifest path."""
    from ..data import patch_folder

    require(isinstance(per_class, int) and per_class >= 1, f"--per-class must be a positive integer, got {per_class!r}")
    require(per_class < CLASS_SEED_STRIDE, f"--per-class must be below {CLASS_SEED_STRIDE}")
    records = patch_folder(data, limit_per_class=limit_real)
    classes: dict[str, list] = {}
    for r in records:
        require(r.label is not None, f"{data} is not a class-per-folder dataset (found images directly in it); "
                                     "put each class's images in a sub-folder named after the class")
        classes.setdefault(str(r.meta.get("class_name", r.label)), []).append(r)
    has_stream = "image" in pipe.modalities and "image" in pipe.encoders
    out = Path(out)
    manifest = out / "manifest.csv"
    done = _done_ids(manifest)
    announced: set = set()  # image sizes whose resizing was announced
    bar = tqdm(total=per_class * len(classes), desc="augment", unit="img", disable=not progress)
    for c_index, (class_name, real) in enumerate(sorted(classes.items())):
        caption = pipe.labels.get(class_name)
        use_ref = bool(use_reference and has_stream)
        if caption is None and not use_ref and strength is None:
            raise MupdError(
                f"class '{class_name}': the model has no label caption for it (labels: {sorted(pipe.labels)}) and "
                "no reference-image stream, so nothing would tie the images to the class; use a model trained "
                "with these labels, or pass --strength (SDEdit from the real images)")
        todo = [k for k in range(per_class) if f"{class_name}/syn-{k:05d}" not in done]
        bar.update(per_class - len(todo))
        for start in range(0, len(todo), batch_size):
            ks = todo[start : start + batch_size]
            rows = _generate_chunk(pipe, out, class_name, caption, real, ks, c_index * CLASS_SEED_STRIDE + seed,
                                   steps=steps, sampler=sampler, guidance=guidance, scales=scales,
                                   strength=strength, use_ref=use_ref, announced=announced)
            append_manifest(manifest, rows)  # after every chunk: an interrupted run resumes here
            bar.update(len(ks))
    bar.close()
    return manifest


def _generate_chunk(pipe, out: Path, class_name: str, caption, real: list, ks: list[int], class_seed: int, *,
                    steps, sampler, guidance, scales, strength, use_ref, announced: set) -> list[dict]:
    fitted = [_fit(pipe, real[k % len(real)].image, announced) for k in ks]
    refs = [image for image, _ in fitted]
    ref_names = [str(real[k % len(real)].image) for k in ks]
    label = real[0].label
    text_guidance = guidance
    if isinstance(guidance, (int, float)) and caption is None and not use_ref:
        text_guidance = None  # SDEdit alone has no condition to guide towards
    outputs = []
    if strength is not None:
        for k, ref in zip(ks, refs):
            outputs.append(pipe.vary(ref, strength=strength, n=1, use_reference=use_ref, text=caption, steps=steps,
                                     sampler=sampler, guidance=text_guidance, scales=scales, seed=class_seed + k))
    elif ks == list(range(ks[0], ks[0] + len(ks))):  # consecutive: one batched call, image i gets seed + i
        batch = pipe.generate(text=caption, image=refs if use_ref else None, n=len(ks), steps=steps, sampler=sampler,
                              guidance=text_guidance, scales=scales, seed=class_seed + ks[0], batch_size=len(ks))
        outputs = [_single(batch, i) for i in range(len(ks))]
    else:
        for k, ref in zip(ks, refs):
            outputs.append(pipe.generate(text=caption, image=ref if use_ref else None, n=1, steps=steps,
                                         sampler=sampler, guidance=text_guidance, scales=scales, seed=class_seed + k))
    rows = []
    for k, ref_name, (_, resized_from), result in zip(ks, ref_names, fitted, outputs):
        rel = f"{class_name}/syn-{k:05d}.png"
        if use_ref or strength is not None:  # the real image shaped this one: say which, and how it was fitted
            record = result.parameters[0]["mupd:conditions"].setdefault("image", {})
            record.update({"source": ref_name, **({"resized_from": resized_from} if resized_from else {})})
        result.save(out / class_name, prefix="syn", start=k, manifest=False)
        row = manifest_row(rel, result.parameters[0], id=rel[:-4], path=rel, label=label, class_name=class_name,
                           caption=caption or "", reference=ref_name if (use_ref or strength is not None) else "")
        rows.append(row)
    return rows


def _single(output, i: int):
    from .output import PipelineOutput

    return PipelineOutput([output.images[i]], [output.parameters[i]], output.notes)


def _fit(pipe, image, announced: set) -> tuple[Image.Image, list | None]:
    """A real image as the model's tile (the pipelines' size rule, ``inputs.fit_to_tile``); the first
    image of each new size is announced once."""
    from .inputs import fit_to_tile, load_image

    fitted, note, resized_from = fit_to_tile(load_image(image, what="real image"), pipe.image_size,
                                             what="augment: real images like " + str(image))
    if note and tuple(resized_from) not in announced:
        announced.add(tuple(resized_from))
        tqdm.write(note, file=sys.stderr)
    return fitted, resized_from


def _done_ids(manifest: Path) -> set[str]:
    if not manifest.exists():
        return set()
    with open(manifest, newline="", encoding="utf-8") as fh:
        return {row["id"] for row in csv.DictReader(fh) if (manifest.parent / row["path"]).exists()}
