"""Gene-set collections as pair references (analysis.io.references.read_gmt / load_gene_set_pairs) on the real
MSigDB Hallmark and Reactome GMT files: the pairs are those an independent count over the sets gives (itertools
over every set, restricted to the genes asked for, giant sets left out), and a malformed file is named by line."""
from __future__ import annotations

from collections import Counter
from itertools import combinations

import pytest

from analysis.errors import InputError
from analysis.io.references import load_gene_set_pairs, load_pair_reference, read_gmt
from tests.conftest import shared_path

HALLMARK = "genesets/h.all.v2025.1.Hs.symbols.gmt"


def test_hallmark_pairs_among_a_gene_list_match_an_independent_count():
    path = shared_path(HALLMARK)
    sets = read_gmt(path)
    assert len(sets) == 50 and len(sets["HALLMARK_ADIPOGENESIS"]) == 200          # PROVENANCE: 50 sets, 32-200
    genes = {"MYC", "CDK4", "NPM1", "HSPD1", "E2F1", "TP53", "CDKN1A", "MDM2", "BAX", "APOE", "CD36", "FABP4"}
    expected = Counter(pair for members in sets.values()
                       for pair in combinations(sorted(set(members) & genes), 2))
    ref = load_gene_set_pairs(path, genes)
    got = {(a, b): int(n) for a, b, n in zip(ref.edges["tf"], ref.edges["target"], ref.edges["confidence"])}
    assert got == dict(expected) and ref.params["undirected"] and ref.params["n_sets"] == 50
    small = load_gene_set_pairs(path, genes, max_set_size=100)                  # sets over 100 genes left out
    kept = [m for m in sets.values() if len(set(m)) <= 100]
    assert len(small.edges) == len({p for m in kept for p in combinations(sorted(set(m) & genes), 2)})
    assert load_pair_reference(f"gmt:{path}", genes=genes).edges.equals(ref.edges)


def test_reactome_reads_with_its_non_gene_members_and_a_malformed_file_is_named(tmp_path):
    sets = read_gmt(shared_path("genesets/ReactomePathways.gmt"))
    assert len(sets) == 2694 and sets["2-LTR circle formation"][:2] == ["BANF1", "HMGA1"]
    (tmp_path / "bad.gmt").write_text("SET_A\tdesc\tA\tB\nSET_B only-a-name\n")
    with pytest.raises(InputError, match="bad.gmt line 2 is not a gene set"):
        read_gmt(tmp_path / "bad.gmt")
    with pytest.raises(InputError, match="no two panel genes share a set"):
        load_gene_set_pairs(shared_path(HALLMARK), {"NOT_A_GENE", "ALSO_NOT"})
