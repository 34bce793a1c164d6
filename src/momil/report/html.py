"""`momil report`: a benchmark folder rendered as one HTML page that opens offline (inline SVG, no scripts).

Sections: Table 2 (per-assay compound-level ROC-AUC per method with the bootstrap marks), the p-values of the focus
method against every other one, per-assay AUC bars per method, ROC curves per primary assay, Table 3 (few-shot
probes on unseen assays) and attention over the instances of a few test wells (with their site and tile where the
store has them).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd

from momil.errors import MomilError
from momil.io.atomic import atomic_path
from momil.io.readers import read_json, read_parquet_frame
from momil.io.tables import read_table

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def _esc(value) -> str:
    return html.escape(str(value))


def markdown_table_to_html(text: str) -> str:
    """The pipe tables this package writes (header, rule, rows) as an HTML table; other lines as paragraphs."""
    lines = [line for line in text.strip().splitlines()]
    rows = [line for line in lines if line.startswith("|")]
    rest = [line for line in lines if line.strip() and not line.startswith("|")]
    out = ["<table>"]
    for i, line in enumerate(rows):
        if i == 1 and set(line.replace("|", "").strip()) <= set("-: "):
            continue
        inner = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]
        tag = "th" if i == 0 else "td"
        rendered = []
        for c in cells:
            bold = c.startswith("**")
            c = c.replace("**", "")
            rendered.append(f"<{tag}>{'<b>' if bold else ''}{_esc(c)}{'</b>' if bold else ''}</{tag}>")
        out.append("<tr>" + "".join(rendered) + "</tr>")
    out.append("</table>")
    out += [f"<p class='note'>{_esc(line)}</p>" for line in rest]
    return "\n".join(out)


def auc_bars_svg(table: pd.DataFrame, width: int = 900, height: int = 300) -> str:
    """Grouped bars: one group per assay (and the mean), one bar per method."""
    columns = [c for c in table.columns if c not in ("method", "label", "seconds")]
    methods = list(table["label"])
    left, bottom, top = 50, 60, 20
    inner_w, inner_h = width - left - 10, height - bottom - top
    group_w = inner_w / max(1, len(columns))
    bar_w = group_w * 0.8 / max(1, len(methods))
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 20 * len(methods)}'>"]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + inner_h * (1 - tick)
        parts.append(f"<line x1='{left}' x2='{width - 10}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>")
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' font-size='11' text-anchor='end'>{tick:.2f}</text>")
    for g, column in enumerate(columns):
        x0 = left + g * group_w + group_w * 0.1
        for m, (_, row) in enumerate(table.iterrows()):
            value = row[column]
            if pd.isna(value):
                continue
            h = inner_h * float(value)
            parts.append(
                f"<rect x='{x0 + m * bar_w:.1f}' y='{top + inner_h - h:.1f}' width='{bar_w * 0.92:.1f}' "
                f"height='{h:.1f}' fill='{PALETTE[m % len(PALETTE)]}'><title>{_esc(row['label'])}, "
                f"{_esc(column)}: {value:.3f}</title></rect>"
            )
        parts.append(
            f"<text x='{left + (g + 0.5) * group_w:.1f}' y='{top + inner_h + 16}' font-size='11' "
            f"text-anchor='middle'>{_esc(column)}</text>"
        )
    for m, name in enumerate(methods):
        y = height + 20 * m
        parts.append(f"<rect x='{left}' y='{y - 10}' width='12' height='12' fill='{PALETTE[m % len(PALETTE)]}'/>")
        parts.append(f"<text x='{left + 18}' y='{y}' font-size='12'>{_esc(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def roc_points(label: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    return fpr, tpr


def roc_svg(scored: dict[str, pd.DataFrame], assay: str, labels_of: dict[str, str], size: int = 260) -> str:
    pad = 30
    inner = size - 2 * pad
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size + 10}' height='{size + 10}'>",
        f"<rect x='{pad}' y='{pad}' width='{inner}' height='{inner}' fill='none' stroke='#999'/>",
        f"<line x1='{pad}' y1='{pad + inner}' x2='{pad + inner}' y2='{pad}' stroke='#ccc' stroke-dasharray='4'/>",
        f"<text x='{size / 2}' y='18' font-size='12' text-anchor='middle'>{_esc(assay)}</text>",
        f"<text x='{size / 2}' y='{size}' font-size='10' text-anchor='middle'>false positive rate</text>",
    ]
    for m, (name, frame) in enumerate(scored.items()):
        mine = frame[frame["assay"] == assay]
        if mine.empty or mine["label"].nunique() < 2:
            continue
        fpr, tpr = roc_points(mine["label"].to_numpy(), mine["probability"].to_numpy())
        points = " ".join(f"{pad + inner * x:.1f},{pad + inner * (1 - y):.1f}" for x, y in zip(fpr, tpr))
        parts.append(
            f"<polyline points='{points}' fill='none' stroke='{PALETTE[m % len(PALETTE)]}' "
            f"stroke-width='1.5'><title>{_esc(labels_of.get(name, name))}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def attention_svg(frame: pd.DataFrame, width: int = 420, height: int = 90) -> str:
    """Attention weights of one well's instances as bars, the top ones darker."""
    weights = frame["attention"].to_numpy()
    n = len(weights)
    bar = (width - 20) / max(1, n)
    top_k = set(np.argsort(-weights)[: max(1, min(3, n))])
    peak = weights.max() if n else 1.0
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"]
    for i, w in enumerate(weights):
        h = (height - 20) * (w / peak if peak > 0 else 0)
        color = "#e15759" if i in top_k else "#9bb7d4"
        where = ""
        if "Metadata_Site" in frame:
            where = f", site {frame['Metadata_Site'].iloc[i]}"
        parts.append(
            f"<rect x='{10 + i * bar:.1f}' y='{height - 10 - h:.1f}' width='{max(bar * 0.85, 1):.1f}' "
            f"height='{h:.1f}' fill='{color}'><title>instance {i}{_esc(where)}: {w:.4f}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 image as PNG bytes (zlib only, no imaging library)."""
    import struct
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + np.ascontiguousarray(rgb[y]).tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


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


def field_overlay_svg(png: bytes, scale: float, tile: int, frame: pd.DataFrame) -> str:
    """The field image with each instance's tile outlined, opacity and width following its attention."""
    import base64
    import struct

    width, height = struct.unpack(">II", png[16:24])
    peak = float(frame["attention"].max()) or 1.0
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>",
        f"<image width='{width}' height='{height}' href='data:image/png;base64,{base64.b64encode(png).decode()}'/>",
    ]
    for _, row in frame.sort_values("attention").iterrows():
        share = float(row["attention"]) / peak
        parts.append(
            f"<rect x='{row['Metadata_TileX'] * scale:.1f}' y='{row['Metadata_TileY'] * scale:.1f}' "
            f"width='{tile * scale:.1f}' height='{tile * scale:.1f}' fill='#ffdd00' "
            f"fill-opacity='{0.35 * share:.2f}' stroke='#ffdd00' stroke-opacity='{share:.2f}' "
            f"stroke-width='{1 + 2 * share:.1f}'><title>instance {int(row['instance'])}: "
            f"{row['attention']:.4f}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


def field_file_name(plate, well, site) -> str:
    from momil.io.atomic import safe_name

    return safe_name(f"{plate}_{well}_{site}")


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
    body.append("<h2>Table 2: compound-level ROC-AUC of the primary assays</h2>")
    body.append(markdown_table_to_html((folder / "table2.md").read_text()))
    if (folder / "pvalues.csv").exists():
        pvalues = read_table(folder / "pvalues.csv", dtype_str=("assay",))
        if len(pvalues):
            focus = pvalues["focus"].iloc[0]
            wide = pvalues.pivot_table(index="other", columns="assay", values="p_value", aggfunc="first")
            body.append(
                f"<h3>Paired one-sided bootstrap: {_esc(labels_of.get(focus, focus))} better than &hellip;"
                "</h3><table><tr><th>method</th>" + "".join(f"<th>{_esc(c)}</th>" for c in wide.columns) + "</tr>"
            )
            for other, row in wide.iterrows():
                body.append(
                    f"<tr><td>{_esc(labels_of.get(other, other))}</td>"
                    + "".join(f"<td>{v:.3g}</td>" for v in row.to_numpy())
                    + "</tr>"
                )
            body.append("</table>")
    body.append("<h2>Per-assay AUC</h2>")
    body.append(
        auc_bars_svg(table.drop(columns=[c for c in ("seconds", "mean_per_rotation", "mean_pr_auc") if c in table]))
    )
    if scored:
        body.append("<h2>ROC curves (test predictions pooled over rotations)</h2><div class='grid'>")
        body += [roc_svg(scored, assay, labels_of) for assay in primary]
        body.append(
            "</div><p class='note'>"
            + " &middot; ".join(
                f"<span style='color:{PALETTE[m % len(PALETTE)]}'>&#9632;</span> {_esc(labels_of.get(name, name))}"
                for m, name in enumerate(scored)
            )
            + "</p>"
        )
    if (folder / "table3.md").exists():
        body.append("<h2>Table 3: unseen assays, few-shot probes on a primary head</h2>")
        body.append(markdown_table_to_html((folder / "table3.md").read_text()))
    if (folder / "attention.parquet").exists():
        attention = read_parquet_frame(folder / "attention.parquet", "attention table")
        body.append("<h2>Attention over the instances of top-scored active test wells</h2>")
        for (plate, well, assay), frame in attention.groupby(["Metadata_Plate", "Metadata_Well", "assay"], sort=False):
            body.append(
                f"<h4>{_esc(assay)}: plate {_esc(plate)}, well {_esc(well)}, compound "
                f"{_esc(frame['Metadata_Compound'].iloc[0])}, probability "
                f"{frame['probability'].iloc[0]:.3f}</h4>"
            )
            body.append(attention_svg(frame))
            for site, tiles in frame.groupby("Metadata_Site") if "Metadata_TileY" in frame else []:
                png = folder / "fields" / f"{field_file_name(plate, well, site)}.png"
                info = folder / "fields" / f"{field_file_name(plate, well, site)}.json"
                if png.exists() and info.exists():
                    meta = read_json(info, "simulation record")
                    body.append(f"<p class='note'>site {_esc(site)}: tiles outlined by attention</p>")
                    body.append(field_overlay_svg(png.read_bytes(), meta["scale"], meta["tile"], tiles))
        body.append(
            "<p class='note'>Bars: attention weight per instance of the focus method's head (rotation 0 "
            "model), the three largest in red. Hover for the instance's site.</p>"
        )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>momil benchmark</title><style>{STYLE}</style>"
        f"</head><body>{''.join(body)}</body></html>"
    )
    target = Path(out) if out else folder / "report.html"
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
