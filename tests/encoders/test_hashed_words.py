from __future__ import annotations

import numpy as np
import pytest
import torch

from mupd.encoders import registry
from mupd.encoders.hashed import word_vector, words
from mupd.errors import MupdError


def test_word_vector_is_pinned():
    # Pinned values (computed once, on another day and process): identical across processes and
    # machines by construction; a change here silently changes every model trained with hashed-words.
    expected = [-1.3791425, 1.0171731, 0.3416584, 0.0407076, -0.8068982, 2.0396748, -0.8983587, 0.6158235]
    np.testing.assert_allclose(word_vector("tumour", 8), expected, rtol=1e-6)
    word_vector.cache_clear()
    np.testing.assert_allclose(word_vector("tumour", 8), expected, rtol=1e-6)


def test_vectors_are_roughly_standard_normal_and_distinct():
    table = np.stack([word_vector(f"w{i}", 64) for i in range(200)])
    assert abs(table.mean()) < 0.05 and abs(table.std() - 1) < 0.05
    cos = (table @ table.T) / np.outer(np.linalg.norm(table, axis=1), np.linalg.norm(table, axis=1))
    assert np.abs(cos[~np.eye(200, dtype=bool)]).max() < 0.6


def test_encode_masks_padding_and_lowercases(sample_data):
    import pandas as pd

    captions = pd.read_csv(sample_data / "text" / "patchgastric_captions.csv")["text"].tolist()[:4]
    enc = registry.build("text", "hashed-words", width=32, max_length=12)
    assert enc.width == 32 and enc.modality == "text"
    tokens, mask = enc.encode(captions + ["Tumour, TUMOUR.", ""])
    assert tokens.shape == (6, 12, 32) and mask.dtype == torch.bool
    assert mask[:4].all()  # real captions are longer than 12 words: truncated, no padding
    assert mask[4].tolist() == [True, True] + [False] * 10
    assert torch.equal(tokens[4, 0], tokens[4, 1])  # case and punctuation ignored
    assert (tokens[~mask] == 0).all() and not mask[5].any()
    torch.testing.assert_close(tokens[4, 0], torch.from_numpy(word_vector("tumour", 32).copy()))
    pooled = enc.embed(["Tumour, TUMOUR.", ""])
    torch.testing.assert_close(pooled[0], tokens[4, 0])
    assert (pooled[1] == 0).all()
    assert words("Ki-67 high, HER2+") == ["ki", "67", "high", "her2"]


def test_positions_and_unpadded_mode():
    enc = registry.build("text", "hashed-words", width=16, max_length=8, positions=True, pad_to_max=False)
    tokens, mask = enc.encode(["tumour tumour", "a"])
    assert tokens.shape == (2, 2, 16) and mask.tolist() == [[True, True], [True, False]]
    assert not torch.equal(tokens[0, 0], tokens[0, 1])  # positions break the tie
    assert (tokens[1, 1] == 0).all()


def test_bad_input_raises_mupd_error():
    enc = registry.build("text", "hashed-words")
    with pytest.raises(MupdError, match="list of strings"):
        enc.encode("one string")
    with pytest.raises(MupdError, match="item 1"):
        enc.encode(["ok", 3])
    with pytest.raises(MupdError, match="width"):
        registry.build("text", "hashed-words", width=0)
    with pytest.raises(MupdError, match="unknown text encoder"):
        registry.build("text", "no-such-encoder")
    with pytest.raises(MupdError, match="unknown modality"):
        registry.build("audio", "hashed-words")


def test_registry_lists_entries_with_licences():
    entries = {e.name: e for e in registry.all_entries()}
    assert entries["text/hashed-words"].commercial == "yes"
    assert entries["text/hashed-words"].meta["modality"] == "text"
