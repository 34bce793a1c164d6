"""Chemical-similarity folds for many compounds: time and peak memory of exact Butina and of scaffolds.

    python benchmarks/bench_split.py [--n 50000]

Compounds are analogue series (16 per series) grown with RDKit from the 3,190 real hti-cnn SMILES, as the
simulator makes them: chemically realistic neighbourhoods, so the neighbour lists are not trivially empty.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import print_table, python_code, run_measured  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="momil-bench-split-"))
    make = (
        "import numpy as np, pandas as pd\n"
        "from momil.simulate import analogue_smiles, hti_cnn_smiles\n"
        "parents = hti_cnn_smiles()['smiles'].tolist()\n"
        f"need = -(-{args.n} // 16)\n"
        "parents = (parents * (need // len(parents) + 1))[:need]\n"
        "series = analogue_smiles(parents, 16, np.random.default_rng(0))\n"
        f"smiles = [s for g in series for s in g][:{args.n}]\n"
        "pd.DataFrame({'Metadata_Compound': [f'c{i}' for i in range(len(smiles))], 'Metadata_SMILES': smiles})"
        f".to_parquet({str(folder / 'compounds.parquet')!r})\n"
    )
    seconds, _, code = run_measured(python_code(make))
    if code:
        raise SystemExit("could not make the compounds")
    rows = []
    for method in ("butina", "scaffold"):
        run = (
            "import warnings, pandas as pd\n"
            "from momil.splits import make_folds, SplitSettings\n"
            f"c = pd.read_parquet({str(folder / 'compounds.parquet')!r})\n"
            f"f = make_folds(c['Metadata_Compound'], c, settings=SplitSettings(method={method!r}), "
            "show_progress=False)\n"
            f"open({str(folder / method)!r}, 'w').write(str(f['cluster'].nunique()))\n"
        )
        seconds, peak, code = run_measured(python_code(run))
        clusters = (folder / method).read_text() if code == 0 else "-"
        rows.append(
            {
                "method": method,
                "compounds": args.n,
                "clusters": clusters,
                "seconds": f"{seconds:.0f}",
                "peak RSS MB": f"{peak:.0f}",
                "ok": code == 0,
            }
        )
    print_table(rows)


if __name__ == "__main__":
    main()
