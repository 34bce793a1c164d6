"""Compare two output trees, e.g. two runs of `momil demo` before and after a refactoring.

Data files (stores, tables, models) must be equal; provenance records may differ only in times, command lines,
paths, durations and the random suffix of store part names. Exit status 1 when something else differs.

    python scripts/compare_outputs.py demo-before demo-after
"""

import json
import re
import sys
from pathlib import Path

import pandas as pd
import torch

VOLATILE = {
    "created",
    "command",
    "seconds",
    "modified",
    "path",
    "root",
    "rows_per_second",
    "tiles_per_second",
    "bytes",
    "meta_files",
    "history",
}  # times, paths, and store part names with a random suffix


def clean(obj):
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items() if k not in VOLATILE and not k.endswith("seconds")}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    if isinstance(obj, str) and ("/tmp/" in obj):
        return "<path>"
    return obj


a, b = Path(sys.argv[1]), Path(sys.argv[2])


def names(root):
    # store parts carry a random suffix (meta-000001-<hex>.parquet): compare them by their part number
    return {re.sub(r"(meta-\d+)-[0-9a-f]+", r"\1", str(p.relative_to(root))): p for p in root.rglob("*") if p.is_file()}


na, nb = names(a), names(b)
assert na.keys() == nb.keys(), set(na) ^ set(nb)
fa = sorted(na)
bad = 0
same_bytes = 0
for rel in fa:
    x, y = na[rel], nb[rel]
    rel = Path(rel)
    if x.read_bytes() == y.read_bytes():
        same_bytes += 1
        continue
    ok = False
    if rel.suffix == ".parquet":
        ok = pd.read_parquet(x).equals(pd.read_parquet(y))
    elif rel.suffix == ".json":
        ok = clean(json.loads(x.read_text())) == clean(json.loads(y.read_text()))
    elif rel.suffix == ".pt":
        p, q = torch.load(x, weights_only=True), torch.load(y, weights_only=True)
        sp, sq = p.get("state_dict", p.get("model")), q.get("state_dict", q.get("model"))
        ok = sp.keys() == sq.keys() and all(torch.equal(sp[k], sq[k]) for k in sp)
    elif rel.suffix == ".csv":
        xf, yf = pd.read_csv(x), pd.read_csv(y)
        keep = [c for c in xf.columns if "seconds" not in c]
        ok = xf[keep].equals(yf[keep])
    if not ok:
        bad += 1
        print("DIFFERS:", rel)
print(
    f"{len(fa)} files: {same_bytes} byte-identical, {len(fa) - same_bytes - bad} equal in data (provenance "
    f"times/paths differ), {bad} differ"
)
sys.exit(1 if bad else 0)
