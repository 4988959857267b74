"""The timm image adapter (and the named foundation-model entries) on tiny random ViTs saved offline."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from mupd.encoders import registry
from mupd.errors import MupdError


def _pcam(sample_data, n=3):
    files = sorted((sample_data / "pcam" / "valid" / "1").glob("*.jpg"))[:n]
    return [Image.open(f).convert("RGB") for f in files]


def _save_tiny_vit(folder, **extra):
    args = dict(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2, **extra)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return model.eval()


def test_timm_vit_from_local_folder_matches_timm(sample_data, tmp_path):
    reference = _save_tiny_vit(tmp_path / "vit")
    enc = registry.build("image", "timm", path=tmp_path / "vit")
    assert enc.width == 24 and enc.modality == "image"
    images = _pcam(sample_data)  # 96 px PCam patches, resized to the model's 32 px
    tokens, mask = enc.encode(images)
    assert tokens.shape == (3, 1 + 4, 24) and mask.all()
    x = enc.preprocess(images)
    with torch.no_grad():
        torch.testing.assert_close(tokens, reference.forward_features(x))
        torch.testing.assert_close(enc.embed(images), reference(x))
    # uint8 tensor and numpy batches give the same result as PIL
    array = np.stack([np.asarray(i) for i in images])
    torch.testing.assert_close(enc.embed(torch.from_numpy(array).permute(0, 3, 1, 2)), enc.embed(array))


def test_named_entries_load_from_folder(tmp_path):
    _save_tiny_vit(tmp_path / "uni", init_values=1e-5, dynamic_img_size=True)
    uni = registry.build("image", "uni", path=tmp_path / "uni")
    assert uni.embed(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 24)
    import timm.layers

    args = dict(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2, reg_tokens=4, class_token=True,
                no_embed_class=True)
    v2 = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, mlp_layer=timm.layers.SwiGLUPacked,
                           act_layer=torch.nn.SiLU, **args)
    # Like the real Virchow2 card: config.json names a plain ViT; the SwiGLU MLP is a load-time argument.
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(plain, str(tmp_path / "v2"), model_args=args, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in v2.state_dict().items()}, str(tmp_path / "v2" / "model.safetensors"))
    enc = registry.build("image", "virchow2", path=tmp_path / "v2")
    tokens, _ = enc.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert tokens.shape == (1, 1 + 4 + 4, 24)
    assert enc.embed(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 48)  # concat(CLS, mean patch)


def test_licences_recorded():
    entries = {e.name: e for e in registry.all_entries()}
    for name in ("image/uni", "image/virchow2", "image/uni2-h"):
        assert entries[name].licence == "CC-BY-NC-ND-4.0" and entries[name].commercial == "no"
    assert entries["image/h-optimus-0"].licence == "Apache-2.0" and entries["image/h-optimus-0"].commercial == "yes"
    # weights under a permissive licence but derived from research-use data: "check", never "yes"
    for name in ("image/plip", "text/plip", "image/prov-gigapath", "rna/pathway-tokens"):
        assert entries[name].commercial == "check" and "unverified" not in entries[name].licence
    assert "GPL-3.0" in entries["rna/pathway-tokens"].base
    for item in entries.values():
        assert item.commercial in ("yes", "no", "check") and item.base


def test_licence_metadata_for_pipeline_folders():
    meta = registry.licence_metadata({"text": "hashed-words", "rna": "pathway-tokens"})
    assert meta["components"]["rna"]["base"].startswith("built-in SurvPath gene sets: GPL-3.0")
    assert meta["commercial"] == "check"  # the strictest component
    assert registry.licence_metadata({"text": "hashed-words"})["commercial"] == "yes"
    assert registry.licence_metadata({"image": "uni", "text": "hashed-words"})["commercial"] == "no"
    table = registry.licence_table()
    assert "| `rna/pathway-tokens` | Apache-2.0 (mupd code) | built-in SurvPath gene sets: GPL-3.0" in table
    with pytest.raises(MupdError, match="unknown image encoder"):
        registry.licence_metadata({"image": "nope"})


@pytest.mark.parametrize("spelling", ["hub:", "hf-hub:"])
def test_hub_only_when_named_and_missing_paths_are_errors(tmp_path, spelling):
    from mupd.encoders.base import resolve_weights

    assert resolve_weights(f"{spelling}MahmoodLab/UNI", what="x") == "hf-hub:MahmoodLab/UNI"
    with pytest.raises(MupdError, match="ORG/NAME"):
        resolve_weights(f"{spelling}not-a-repo-id", what="x")
    # a missing folder that looks like a hub id is an error naming it, with the explicit spelling to use
    with pytest.raises(MupdError, match=r"weights folder MahmoodLab/UNI does not exist.*hub:MahmoodLab/UNI"):
        registry.build("image", "uni", path="MahmoodLab/UNI")
    with pytest.raises(MupdError, match=f"weights folder {tmp_path / 'runs'} does not exist"):
        registry.build("text", "plip", path=tmp_path / "runs")


def test_bad_inputs_and_missing_weights(tmp_path):
    with pytest.raises(MupdError, match="hub:MahmoodLab/uni"):
        registry.build("image", "uni")
    folder = tmp_path / "vit"
    _save_tiny_vit(folder)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:100])
    with pytest.raises(MupdError, match="could not load"):
        registry.build("image", "timm", path=folder)
    _save_tiny_vit(folder)
    enc = registry.build("image", "timm", path=folder)
    with pytest.raises(MupdError, match=r"\(B, 3, H, W\)"):
        enc.encode(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(MupdError, match="NaN"):
        enc.encode(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(MupdError, match="differ in size"):
        enc.encode([Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))])


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("name,package", [("musk", "musk"), ("conch", "conch")])
def test_packaged_models_name_their_package(modality, name, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(MupdError, match=f"needs the package '{package}'"):
        registry.build(modality, name, path="hf-hub:any")
    entry = registry.entry(modality, name)
    assert entry.licence == "CC-BY-NC-ND-4.0" and entry.commercial == "no"
