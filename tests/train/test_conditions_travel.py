"""Condition encoders travel with the model: a tiny run of the real Trainer on real her2st spots
(crops + spot expression through a GeneVocabulary and the SurvPath pathway tokens), saved, reloaded
with ``Pipeline.from_pretrained``: the RNA tokens and the generated pixels are identical to the
in-memory model's, from an ``.h5ad`` row, a gene TSV and a ``{gene: value}`` dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mupd.bundle import Bundle, load_bundle, weights_sha256
from mupd.checkpoint import read_json
from mupd.errors import MupdError
from mupd.train import TrainConfig
from mupd.train.loop import Trainer

GENES = 64


@pytest.fixture(scope="module")
def her2st(sample_data, tmp_path_factory):
    """12 C5 spots: 32 px crops, raw counts and a 64-gene vocabulary fitted on them."""
    from mupd.data.expression import GeneVocabulary
    from mupd.data.spatial import load_her2st

    table = load_her2st(sample_data / "her2st", ["C5"], crop=224, size=32, max_spots=12)
    vocabulary = GeneVocabulary.fit(table.counts, table.genes, "log1p_cpm", top_k=GENES)
    return table, vocabulary


@pytest.fixture(scope="module")
def trained(her2st, sample_data, tmp_path_factory):
    """A 4-step RNA-conditioned run of the real Trainer on 'mupd data encode'-style shards."""
    from mupd.data.shards import write_shards
    from mupd.encoders.vae import LatentAutoencoder
    from mupd.train.data import encode_pixels

    table, vocabulary = her2st
    root = tmp_path_factory.mktemp("travel")
    vae_dir = root / "vae"
    LatentAutoencoder.tiny(block_out_channels=(16, 32), norm_num_groups=8, seed=0).save_pretrained(vae_dir)
    vae = LatentAutoencoder.from_pretrained(vae_dir)
    pixels = torch.from_numpy(table.images).permute(0, 3, 1, 2).contiguous()
    latents = encode_pixels(vae, pixels, progress=False)
    rna = torch.from_numpy(np.asarray(vocabulary.transform(table.counts, table.genes)[0], np.float32))
    samples = [{"id": i, "latent": latents[k], "rna_values": rna[k]} for k, i in enumerate(table.ids)]
    write_shards(root / "shards", samples)
    vocabulary.save(root / "shards" / "gene_vocabulary.json")
    cfg = TrainConfig.from_dict({
        "preset": "tiny", "output": str(root / "run"), "seed": 3, "progress": False, "deterministic": True,
        "data": {"source": "shards", "path": str(root / "shards"), "image_size": 32},
        "vae": {"path": str(vae_dir)}, "total_images": 32,  # step 3 is the first with a gradient for the tokens
        "conditions": {"rna": {"name": "pathway-tokens",
                               "kwargs": {"width": 16, "pathways": str(sample_data / "genesets" / "combine_signatures.csv")}}},
    })
    trainer = Trainer(cfg, device="cpu")
    trainer.fit()
    return trainer, root


def _in_memory_pipeline(trainer):
    from mupd.pipelines import Pipeline

    index = read_json(trainer.checkpoint_dir / "model_index.json")
    bundle = Bundle(trainer.checkpoint_dir, index, trainer.ema.module, trainer.vae, None, trainer.inference_encoders(),
                    trainer.data.vocabulary, None)
    return Pipeline(bundle, device="cpu")


def test_rna_tokens_and_pixels_survive_save_and_load(trained, her2st, tmp_path):
    import anndata
    import pandas as pd

    from mupd.pipelines import Pipeline

    trainer, _ = trained
    table, vocabulary = her2st
    folder = trainer.checkpoint_dir
    index = read_json(folder / "model_index.json")
    entry = index["encoders"]["rna"]
    encoder = trainer.inference_encoders()["rna"]  # the EMA of the learned token embeddings
    assert entry["path"] == "encoders/rna" and entry["weights_sha256"] == weights_sha256(encoder)
    assert entry["licence"]["licence"].startswith("Apache-2.0") and entry["licence"]["name"] == "pathway-tokens"
    assert index["licence"]["commercial"] == entry["licence"]["commercial"]
    assert (folder / "gene_vocabulary.json").exists()

    # the condition tokens of the reloaded encoder are bit-identical
    bundle = load_bundle(folder)
    x = torch.from_numpy(np.asarray(vocabulary.transform(table.counts[:4], table.genes)[0], np.float32))
    ours, mask = encoder.encode(x)
    theirs, _ = bundle.encoders["rna"].encode(x)
    assert mask.all() and ours.abs().mean() > 0.1
    assert torch.equal(ours, theirs)

    # one spot's raw counts as an .h5ad row, a gene TSV and a {gene: value} dict
    k = 5
    counts = table.counts[k]
    h5ad = tmp_path / "spots.h5ad"
    anndata.AnnData(X=table.counts[:6], obs=pd.DataFrame(index=table.ids[:6]),
                    var=pd.DataFrame(index=table.genes)).write_h5ad(h5ad)
    tsv = tmp_path / "spot.tsv"
    pd.DataFrame({"gene": table.genes, "value": counts}).to_csv(tsv, sep="\t", index=False)
    as_dict = {g: float(v) for g, v in zip(table.genes, counts)}

    memory, loaded = _in_memory_pipeline(trainer), Pipeline.from_pretrained(folder, device="cpu")
    reference = None
    for rna in (f"{h5ad}:{table.ids[k]}", str(tsv), as_dict):
        a = np.asarray(memory(rna=rna, n=2, steps=2, seed=11, output_type="np").images)
        b = np.asarray(loaded(rna=rna, n=2, steps=2, seed=11, output_type="np").images)
        np.testing.assert_array_equal(a, b)
        reference = a if reference is None else reference
        np.testing.assert_array_equal(a, reference)  # the three forms carry the same profile
    # and the RNA reaches the trained model (four steps open the zero-initialised gates only slightly)
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(4, *trainer.latent_shape, generator=g)
    with torch.no_grad():
        v_rna = loaded.model(latent, 0.5, {"rna": (theirs, mask)})
        v_none = loaded.model(latent, 0.5, {})
    assert (v_rna - v_none).abs().max() > 0


def test_changed_encoder_weights_are_refused(trained, tmp_path):
    """A referenced or stored encoder whose weights changed since training is an error."""
    import shutil

    from mupd.checkpoint import load_tensors, save_tensors

    trainer, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(trainer.checkpoint_dir, copy)
    state = load_tensors(copy / "encoders" / "rna" / "model.safetensors")
    state["tokens.weight"] = state["tokens.weight"] + 1e-3
    save_tensors(copy / "encoders" / "rna" / "model.safetensors", state)
    with pytest.raises(MupdError, match="other weights than the model was trained with"):
        load_bundle(copy)


def test_pretrained_encoder_is_referenced_by_checksum(tmp_path):
    """A frozen encoder loaded from a weights folder is referenced (not copied) with its checksum;
    swapping the files at that path is refused at load."""
    from mupd.bundle import save_bundle
    from mupd.encoders import registry
    from mupd.encoders.vae import LatentAutoencoder
    from mupd.models.mupd import MuPD

    genes = [f"G{i}" for i in range(8)]
    weights = tmp_path / "rna_enc"
    registry.build("rna", "gene-tokens", genes=genes, width=8).save_pretrained(weights)
    encoder = registry.build("rna", "gene-tokens", path=weights)
    model = MuPD.from_preset("tiny", modalities=("rna",), cond_dims={"rna": 8}, input_size=8)
    vae = LatentAutoencoder.tiny(block_out_channels=(16, 32), norm_num_groups=8, seed=0)
    save_bundle(tmp_path / "p", model=model, vae=vae, encoders={"rna": ("gene-tokens", {}, weights, encoder)})
    entry = read_json(tmp_path / "p" / "model_index.json")["encoders"]["rna"]
    assert entry["reference"] == str(weights.resolve()) and entry["path"] is None
    assert not (tmp_path / "p" / "encoders").exists()
    assert torch.equal(load_bundle(tmp_path / "p").encoders["rna"].tokens.weight, encoder.tokens.weight)
    registry.build("rna", "gene-tokens", genes=genes, width=8).save_pretrained(weights)  # other random weights
    with pytest.raises(MupdError, match="other weights"):
        load_bundle(tmp_path / "p")


def test_resume_restores_encoder_weights(trained):
    """A resumed run conditions on the checkpoint's encoder, whatever the fresh build drew."""
    trainer, _ = trained
    cfg = trainer.cfg.with_overrides(["seed=4"])  # another seed would draw another random encoder
    cfg.output = trainer.cfg.output
    resumed = Trainer(cfg, device="cpu", resume=True)
    assert torch.equal(resumed.encoders["rna"].tokens.weight, trainer.encoders["rna"].tokens.weight)
    assert torch.equal(resumed.inference_encoders()["rna"].tokens.weight, trainer.inference_encoders()["rna"].tokens.weight)


def test_rna_token_embeddings_are_learned(trained):
    """The RNA encoder built fresh learns with the generator (DESIGN: learned embedding per gene set)."""
    from mupd.encoders import registry

    trainer, _ = trained
    encoder = trainer.encoders["rna"]
    assert encoder.tokens.weight.requires_grad and "encoders.rna.tokens.weight" in dict(trainer.trainable_parameters())
    with torch.random.fork_rng(devices=[]):  # the same draw as the Trainer's build
        torch.manual_seed(int(trainer.cfg.seed) + 7_331)
        initial = registry.build("rna", "pathway-tokens", genes=encoder.genes, width=16, pathways=encoder.pathways)
    assert not torch.equal(initial.tokens.weight, encoder.tokens.weight)  # the optimiser moved it


def test_folder_without_encoder_weights_is_refused(tmp_path):
    """A folder naming a random-weight encoder without its weights (what 'mupd train' wrote before)
    cannot rebuild the training tokens: an error, not a different random encoder."""
    from mupd.bundle import save_bundle
    from mupd.encoders.vae import LatentAutoencoder
    from mupd.models.mupd import MuPD

    model = MuPD.from_preset("tiny", modalities=("rna",), cond_dims={"rna": 8}, input_size=8)
    vae = LatentAutoencoder.tiny(block_out_channels=(16, 32), norm_num_groups=8, seed=0)
    save_bundle(tmp_path / "p", model=model, vae=vae, encoders={"rna": ("gene-tokens", {"genes": ["A", "B"], "width": 8}, None)})
    with pytest.raises(MupdError, match="holds none"):
        load_bundle(tmp_path / "p")


def test_learned_rna_encoder_resumes_bit_exact(trained, tmp_path):
    """16 images, stop, resume to 32 == 32 images in one go (raw weights, EMA and Adam moments of
    the RNA token embeddings are part of the checkpoint)."""
    trainer, _ = trained
    cfg = trainer.cfg.with_overrides([f"output={tmp_path / 'split'}", "total_images=16"])
    Trainer(cfg, device="cpu").fit()
    resumed = Trainer(cfg.with_overrides(["total_images=32"]), device="cpu", resume=True)
    resumed.fit()
    for ours, theirs in ((resumed.encoders, trainer.encoders), (resumed.inference_encoders(), trainer.inference_encoders())):
        assert torch.equal(ours["rna"].tokens.weight, theirs["rna"].tokens.weight)
        assert torch.equal(ours["rna"].tokens.bias, theirs["rna"].tokens.bias)
