"""Input contract readers: real data loads; every bad input is refused with a message naming file and fix."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse

from momil.errors import InputError
from momil.io.contract import (
    InstanceSource,
    LabelMatrix,
    align_labels,
    read_assays,
    read_associations,
    read_compounds,
    read_labels,
    read_load_data,
    read_wells,
)
from momil.io.tables import normalise_well, well_row_col

from conftest import real_data, resource, tiny_instances, tiny_wells


# ------------------------------------------------------------------------------------------------- wells
@pytest.mark.parametrize(
    "raw, expected", [("A1", "A01"), ("a01", "A01"), ("P24", "P24"), ("B 3", "B03"), ("AF48", "AF48"), ("A001", "A01")]
)
def test_normalise_well(raw, expected):
    assert normalise_well(raw) == expected


@pytest.mark.parametrize("raw", ["1A", "", "A", "A0", "r01c01"])
def test_normalise_well_rejects(raw):
    assert normalise_well(raw) is None


def test_well_row_col():
    assert well_row_col("A01") == (0, 0)
    assert well_row_col("P24") == (15, 23)
    assert well_row_col("AF48") == (31, 47)


def test_read_wells_normalises_and_defaults(tmp_path):
    frame = tiny_wells(batch=False)
    frame["Metadata_Well"] = frame["Metadata_Well"].str.replace("A0", "A", regex=False)
    frame.loc[3, "Metadata_ControlType"] = None
    frame.to_csv(tmp_path / "wells.csv", index=False)
    wells = read_wells(tmp_path / "wells.csv")
    assert wells["Metadata_Well"].str.match(r"^[A-P]\d\d$").all()
    assert wells.loc[3, "Metadata_ControlType"] == "trt"
    assert (wells["Metadata_Batch"] == "batch0").all()
    assert set(wells["Metadata_ControlType"]) == {"negcon", "trt"}


def test_numeric_plate_barcodes_are_strings(tmp_path):
    frame = tiny_wells(plates=(24279, 24280))
    frame.to_csv(tmp_path / "wells.csv", index=False)
    wells = read_wells(tmp_path / "wells.csv")
    assert set(wells["Metadata_Plate"]) == {"24279", "24280"}


def test_duplicate_wells_rejected(tmp_path):
    frame = tiny_wells()
    frame.loc[1, "Metadata_Well"] = "A1"  # same as A01
    frame.to_parquet(tmp_path / "wells.parquet")
    with pytest.raises(InputError, match=r"wells.parquet.*not unique.*P1/A01.*rows 2, 3"):
        read_wells(tmp_path / "wells.parquet")


def test_missing_required_column(tmp_path):
    tiny_wells().drop(columns="Metadata_Compound").to_parquet(tmp_path / "wells.parquet")
    with pytest.raises(InputError, match=r"wells.parquet: missing required column\(s\) Metadata_Compound"):
        read_wells(tmp_path / "wells.parquet")


def test_bad_well_and_control_values(tmp_path):
    frame = tiny_wells()
    frame.loc[4, "Metadata_Well"] = "X"
    frame.to_parquet(tmp_path / "w1.parquet")
    with pytest.raises(InputError, match=r"not well positions \('X'\) at row 6"):
        read_wells(tmp_path / "w1.parquet")
    frame = tiny_wells()
    frame.loc[2, "Metadata_ControlType"] = "vehicle"
    frame.to_parquet(tmp_path / "w2.parquet")
    with pytest.raises(InputError, match=r"unknown values \['vehicle'\].*use negcon, poscon, trt"):
        read_wells(tmp_path / "w2.parquet")


def test_empty_compound_rejected(tmp_path):
    frame = tiny_wells()
    frame.loc[5, "Metadata_Compound"] = ""
    frame.to_parquet(tmp_path / "wells.parquet")
    with pytest.raises(InputError, match=r"Metadata_Compound is empty at row 7"):
        read_wells(tmp_path / "wells.parquet")


def test_not_a_table(tmp_path):
    (tmp_path / "wells.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read the table"):
        read_wells(tmp_path / "wells.parquet")
    with pytest.raises(InputError, match="file not found"):
        read_wells(tmp_path / "absent.parquet")


# --------------------------------------------------------------------------------------------- instances
def test_instance_source_streams_in_chunks(tmp_path):
    wells = tiny_wells()
    frame = tiny_instances(wells, per_well=5, dim=3)
    frame.to_parquet(tmp_path / "inst.parquet", row_group_size=7)
    source = InstanceSource(tmp_path / "inst.parquet", chunk_rows=4)
    chunks = list(source.iter_chunks())
    assert max(len(c.features) for c in chunks) <= 4
    stacked = np.concatenate([c.features for c in chunks])
    np.testing.assert_allclose(stacked, frame[["feat0", "feat1", "feat2"]].to_numpy(np.float32))
    assert source.feature_names == ["feat0", "feat1", "feat2"]
    assert source.meta_names == ["Metadata_Site"]
    assert [c.first_row for c in chunks][:3] == [0, 4, 8]


def test_instance_csv(tmp_path):
    wells = tiny_wells()
    frame = tiny_instances(wells, dim=2)
    frame["Metadata_Well"] = frame["Metadata_Well"].str.replace("A0", "A", regex=False)
    frame.to_csv(tmp_path / "inst.csv", index=False)
    source = InstanceSource(tmp_path / "inst.csv", chunk_rows=5)
    chunks = list(source.iter_chunks())
    assert sum(len(c.features) for c in chunks) == len(frame)
    assert set(np.concatenate([c.wells for c in chunks])) == set(wells["Metadata_Well"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features_named(tmp_path, bad):
    frame = tiny_instances(tiny_wells())
    frame.loc[7, "feat2"] = bad
    frame.to_parquet(tmp_path / "inst.parquet")
    with pytest.raises(
        InputError,
        match=r"inst.parquet: 1 instance\(s\).*NaN or infinite.*data row 8, column "
        r"'feat2'.*drop or impute",
    ):
        list(InstanceSource(tmp_path / "inst.parquet").iter_chunks())


def test_string_feature_column_rejected(tmp_path):
    frame = tiny_instances(tiny_wells())
    frame["Compound"] = "x"
    frame.to_parquet(tmp_path / "inst.parquet")
    with pytest.raises(
        InputError, match=r"feature column 'Compound' has type (large_)?string.*prefix metadata columns"
    ):
        InstanceSource(tmp_path / "inst.parquet")


def test_mismatched_feature_widths_between_parts(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    wells = tiny_wells()
    tiny_instances(wells, dim=4).to_parquet(folder / "part-0.parquet")
    tiny_instances(wells, dim=5).to_parquet(folder / "part-1.parquet")
    with pytest.raises(InputError, match=r"part-1.parquet: its 5 feature columns differ from the 4"):
        InstanceSource(folder)


def test_instances_missing_well_column(tmp_path):
    tiny_instances(tiny_wells()).drop(columns="Metadata_Well").to_parquet(tmp_path / "inst.parquet")
    with pytest.raises(InputError, match="missing required column.*Metadata_Well"):
        InstanceSource(tmp_path / "inst.parquet")


# ------------------------------------------------------------------------------------------------ labels
def test_real_hti_cnn_matrix_loads():
    path = resource("hti-cnn-labels", "label-matrix.mtx.gz")
    with pytest.warns(UserWarning, match="columns share 5 assay identifiers"):
        labels = read_labels(path)
    assert labels.shape == (10574, 209)
    assert labels.n_labels == 55542
    assert int(labels.values.sum()) == 19274
    assert len(set(labels.assays)) == 209  # repeated ids kept apart
    assert abs(labels.density - 0.0251) < 1e-3
    assert labels.compounds[0].endswith("-N")  # InChIKeys


def _write_mtx(tmp_path, dense, compounds, assays):
    scipy.io.mmwrite(str(tmp_path / "m.mtx"), scipy.sparse.coo_matrix(dense))
    pd.DataFrame({"INDEX": range(len(compounds)), "ID": compounds}).to_csv(tmp_path / "rows.csv", index=False)
    pd.DataFrame({"ASSAY": assays}).to_csv(tmp_path / "columns.csv", index=False)


def test_mtx_long_and_wide_agree(tmp_path):
    dense = np.array([[1, 0, -1], [0, -1, 0], [1, 1, 0]])
    _write_mtx(tmp_path, dense, ["a", "b", "c"], ["t1", "t2", "t3"])
    from_mtx = read_labels(tmp_path / "m.mtx")
    long = pd.DataFrame(
        {
            "Metadata_Compound": ["a", "a", "b", "c", "c"],
            "assay": ["t1", "t3", "t2", "t1", "t2"],
            "label": [1, 0, 0, 1, 1],
        }
    )
    long.to_parquet(tmp_path / "long.parquet")
    from_long = read_labels(tmp_path / "long.parquet")
    wide = pd.DataFrame(
        {"Metadata_Compound": ["a", "b", "c"], "t1": [1, None, 1], "t2": [None, 0, 1], "t3": [0, None, None]}
    )
    wide.to_csv(tmp_path / "wide.csv", index=False)
    from_wide = read_labels(tmp_path / "wide.csv")
    expected = np.array([[1, np.nan, 0], [np.nan, 0, np.nan], [1, 1, np.nan]])
    for labels in (from_mtx, from_long, from_wide):
        np.testing.assert_array_equal(labels.to_dense(), expected)
        assert list(labels.assays) == ["t1", "t2", "t3"]


def test_mtx_index_length_mismatch(tmp_path):
    _write_mtx(tmp_path, np.array([[1, -1], [1, 1]]), ["a", "b"], ["t1", "t2"])
    pd.DataFrame({"ID": ["a"]}).to_csv(tmp_path / "rows.csv", index=False)
    with pytest.raises(InputError, match=r"rows.csv: has 1 rows but the matrix has 2"):
        read_labels(tmp_path / "m.mtx")


def test_conflicting_duplicate_labels(tmp_path):
    pd.DataFrame({"Metadata_Compound": ["a", "a", "b"], "assay": ["t1", "t1", "t1"], "label": [1, 0, 1]}).to_parquet(
        tmp_path / "labels.parquet"
    )
    with pytest.raises(InputError, match=r"labels.parquet: 1 conflicting duplicate.*'a' in assay 't1'"):
        read_labels(tmp_path / "labels.parquet")


def test_identical_duplicate_labels_are_merged(tmp_path):
    pd.DataFrame({"Metadata_Compound": ["a", "a", "b"], "assay": ["t1", "t1", "t1"], "label": [1, 1, 0]}).to_parquet(
        tmp_path / "labels.parquet"
    )
    assert read_labels(tmp_path / "labels.parquet").n_labels == 2


def test_bad_label_values(tmp_path):
    pd.DataFrame({"Metadata_Compound": ["a", "b"], "assay": ["t1", "t1"], "label": [1, 2]}).to_parquet(
        tmp_path / "labels.parquet"
    )
    with pytest.raises(InputError, match=r"values \['2'\] that are not labels at row 3.*1 for active"):
        read_labels(tmp_path / "labels.parquet")


def test_labels_missing_column(tmp_path):
    pd.DataFrame({"Metadata_Compound": ["a"], "assay": ["t1"]}).to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(InputError, match=r"missing required column\(s\) label"):
        read_labels(tmp_path / "labels.parquet")


def test_labels_of_unknown_compounds_reported_or_refused():
    labels = LabelMatrix.from_long(
        pd.DataFrame({"Metadata_Compound": ["C1", "C2", "ZZZ"], "assay": ["t"] * 3, "label": [1, 0, 1]})
    )
    wells = tiny_wells()
    with pytest.warns(UserWarning, match=r"1 labelled compound\(s\) have no wells \(e.g. ZZZ\)"):
        kept, unknown = align_labels(labels, wells, "labels.parquet")
    assert unknown == ["ZZZ"] and kept.n_labels == 2 and list(kept.compounds) == ["C1", "C2"]
    with pytest.raises(InputError, match=r"labels.parquet: 1 labelled compound\(s\) have no wells"):
        align_labels(labels, wells, "labels.parquet", strict=True)
    nothing = LabelMatrix.from_long(pd.DataFrame({"Metadata_Compound": ["X"], "assay": ["t"], "label": [1]}))
    with pytest.raises(InputError, match="no labelled compound matches"):
        with pytest.warns(UserWarning):
            align_labels(nothing, wells, "labels.parquet")


# ------------------------------------------------------------------------------------- compounds, assays
def test_compounds(tmp_path):
    pd.DataFrame({"Metadata_Compound": ["a", "b", "b"], "Metadata_SMILES": ["CCO", "c1ccccc1", "c1ccccc1"]}).to_parquet(
        tmp_path / "c.parquet"
    )
    frame = read_compounds(tmp_path / "c.parquet")
    assert list(frame["Metadata_Compound"]) == ["a", "b"]
    assert frame["Metadata_InChIKey"].isna().all()
    pd.DataFrame({"Metadata_Compound": ["a", "a"], "Metadata_SMILES": ["CCO", "CCN"]}).to_parquet(
        tmp_path / "d.parquet"
    )
    with pytest.raises(InputError, match="different structures"):
        read_compounds(tmp_path / "d.parquet")
    pd.DataFrame({"Metadata_Compound": ["a"]}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(InputError, match="neither Metadata_SMILES nor Metadata_InChIKey"):
        read_compounds(tmp_path / "e.parquet")


def test_assays(tmp_path):
    pd.DataFrame(
        {"assay": ["t1", "t2"], "role": ["primary", "Secondary"], "target_genes": ["EGFR|ERBB2", None]}
    ).to_parquet(tmp_path / "a.parquet")
    with pytest.warns(UserWarning, match="not listed"):
        frame = read_assays(tmp_path / "a.parquet", label_assays=["t1", "t2", "t3"])
    assert list(frame["role"]) == ["primary", "secondary", "primary"]
    pd.DataFrame({"assay": ["t1"], "role": ["main"]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(InputError, match="use primary or secondary"):
        read_assays(tmp_path / "b.parquet")


# ---------------------------------------------------------------------------------------- associations
def test_real_network_loads_as_gene_table():
    table = read_associations(resource("ppi", "irefindex_pcsf_edges.csv.gz"))
    assert {"gene_a", "gene_b", "score"} <= set(table.columns)
    assert table["score"].between(0, 1).all()
    assert len(table) > 150_000
    assert (table["gene_a"] <= table["gene_b"]).all()  # one row per unordered pair


def test_string_files(tmp_path):
    with gzip.open(tmp_path / "9606.protein.links.v12.0.txt.gz", "wt") as handle:
        handle.write(
            "protein1 protein2 combined_score\n9606.P1 9606.P2 900\n9606.P2 9606.P1 900\n9606.P1 9606.P3 150\n"
        )
    with gzip.open(tmp_path / "9606.protein.info.v12.0.txt.gz", "wt") as handle:
        handle.write(
            "#string_protein_id\tpreferred_name\tprotein_size\tannotation\n9606.P1\tEGFR\t1\tx\n"
            "9606.P2\tERBB2\t1\tx\n9606.P3\tTP53\t1\tx\n"
        )
    table = read_associations(tmp_path / "9606.protein.links.v12.0.txt.gz")
    assert len(table) == 2
    row = table[(table["gene_a"] == "EGFR") & (table["gene_b"] == "ERBB2")]
    assert float(row["score"].iloc[0]) == pytest.approx(0.9)


def test_association_scores_out_of_range(tmp_path):
    pd.DataFrame({"gene_a": ["A"], "gene_b": ["B"], "score": [3.0]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        read_associations(tmp_path / "g.csv")


# -------------------------------------------------------------------------------------------- load data
def test_real_load_data():
    table, channels = read_load_data(real_data("images", "example_load_data_BR00126114.parquet"))
    assert channels == ["OrigAGP", "OrigDNA", "OrigER", "OrigMito", "OrigRNA"]
    assert table["Metadata_Well"].str.match(r"^[A-P]\d\d$").all()


def test_load_data_missing_pathname(tmp_path):
    pd.DataFrame(
        {"Metadata_Plate": ["p"], "Metadata_Well": ["A1"], "Metadata_Site": [1], "FileName_OrigDNA": ["a.tif"]}
    ).to_csv(tmp_path / "ld.csv", index=False)
    with pytest.raises(InputError, match="PathName_OrigDNA"):
        read_load_data(tmp_path / "ld.csv")
