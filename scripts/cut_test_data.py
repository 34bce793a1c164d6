"""Cut the real data the tests read from ../shared/data down to tests/data (run once; the output is committed).

    python scripts/cut_test_data.py [--shared ../shared/data] [--out tests/data]

What is cut and how (also in tests/data/README.md):

* ``images/BR00143976-C03-f03/``: the central 540 x 540 pixels (rows and columns 270-809) of each of the six
  1080 x 1080 Phenix planes, written again as LZW-compressed uint16 TIFF under the same file names.
* ``images/bray-24279-A01-s1/``: the top-left 260 x 348 pixels of each of the five 520 x 696 planes, uint16 TIFF
  (zlib-compressed).
* ``images/example_load_data_BR00126114.parquet``: as it is.
* ``profiles/SQ00015054_normalized_feature_select.csv.gz``: as it is.
* ``single-cell/cellprofiler-BR00121431-A01-1/``: all 89 cells, every identifier, parent, location and centre
  column, and per compartment the AreaShape and Intensity_MeanIntensity measurements (the other feature
  columns are left out); ``Image.csv`` as it is.

The hti-cnn label matrix, its compound SMILES and the protein network are not copied: the package ships them
(``src/momil/resources``) and the tests read them there.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pandas as pd
import tifffile

KEEP_COLUMN = re.compile(
    r"^(ImageNumber|ObjectNumber|Parent_|Children_|Number_|Location_|AreaShape_|Intensity_MeanIntensity_)|_Center_"
)


def crop_tiffs(source: Path, out: Path, rows: slice, cols: slice, compression: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.tif*")):
        plane = tifffile.imread(path)
        tifffile.imwrite(out / path.name, plane[rows, cols].copy(), compression=compression)


def cut_cellprofiler(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "Image.csv", out / "Image.csv")
    for name in ("Cells.csv", "Cytoplasm.csv", "Nuclei.csv"):
        table = pd.read_csv(source / name)
        table[[c for c in table.columns if KEEP_COLUMN.search(c)]].to_csv(out / name, index=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=Path(__file__).resolve().parents[2] / "shared" / "data", type=Path)
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "tests" / "data", type=Path)
    args = parser.parse_args()
    src, out = args.shared, args.out
    crop_tiffs(
        src / "images" / "BR00143976-C03-f03",
        out / "images" / "BR00143976-C03-f03",
        slice(270, 810),
        slice(270, 810),
        "lzw",
    )
    crop_tiffs(
        src / "images" / "bray-24279-A01-s1",
        out / "images" / "bray-24279-A01-s1",
        slice(0, 260),
        slice(0, 348),
        "zlib",
    )
    for parts in (("images", "example_load_data_BR00126114.parquet"), ("profiles", SQ_PLATE)):
        (out / parts[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(src.joinpath(*parts), out.joinpath(*parts))
    cut_cellprofiler(
        src / "single-cell" / "cellprofiler-BR00121431-A01-1", out / "single-cell" / "cellprofiler-BR00121431-A01-1"
    )
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"tests/data: {total / 1e6:.1f} MB")
    return 0


SQ_PLATE = "SQ00015054_normalized_feature_select.csv.gz"

if __name__ == "__main__":
    raise SystemExit(main())
