"""`momil report`: a benchmark folder rendered as one HTML page that opens offline (figures embedded, no scripts).

Sections: Table 2 (per-assay compound-level ROC-AUC per method with the bootstrap marks), the p-values of the focus
method against every other one, per-assay AUC bars with bootstrap intervals, ROC curves per primary assay, the
assay-selection funnel and the imputed labels (when those methods ran), Table 3 (few-shot probes on unseen assays)
and attention over the instances of a few test wells, on their field images where the store has them. The figures
are matplotlib's (:mod:`momil.report.figures`), each saved as PNG and SVG in ``figures/`` beside the page.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from momil.errors import MomilError
from momil.io.atomic import atomic_path, safe_name
from momil.io.readers import read_json, read_parquet_frame
from momil.io.tables import read_table
from momil.report import figures
from momil.report.paper_tables import TABLE3_NOTE, table2_cells, table3_cells


def _esc(value) -> str:
    return html.escape(str(value))


def table_html(cells: pd.DataFrame, bold: pd.DataFrame | None = None, note: str = "") -> str:
    """Text cells as an HTML table (pandas' Styler: cells escaped, ``bold`` cells in bold, no index)."""
    styler = cells.style.format(escape="html").hide(axis="index")
    if bold is not None:
        flags = bold.to_numpy(dtype=bool)
        styler = styler.apply(lambda _: np.where(flags, "font-weight: bold", ""), axis=None)
    return styler.to_html() + (f"<p class='note'>{_esc(note)}</p>" if note else "")


def field_composite(field: np.ndarray, names: list[str], max_size: int = 384) -> tuple[np.ndarray, float]:
    """An RGB view of a normalised field (C, H, W): DNA blue, ER (or RNA) green, AGP (or Mito) red; downsampled
    to at most ``max_size`` pixels. Returns (uint8 image, scale from field pixels to image pixels)."""

    def pick(*wanted):
        for name in wanted:
            if name in names:
                return field[names.index(name)]
        return np.zeros(field.shape[1:], np.float32)

    rgb = np.stack([pick("AGP", "Mito"), pick("ER", "RNA"), pick("DNA")], axis=-1)
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / max_size)))
    rgb = rgb[::step, ::step]
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), 1.0 / step


BOOTSTRAP = 200  # resamples behind the AUC bars' intervals

STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


def field_file_name(plate, well, site) -> str:
    from momil.io.atomic import safe_name

    return safe_name(f"{plate}_{well}_{site}")


class _Figure:
    """Saves a matplotlib figure as PNG + SVG under ``figures/`` beside the page and returns its HTML (the PNG
    inline, a link to the SVG)."""

    def __init__(self, target_folder: Path):
        self.target_folder = target_folder
        self.folder = target_folder / "figures"

    def __call__(self, fig, name: str, caption: str = "") -> str:
        png, svg = figures.save_figure(fig, self.folder, name)
        data = base64.b64encode(png.read_bytes()).decode()
        link = os.path.relpath(svg, self.target_folder)
        note = f"<p class='note'>{_esc(caption)} <a href='{_esc(link)}'>SVG</a></p>"
        return f"<figure><img alt='{_esc(name)}' src='data:image/png;base64,{data}'/>{note}</figure>"


def render_report(folder, out=None) -> Path:
    """Write ``folder``/report.html (or ``out``) from a `momil benchmark` folder."""
    folder = Path(folder)
    if not (folder / "table2.csv").exists():
        raise MomilError(f"{folder}: no benchmark here (table2.csv missing) -- run `momil benchmark` first")
    table = read_table(folder / "table2.csv", dtype_str=("method", "label"))
    record = read_json(folder / "benchmark.json", "benchmark record") if (folder / "benchmark.json").exists() else {}
    labels_of = dict(zip(table["method"], table["label"]))
    scored = {}
    for method in table["method"]:
        path = folder / "scored" / f"{method}.parquet"
        if path.exists():
            scored[method] = read_parquet_frame(path, "scored predictions")
    primary = [
        c for c in table.columns if c not in ("method", "label", "mean", "mean_per_rotation", "mean_pr_auc", "seconds")
    ]
    body = [
        f"<h1>momil benchmark</h1><p class='note'>{_esc(folder.resolve())} &mdash; momil "
        f"{_esc(record.get('momil_version', ''))}, made {_esc(record.get('created', ''))}; methods: "
        f"{_esc(', '.join(table['label']))}</p>"
    ]
    body += _table2_section(folder, table, record, labels_of)
    target = Path(out) if out else folder / "report.html"
    figure = _Figure(target.parent)
    body += _figure_sections(folder, scored, primary, labels_of, record, figure)
    body += _attention_section(folder, figure)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>momil benchmark</title><style>{STYLE}</style>"
        f"</head><body>{''.join(body)}</body></html>"
    )
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target


def _table2_section(folder: Path, table: pd.DataFrame, record: dict, labels_of: dict) -> list[str]:
    """Table 2 with its bootstrap marks, and the p-values of the focus method against each other one."""
    body = []
    body.append("<h2>Table 2: compound-level ROC-AUC of the primary assays</h2>")

    pvalues = read_table(folder / "pvalues.csv", dtype_str=("assay",)) if (folder / "pvalues.csv").exists() else None
    pvalues = pvalues if pvalues is not None and len(pvalues) else pd.DataFrame(columns=["assay", "other", "p_value"])
    focus = record.get("focus", table["method"].iloc[-1])
    reference = record.get("settings", {}).get("benchmark", {}).get("reference", "")
    cells, bold = table2_cells(table, pvalues, focus, reference)
    marks = "Bold: best per column; marks on the focus row: * p < 0.001, † p < 0.05, ‡ p < 0.1."
    body.append(table_html(cells, bold, marks))
    if len(pvalues):
        wide = pvalues.pivot_table(index="other", columns="assay", values="p_value", aggfunc="first")
        wide.index = [labels_of.get(other, other) for other in wide.index]
        wide = wide.reset_index(names="method")
        text = wide.map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
        focus_label = labels_of.get(pvalues["focus"].iloc[0], pvalues["focus"].iloc[0])
        body.append(f"<h3>Paired one-sided bootstrap: {_esc(focus_label)} better than &hellip;</h3>")
        body.append(table_html(text))
    return body


def _figure_sections(folder: Path, scored: dict, primary: list, labels_of: dict, record: dict, figure) -> list[str]:
    """Per-assay AUC bars, ROC curves, the selection funnel, imputed labels, the store's mAP and Table 3."""
    body = []
    if scored:
        aucs = figures.auc_table(scored, primary, n_boot=BOOTSTRAP, seed=0)
        body.append("<h2>Per-assay AUC</h2>")
        body.append(figure(figures.auc_bars(aucs, labels_of), "auc_bars", f"{BOOTSTRAP} bootstrap resamples, seed 0."))
        body.append("<h2>ROC curves (test predictions pooled over rotations)</h2>")
        body.append(figure(figures.roc_curves(scored, primary, labels_of), "roc_curves"))
    selections = sorted((folder / "selection").glob("rot*/selection.csv"))  # the benchmark's shared selection
    if selections:
        columns = ("assay", "bio_primary", "influential_for")
        chosen = pd.concat([read_table(path, dtype_str=columns) for path in selections], ignore_index=True)
        body.append(f"<h2>Assay selection ({len(selections)} rotations)</h2>")
        body.append(figure(figures.selection_funnel(chosen, primary), "selection_funnel"))
    imputed = folder / "runs" / "momil-as-li" / "imputed_labels.parquet"
    if imputed.exists():
        from momil.protocol.imputation import imputed_counts

        counts = imputed_counts(read_parquet_frame(imputed, "imputed labels"))
        if len(counts):
            body.append("<h2>Label imputation</h2>")
            body.append(figure(figures.imputed_labels(counts), "imputed_labels"))
    retrieval = record.get("retrieval")
    if retrieval:
        body.append("<h2>The store's features: phenotypic activity (copairs mAP)</h2>")
        body.append(
            f"<p>Each compound's replicate well means retrieved against the negcon wells: mean mAP "
            f"{retrieval['activity_map']:.3f}, {100 * retrieval['activity_retrieved']:.0f} % of "
            f"{retrieval['activity_groups']} compounds retrieved at corrected p &lt; {retrieval['threshold']:g} "
            f"(null size {retrieval['null_size']}, seed {retrieval['seed']}; per compound in retrieval.csv).</p>"
        )
    if (folder / "table3.csv").exists():
        body.append("<h2>Table 3: unseen assays, few-shot probes on a primary head</h2>")
        table3 = read_table(folder / "table3.csv", dtype_str=("assay", "primary", "source", "shots"))
        body.append(table_html(table3_cells(table3), note=TABLE3_NOTE) if len(table3) else "<p>No unseen assay.</p>")
    return body


def _attention_section(folder: Path, figure) -> list[str]:
    """Attention over the instances (and tiles on the field) of the top-scored active test wells."""
    body = []
    if not (folder / "attention.parquet").exists():
        return body
    attention = read_parquet_frame(folder / "attention.parquet", "attention table")
    body.append("<h2>Attention over the instances of top-scored active test wells</h2>")
    groups = attention.groupby(["Metadata_Plate", "Metadata_Well", "assay"], sort=False)
    for n, ((plate, well, assay), frame) in enumerate(groups):
        title = (
            f"{assay}: plate {plate}, well {well}, compound {frame['Metadata_Compound'].iloc[0]}, "
            f"probability {frame['probability'].iloc[0]:.3f}"
        )
        body.append(f"<h4>{_esc(title)}</h4>")
        body.append(figure(figures.attention_bars(frame, "attention per instance"), f"attention_{n}"))
        for site, tiles in frame.groupby("Metadata_Site") if "Metadata_TileY" in frame else []:
            png = folder / "fields" / f"{field_file_name(plate, well, site)}.png"
            info = folder / "fields" / f"{field_file_name(plate, well, site)}.json"
            if png.exists() and info.exists():
                import matplotlib.image

                meta = read_json(info, "field view record")
                rgb = matplotlib.image.imread(png)[..., :3]
                view = figures.attention_field(rgb, meta["scale"], meta["tile"], tiles, f"site {site}")
                body.append(figure(view, f"attention_{n}_site_{safe_name(str(site), 20)}", "tiles by attention"))
    body.append(
        "<p class='note'>Attention weight per instance of the focus method's head (rotation 0 model), the three "
        "largest in red; on the field, each tile shaded by its weight.</p>"
    )
    return body
