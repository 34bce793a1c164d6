"""The paper's tables as cells: Table 2 (method x assay AUCs with bootstrap stars) and Table 3 (few-shot
probes), and their Markdown form; the HTML report styles the same cells (momil.report.html)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from momil.protocol.methods import METHODS


def _auc_cell(row: pd.DataFrame, with_sd: bool = False) -> str:
    """One Table 3 cell: mean (± sd) AUC, "undefined" where the AUC is (one class among the test compounds), "-"
    where nothing was probed; the same words as Table 2."""
    if not len(row):
        return "-"
    mean = float(row["auc_mean"].iloc[0])
    if math.isnan(mean):
        return "undefined"
    if not with_sd:
        return f"{mean:.3f}"
    sd = float(row["auc_sd"].iloc[0])
    return f"{mean:.3f} ± {sd:.3f}" if not math.isnan(sd) else f"{mean:.3f}"


def table3_cells(table3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 as text: one row per unseen assay, the single-task model, then probe AUCs (mean +- sd) per source
    and shots."""
    columns = []
    for source, shots in (
        table3.loc[table3["source"] != "single-task model on the assay", ["source", "shots"]]
        .drop_duplicates()
        .itertuples(index=False)
    ):
        columns.append((source, shots))
    rows = []
    for (assay, primary), group in table3.groupby(["assay", "primary"], sort=False):
        single = group[group["source"] == "single-task model on the assay"]
        cells = {"assay": str(assay), "primary": str(primary), "single-task model": _auc_cell(single)}
        for source, shots in columns:
            row = group[(group["source"] == source) & (group["shots"].astype(str) == str(shots))]
            cells[f"{source}, {shots} shots"] = _auc_cell(row, with_sd=True)
        rows.append(cells)
    return pd.DataFrame(rows)


TABLE3_NOTE = (
    "Compound-level test ROC-AUC pooled over rotations; probes: logistic regression on the primary head's well "
    "embeddings, mean ± sd over random draws of n actives and n inactives per fold."
)


def table3_markdown(table3: pd.DataFrame) -> str:
    if table3.empty:
        return "No unseen assay to probe.\n"
    return markdown_table(table3_cells(table3)) + "\n\n" + TABLE3_NOTE + "\n"


def auc_table(scored: dict[str, pd.DataFrame], primary: list[str], methods: list[str]) -> pd.DataFrame:
    """Methods x primary assays compound-level ROC-AUC (NaN where undefined) and the mean over defined ones."""
    from momil.protocol.scoring import assay_metrics

    rows = []
    for name in methods:
        metrics = assay_metrics(scored[name]).set_index("assay")
        row = {"method": name, "label": METHODS[name][0]}
        for assay in primary:
            row[assay] = float(metrics.loc[assay, "roc_auc"]) if assay in metrics.index else float("nan")
        values = [row[a] for a in primary if not np.isnan(row[a])]
        row["mean"] = float(np.mean(values)) if values else float("nan")
        defined = metrics[metrics.index.isin(primary) & metrics["defined"]] if len(metrics) else metrics
        row["mean_per_rotation"] = float(defined["roc_auc_per_rotation"].mean()) if len(defined) else float("nan")
        row["mean_pr_auc"] = float(defined["pr_auc"].mean()) if len(defined) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _md(text: str) -> str:
    """A table cell's text with its pipes escaped (labels such as "|T| = all")."""
    return str(text).replace("|", "\\|")


def _stars(p: float) -> str:
    """The paper's marks: * p < 0.001, † p < 0.05, ‡ p < 0.1."""
    if np.isnan(p):
        return ""
    return "*" if p < 0.001 else "†" if p < 0.05 else "‡" if p < 0.1 else ""


TABLE2_NAMES = {"mean": "mean", "mean_per_rotation": "mean per rotation", "mean_pr_auc": "mean PR-AUC"}


def table2_cells(
    table: pd.DataFrame, pvalues: pd.DataFrame, focus: str, reference: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 as text: one row per method (``method``: its label), the AUCs to 3 decimals with the bootstrap marks
    on the focus row, and a last row of the focus method's p-values against the reference; and a frame of the same
    shape that is True where a cell is the best of its column (bold). Shared by ``table2.md`` and the report."""
    summaries = list(TABLE2_NAMES)
    assays = [c for c in table.columns if c not in ("method", "label", "seconds", *summaries)]
    against_reference = (
        pvalues[pvalues["other"] == reference].set_index("assay")["p_value"]
        if len(pvalues) and reference in set(pvalues["other"])
        else pd.Series(dtype=float)
    )
    columns = assays + [c for c in summaries if c in table.columns]
    rows, bold = [], []
    for _, row in table.iterrows():
        cells, flags = {"method": str(row["label"])}, {"method": False}
        for c in columns:
            value = float(row[c])
            text = "undef." if np.isnan(value) else f"{value:.3f}"
            if row["method"] == focus and c in against_reference.index:
                text += _stars(float(against_reference[c]))
            cells[TABLE2_NAMES.get(c, c)] = text
            flags[TABLE2_NAMES.get(c, c)] = not np.isnan(value) and value == table[c].max()
        rows.append(cells)
        bold.append(flags)
    if len(against_reference):
        label = f"p-value, {METHODS[focus][0]} > {METHODS.get(reference, (reference,))[0]}"
        cells = {"method": label} | {
            TABLE2_NAMES.get(c, c): f"{against_reference.get(c, float('nan')):.3g}" for c in columns
        }
        rows.append(cells)
        bold.append(dict.fromkeys(cells, False))
    return pd.DataFrame(rows), pd.DataFrame(bold)


def markdown_table(cells: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """A pipe table of text cells (pipes inside cells escaped; ``bold`` cells in **)."""
    lines = ["| " + " | ".join(_md(c) for c in cells.columns) + " |", "|---" * len(cells.columns) + "|"]
    for i, row in enumerate(cells.itertuples(index=False)):
        texts = [f"**{_md(v)}**" if bold is not None and bool(bold.iat[i, j]) else _md(v) for j, v in enumerate(row)]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)
