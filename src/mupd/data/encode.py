"""The encode job behind ``mupd data encode``: a dataset -> shards of latents + condition tensors.

Plan: records are loaded in a deterministic order and cut into shards of ``shard_size``; shard k
holds records ``[k*S, (k+1)*S)``. Rank r of W processes writes shards r, r+W, ... (under
``torchrun`` the gloo/NCCL process group is joined automatically; without it, 1 process does all).
A finished shard whose planned ids match is kept on re-run, so a killed job resumes where it
stopped; ``index.json`` is written last, once every shard exists. Re-runs are deterministic
(posterior means, fixed batches per shard): byte-identical on the same machine with the same
torch thread count (CPU kernels may round differently with another thread count). See
``mupd.data.shards`` for the format.

Sources: a manifest (.csv/.tsv/.parquet; ``source_path`` column -> paired), a class-per-folder
patch folder, a folder with ``manifest.csv`` (e.g. ``mupd data tile`` output) or a DeepLIIF folder
(paired). Paired records also get ``source_latent`` (``source_vae``, default the same VAE).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MupdError, require
from .images import to_tensor
from .records import Record, check_unique_ids
from .shards import ids_digest, shard_finished, write_index, write_shard

log = logging.getLogger("mupd.data")


@dataclass
class EncodeJob:
    source: str
    vae: str
    out: str
    shard_size: int = 256
    size: int | None = None  # resize images to size x size before encoding
    batch_size: int = 32
    source_vae: str | None = None
    text_encoder: str | None = None
    image_encoder: str | None = None
    align_encoder: str | None = None  # image encoder whose tokens become alignment targets (align_patches/align_cls)
    encoder_kwargs: dict = field(default_factory=dict)  # {modality: {kwarg: value}}
    vocabulary: str | None = None  # GeneVocabulary JSON: records' expression -> rna_values
    caption_template: str | None = None
    captions: str | None = None  # caption file joined by id
    limit: int | None = None  # at most N per class (unlabelled: N in all), a seeded sample (records.sample_per_class)
    on_error: str = "raise"  # "raise" | "skip" (unreadable images are skipped and reported)
    deepliif_split: str = "train"
    deepliif_target: str = "ki67_mif"


def load_source(job: EncodeJob) -> list[Record]:
    from .captions import apply_template, join_captions
    from .folders import patch_folder
    from .records import read_manifest, sample_per_class
    from .stains import deepliif_records, is_deepliif_folder

    src = Path(job.source)
    require(src.exists(), f"data source {src} does not exist")
    if src.is_file():
        records = read_manifest(src)
    elif (src / "manifest.csv").exists():
        records = read_manifest(src / "manifest.csv")
    elif is_deepliif_folder(src):
        records = deepliif_records(src, job.deepliif_split, target=job.deepliif_target)
    else:
        records = patch_folder(src)
    records = sample_per_class(records, job.limit)
    check_unique_ids(records, str(src))
    if job.caption_template:
        apply_template(records, job.caption_template)
    if job.captions:
        join_captions(records, job.captions)
    return records


def _world() -> tuple[int, int, bool]:
    """(rank, world, created): join the torchrun process group when the environment asks for one."""
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), created
    return 0, 1, created


def encode_dataset(job: EncodeJob, *, progress: bool = True, rank: int | None = None,
                   world_size: int | None = None, records: list[Record] | None = None, vae=None) -> Path:
    """Run (or resume) the job; returns the shard folder. ``rank``/``world_size`` override the
    process group (each rank then writes its shards; the last to finish writes ``index.json``).
    ``records`` / ``vae`` (a loaded ``LatentAutoencoder``) replace reading ``job.source`` / ``job.vae``
    (``mupd train`` on a patch folder encodes it once this way)."""
    from tqdm.auto import tqdm

    from ..encoders.vae import LatentAutoencoder
    from ..settings import settings

    require(job.shard_size > 0 and job.batch_size > 0, "shard_size and batch_size must be positive")
    require(job.on_error in ("raise", "skip"), f"on_error must be 'raise' or 'skip', not {job.on_error!r}")
    auto_rank, auto_world, created = _world()
    rank = auto_rank if rank is None else rank
    world = auto_world if world_size is None else world_size
    out = Path(job.out)
    try:
        records = load_source(job) if records is None else records
        n_shards = math.ceil(len(records) / job.shard_size)
        vocabulary = _load_vocabulary(job, records)  # checked before any model loads
        device = settings.torch_device() if vae is None else vae.device
        vae = LatentAutoencoder.from_pretrained(job.vae, device=device) if vae is None else vae
        paired = any(r.source_image is not None for r in records)
        source_vae = (LatentAutoencoder.from_pretrained(job.source_vae, device=device) if job.source_vae else vae) if paired else None
        encoders = _build_encoders(job, device)
        mine = [k for k in range(rank, n_shards, world)]
        plans = {k: records[k * job.shard_size:(k + 1) * job.shard_size] for k in mine}
        signature = _signature(job, vae, source_vae)
        todo = [k for k in mine if not shard_finished(out, k, [r.id for r in plans[k]], signature)]
        bar = tqdm(total=sum(len(plans[k]) for k in mine), initial=sum(len(plans[k]) for k in mine if k not in todo),
                   desc=f"encode rank {rank}/{world}", unit="img", disable=not progress)
        for k in todo:
            tensors, meta = encode_records(plans[k], vae, source_vae, encoders, vocabulary, job, signature)
            write_shard(out, k, tensors, meta)
            bar.update(len(plans[k]))
        bar.close()
        meta = _index_meta(job, vae, source_vae, encoders, vocabulary, len(records))
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and world_size is None:
            dist.barrier()
            if rank == 0:
                _finish(out, n_shards, meta, vocabulary)
            dist.barrier()
        elif all(shard_finished(out, k) for k in range(n_shards)):
            _finish(out, n_shards, meta, vocabulary)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    return out


def _load_vocabulary(job: EncodeJob, records: list[Record]):
    """The gene vocabulary, once every record is known to carry expression over genes it shares."""
    if not job.vocabulary:
        return None
    from .expression import GeneVocabulary

    vocabulary = GeneVocabulary.load(job.vocabulary)
    without = [r.id for r in records if r.expression is None]
    require(not without, f"{len(without)} records carry no expression but --vocabulary was given, first {without[:3]}")
    known = set(vocabulary.genes)
    for gene_list in {tuple(r.genes) for r in records}:
        shared = len(known.intersection(gene_list))
        require(shared > 0, f"the records' genes (e.g. {list(gene_list[:3])}) share none of the vocabulary's "
                f"{len(known)} genes ({job.vocabulary}); fit the vocabulary on this data (`mupd data vocab`) or map gene ids")
    return vocabulary


def _signature(job: EncodeJob, vae, source_vae) -> str:
    """What shapes a shard besides its ids; a finished shard made under another signature is redone."""
    import json

    keys = ("vae", "source_vae", "size", "text_encoder", "image_encoder", "align_encoder", "encoder_kwargs", "vocabulary",
            "caption_template", "captions", "on_error", "deepliif_target")
    fields = {k: getattr(job, k) for k in keys}
    fields["stats"] = [vae.latent_mean.tolist(), vae.latent_std.tolist(),
                       None if source_vae is None else source_vae.latent_std.tolist()]
    return json.dumps(fields, sort_keys=True, default=str)


def _finish(out: Path, n_shards: int, meta: dict, vocabulary) -> None:
    if vocabulary is not None:
        vocabulary.save(out / "gene_vocabulary.json")
    if "align" in meta["encoders"]:
        meta["align_cls_stats"] = _cls_stats(out, n_shards)
    write_index(out, n_shards, meta)


def _cls_stats(out: Path, n_shards: int) -> dict:
    """Mean and std of the raw alignment CLS over the whole set (the trainer standardises with them,
    as ``mupd.train.alignment.encoder_targets`` does in memory), one shard at a time."""
    from safetensors import safe_open

    total, square, n = 0.0, 0.0, 0
    for k in range(n_shards):
        with safe_open(str(out / f"shard-{k:05d}.safetensors"), framework="pt") as f:
            cls = f.get_tensor("align_cls").double()
        total, square, n = total + cls.sum(0), square + (cls * cls).sum(0), n + len(cls)
    mean = total / n
    std = ((square - n * mean * mean) / max(n - 1, 1)).clamp_min(0).sqrt().clamp_min(1e-6)
    return {"mean": mean.tolist(), "std": std.tolist()}


def _build_encoders(job: EncodeJob, device) -> dict:
    wanted = {m: n for m, n in (("text", job.text_encoder), ("image", job.image_encoder), ("align", job.align_encoder)) if n}
    if not wanted:
        return {}
    try:
        from ..encoders import registry
    except ImportError as exc:
        raise MupdError(f"condition encoders need mupd.encoders.registry ({exc})") from None
    return {m: (n, registry.build("image" if m == "align" else m, n, **job.encoder_kwargs.get(m, {})).to(device).eval())
            for m, n in wanted.items()}


@torch.no_grad()
def encode_records(records: list[Record], vae, source_vae, encoders: dict, vocabulary, job: EncodeJob, signature: str = ""):
    """One shard's tensors + JSON meta. Unreadable images raise, or are skipped and listed."""
    planned = [r.id for r in records]
    skipped: dict[str, list[str]] = {}
    keep: list[Record] = []
    latents, sources, pixels = [], [], []
    for start in range(0, len(records), job.batch_size):
        images, srcs = [], []
        for r in records[start:start + job.batch_size]:
            try:  # one at a time, so a bad file names itself and can be skipped
                image = to_tensor([r.image], job.size, what=f"record {r.id}")
                src = to_tensor([r.source_image], job.size, what=f"record {r.id} source") if source_vae is not None else None
            except MupdError as exc:
                if job.on_error == "raise":
                    raise
                skipped.setdefault("unreadable image", []).append(r.id)
                log.warning("skipping %s: %s", r.id, exc)
                continue
            keep.append(r)
            images.append(image)
            srcs.append(src)
        if not images:
            continue
        images = torch.cat(images)
        latents.append(vae.encode(images).cpu())
        if "image" in encoders or "align" in encoders:
            pixels.append(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        if source_vae is not None:
            sources.append(source_vae.encode(torch.cat(srcs)).cpu())
    require(bool(keep), f"every record of the shard starting at {planned[0]!r} was skipped ({skipped})")
    tensors = {"latent": torch.cat(latents)}
    if source_vae is not None:
        tensors["source_latent"] = torch.cat(sources)
    labels = [r.label for r in keep]
    numeric = [lab if isinstance(lab, int) else -1 for lab in labels]
    tensors["label"] = torch.tensor(numeric, dtype=torch.long)
    captions = [r.caption for r in keep]
    if "text" in encoders:
        tensors["text"], tensors["text_mask"] = _encode_batched(encoders["text"][1], [c or "" for c in captions], job.batch_size)
    if "image" in encoders:
        tensors["image"], tensors["image_mask"] = _encode_batched(encoders["image"][1], torch.cat(pixels), job.batch_size)
    if "align" in encoders:  # raw CLS here; its dataset-wide stats go into index.json (_cls_stats)
        tensors["align_patches"], tensors["align_cls"] = _align_targets(encoders["align"][1], torch.cat(pixels), job.batch_size)
    meta = {"ids": [r.id for r in keep], "labels": labels, "captions": captions, "planned": ids_digest(planned, signature),
            "skipped": skipped, "gene_vocabulary": vocabulary.version if vocabulary is not None else None}
    if vocabulary is not None:
        values, reports = [], []
        for r in keep:
            require(r.expression is not None, f"record {r.id} has no expression but a gene vocabulary was given")
            v, report = vocabulary.transform(r.expression, r.genes, sample_ids=[r.id])
            values.append(v[0])
            reports.append(len(report.missing))
        tensors["rna_values"] = torch.from_numpy(np.stack(values))
        meta["missing_genes_per_sample_max"] = int(max(reports))
    meta["tensors"] = {k: list(v.shape[1:]) for k, v in tensors.items()}
    return tensors, meta


def _align_targets(encoder, pixels: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch tokens (N, g*g, E), CLS (N, E)) of the frozen alignment encoder, stored as float16."""
    from ..train.alignment import split_tokens

    patches, cls = [], []
    for start in range(0, len(pixels), batch_size):
        tokens, _ = encoder.encode(pixels[start:start + batch_size].to(getattr(encoder, "device", "cpu")))
        p, c = split_tokens(tokens.float().cpu())
        patches.append(p.half())
        cls.append(c.half())
    return torch.cat(patches), torch.cat(cls)


def _encode_batched(encoder, batch, batch_size: int):
    tokens, masks = [], []
    for start in range(0, len(batch), batch_size):
        t, m = encoder.encode(batch[start:start + batch_size])
        tokens.append(t.float().cpu())
        masks.append(m.bool().cpu())
    length = max(t.shape[1] for t in tokens)
    tokens = [torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in tokens]
    masks = [torch.nn.functional.pad(m, (0, length - m.shape[1])) for m in masks]
    return torch.cat(tokens), torch.cat(masks)


def _index_meta(job: EncodeJob, vae, source_vae, encoders: dict, vocabulary, n_records: int) -> dict:
    return {
        "job": {k: v for k, v in asdict(job).items() if k != "out"},
        "n_records": n_records,
        "vae": {"path": str(job.vae), **vae.stats_dict()},
        "source_vae": None if source_vae is None else {"path": str(job.source_vae or job.vae), **source_vae.stats_dict()},
        "encoders": {m: {"name": n, "width": int(getattr(e, "width", 0)), "kwargs": job.encoder_kwargs.get(m, {})}
                     for m, (n, e) in encoders.items()},
        "gene_vocabulary": vocabulary.version if vocabulary is not None else None,
        "image_size": job.size,
    }
