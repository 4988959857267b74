"""Named protocols: folds disjoint by section / patient (asserted), genes chosen on training folds
only, absent data refused."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from mupd.data.spatial import her2st_sections
from mupd.errors import MupdError
from mupd.impute import protocols, runner


def test_loso_and_lopo_folds_are_disjoint_on_the_real_sections(sample_data):
    sections = her2st_sections(sample_data / "her2st")
    assert sections == ["B4", "C2", "C3", "C4", "C5"]
    spots = [s for s in sections for _ in range(7)]
    loso = protocols.make_folds(protocols.get("her2st-loso"), spots)
    assert [f.test_groups for f in loso] == [[s] for s in sections]
    for f in loso:
        assert not set(np.asarray(spots)[f.train]) & set(np.asarray(spots)[f.test])
        assert len(f.train) + len(f.test) == len(spots)
    lopo = protocols.make_folds(protocols.get("her2st-lopo"), spots)
    assert [(f.train_groups, f.test_groups) for f in lopo] == [(["C"], ["B"]), (["B"], ["C"])]
    assert set(np.asarray(spots)[lopo[1].test]) == {"C2", "C3", "C4", "C5"}


def test_a_leaking_fold_is_refused():
    spots = np.array(["B4", "C2", "C3", "C3"])
    leak = protocols.Fold("bad", np.array([0, 2]), np.array([3]), ["B4", "C3"], ["C3"])
    with pytest.raises(MupdError, match="sections \\['C3'\\] on both sides"):
        protocols.assert_disjoint(leak, spots, protocols.get("her2st-loso"))
    patient_leak = protocols.Fold("bad", np.array([0, 1]), np.array([2, 3]), ["C"], ["C"])
    with pytest.raises(MupdError, match="patients \\['C'\\]"):
        protocols.assert_disjoint(patient_leak, spots, protocols.get("her2st-lopo"))


def test_gene_panel_comes_from_the_training_fold_only(mini_table):
    protocol = protocols.get("her2st-lopo", n_genes=40)
    fold = protocols.make_folds(protocol, mini_table.section)[0]  # test = patient B (B4)
    timings = {"mean": 0.0}
    out = runner.run_fold(protocol, mini_table, fold, ["mean"], runner.RunSettings(), {}, timings)
    expected = protocols.select_genes(mini_table.counts[fold.train], mini_table.genes, 40)
    assert out["mean"]["per_gene"]["genes"] == expected
    # Changing the held-out counts changes nothing about which genes are scored
    altered = dataclasses.replace(mini_table, counts=mini_table.counts.copy())
    altered.counts[fold.test] = altered.counts[fold.test][:, ::-1]
    again = runner.run_fold(protocol, altered, fold, ["mean"], runner.RunSettings(), {}, timings)
    assert again["mean"]["per_gene"]["genes"] == expected
    assert expected != protocols.select_genes(mini_table.counts, mini_table.genes, 40)  # all-spot selection differs


def test_mean_rule_picks_highest_mean_genes(mini_table):
    x = protocols.normalised_panel(mini_table.counts, mini_table.genes, mini_table.genes)
    top = protocols.select_genes(mini_table.counts, mini_table.genes, 5, "mean")
    assert set(top) == {mini_table.genes[k] for k in np.argsort(-x.mean(0))[:5]}


def test_protocol_needing_absent_sections_is_refused(mini_her2st):
    with pytest.raises(MupdError, match=r"lacks \['C2', 'C3', 'C4'\].*refused"):
        protocols.check_data(protocols.get("her2st-loso"), mini_her2st)
    with pytest.raises(MupdError, match="no ST-cnts"):
        protocols.check_data(protocols.get("her2st-lopo"), mini_her2st / "ST-imgs")
    with pytest.raises(MupdError, match="unknown imputation protocol"):
        protocols.get("her2st-random-split")


def test_resolved_protocol_is_json_ready():
    d = protocols.get("her2st-lopo", n_genes=250).to_dict()
    assert d["unit"] == "patient" and d["sections"] == ["B4", "C2", "C3", "C4", "C5"]
    assert "training folds only" in d["gene_selection"] and "never pooled" in d["summary"]
