"""The report's figures, drawn with matplotlib (Agg, no display) and saved as PNG and SVG.

* :func:`auc_bars`: per-assay compound-level ROC-AUC per method with 95 % bootstrap intervals (compounds
  resampled within the assay, a fixed seed);
* :func:`roc_curves`: one panel per primary assay, every method's ROC curve, axes labelled;
* :func:`attention_field`: a field of view with each instance's tile shaded by its attention weight;
* :func:`selection_funnel`: per primary assay, the secondary assays left after each stage of assay selection
  (biology -> performance -> influence), summed over the rotations;
* :func:`imputed_labels`: imputed labels per assay and round (actives and inactives).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from momil.io.atomic import atomic_path

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, folder: Path, name: str) -> tuple[Path, Path]:
    """``figure`` as ``folder``/``name``.png and .svg (each written atomically); the figure is closed."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".png", ".svg"):
        path = folder / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix[1:], dpi=110, bbox_inches="tight", metadata={"Date": None})
        paths.append(path)
    plt.close(figure)
    return paths[0], paths[1]


def save_image(rgb: np.ndarray, path: Path) -> Path:
    """A (H, W, 3) uint8 image as a PNG file (matplotlib's writer), atomically."""
    plt = _pyplot()
    with atomic_path(Path(path)) as tmp:
        plt.imsave(tmp, rgb, format="png")
    return Path(path)


def bootstrap_auc(label: np.ndarray, score: np.ndarray, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the ROC-AUC over ``n_boot`` resamples of the rows (resamples of one class are
    skipped); (NaN, NaN) when ``label`` holds one class."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(label)) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(label), len(label))
        if label[rows].min() != label[rows].max():
            values.append(roc_auc_score(label[rows], score[rows]))
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (np.nan, np.nan)


def auc_table(scored: dict[str, pd.DataFrame], assays: list[str], n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Rows (method, assay, auc, low, high) from the methods' scored compound predictions."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for method, frame in scored.items():
        for assay in assays:
            mine = frame[frame["assay"] == assay]
            y, p = mine["label"].to_numpy().astype(int), mine["probability"].to_numpy(np.float64)
            auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
            low, high = bootstrap_auc(y, p, n_boot, seed)
            rows.append({"method": method, "assay": assay, "auc": auc, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["method", "assay", "auc", "low", "high"])


def auc_bars(aucs: pd.DataFrame, labels_of: dict[str, str]):
    plt = _pyplot()
    methods = list(dict.fromkeys(aucs["method"]))
    assays = list(dict.fromkeys(aucs["assay"]))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(assays) + 2), 3.6))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(assays))
    for m, method in enumerate(methods):
        mine = aucs[aucs["method"] == method].set_index("assay").reindex(assays)
        error = np.stack([mine["auc"] - mine["low"], mine["high"] - mine["auc"]]).clip(min=0)
        axes.bar(
            x + (m - (len(methods) - 1) / 2) * width,
            mine["auc"],
            width * 0.92,
            yerr=np.nan_to_num(error),
            capsize=2,
            color=PALETTE[m % len(PALETTE)],
            label=labels_of.get(method, method),
        )
    axes.axhline(0.5, color="#888", linestyle="--", linewidth=0.8)
    axes.set_xticks(x, assays, rotation=30, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("compound-level ROC-AUC")
    axes.set_title("Per-assay ROC-AUC, test compounds pooled over rotations (95 % bootstrap intervals)")
    axes.legend(fontsize=8, loc="lower right", ncol=2)
    return figure


def roc_curves(scored: dict[str, pd.DataFrame], assays: list[str], labels_of: dict[str, str]):
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    columns = min(3, max(1, len(assays)))
    rows = int(np.ceil(len(assays) / columns)) or 1
    figure, grid = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.2 * rows), squeeze=False)
    for k, axes in enumerate(grid.flat):
        if k >= len(assays):
            axes.axis("off")
            continue
        assay = assays[k]
        for m, (method, frame) in enumerate(scored.items()):
            mine = frame[frame["assay"] == assay]
            if mine["label"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(mine["label"].astype(int), mine["probability"])
            axes.plot(fpr, tpr, color=PALETTE[m % len(PALETTE)], linewidth=1.3, label=labels_of.get(method, method))
        axes.plot([0, 1], [0, 1], color="#aaa", linestyle="--", linewidth=0.8)
        axes.set_title(str(assay), fontsize=10)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_aspect("equal")
    handles, names = grid.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8)
        figure.subplots_adjust(bottom=0.12 + 0.04 * (len(names) // 4))
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure


def attention_field(rgb: np.ndarray, scale: float, tile: int, tiles: pd.DataFrame, title: str = ""):
    """``rgb`` (H, W, 3) a field's view; ``tiles``: Metadata_TileY, Metadata_TileX (field pixels) and attention."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(4.6, 4.6 * rgb.shape[0] / max(1, rgb.shape[1])))
    axes.imshow(rgb)
    peak = float(tiles["attention"].max()) or 1.0
    cmap = plt.get_cmap("autumn")
    for _, row in tiles.sort_values("attention").iterrows():
        share = float(row["attention"]) / peak
        axes.add_patch(
            Rectangle(
                (row["Metadata_TileX"] * scale, row["Metadata_TileY"] * scale),
                tile * scale,
                tile * scale,
                facecolor=cmap(1 - share),
                alpha=0.45 * share,
                edgecolor=cmap(1 - share),
                linewidth=0.5 + 1.5 * share,
            )
        )
    mappable = plt.cm.ScalarMappable(cmap=plt.get_cmap("autumn_r"), norm=plt.Normalize(0, peak))
    figure.colorbar(mappable, ax=axes, fraction=0.04, label="attention weight")
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    return figure


def attention_bars(frame: pd.DataFrame, title: str = ""):
    plt = _pyplot()
    weights = frame["attention"].to_numpy()
    figure, axes = plt.subplots(figsize=(5.5, 1.8))
    top = set(np.argsort(-weights)[: min(3, len(weights))])
    axes.bar(
        np.arange(len(weights)), weights, color=["#e15759" if i in top else "#9bb7d4" for i in range(len(weights))]
    )
    axes.set_xlabel("instance")
    axes.set_ylabel("attention")
    axes.set_title(title, fontsize=9)
    return figure


def selection_funnel(selection: pd.DataFrame, primary: list[str]):
    """Per primary: candidates, then the secondary assays kept by biology (associated with that primary), by
    performance, and by influence on that primary; each summed over the rotations of ``selection``."""
    plt = _pyplot()
    stages = ["candidates", "biology", "performance", "influence"]
    counts = []
    for p in primary:
        bio = selection["bio_kept"].astype(bool) & (selection.get("bio_primary", "") == p)
        perf = bio & selection.get("perf_kept", bio).astype(bool)
        influential = selection.get("influential_for", pd.Series("", index=selection.index)).fillna("").astype(str)
        infl = perf & influential.str.split("|").apply(lambda parts, p=p: p in parts)
        counts.append([len(selection), int(bio.sum()), int(perf.sum()), int(infl.sum())])
    counts = np.asarray(counts)
    figure, axes = plt.subplots(figsize=(max(5.0, 1.2 * len(primary) + 2), 3.2))
    width = 0.8 / len(stages)
    x = np.arange(len(primary))
    for s, stage in enumerate(stages):
        axes.bar(x + (s - 1.5) * width, counts[:, s], width * 0.92, color=PALETTE[s], label=stage)
    axes.set_xticks(x, primary, rotation=30, ha="right")
    axes.set_ylabel("secondary assays (summed over rotations)")
    axes.set_title("Assay selection: what each stage keeps, per primary assay")
    axes.legend(fontsize=8)
    return figure


def imputed_labels(counts: pd.DataFrame):
    """``counts``: round, assay, positive, negative (:func:`momil.protocol.imputation.imputed_counts`)."""
    plt = _pyplot()
    assays = sorted(counts["assay"].astype(str).unique())
    rounds = sorted(counts["round"].unique())
    figure, axes = plt.subplots(figsize=(max(5.0, 0.5 * len(assays) + 2), 3.2))
    x = np.arange(len(assays))
    width = 0.8 / max(1, len(rounds))
    for r, round_ in enumerate(rounds):
        mine = counts[counts["round"] == round_].assign(assay=lambda f: f["assay"].astype(str)).set_index("assay")
        mine = mine.reindex(assays).fillna(0)
        offset = x + (r - (len(rounds) - 1) / 2) * width
        color = PALETTE[r % len(PALETTE)]
        axes.bar(offset, mine["positive"], width * 0.92, color=color, label=f"round {round_}: active")
        axes.bar(
            offset,
            mine["negative"],
            width * 0.92,
            bottom=mine["positive"],
            color=color,
            alpha=0.45,
            label=f"round {round_}: inactive",
        )
    axes.set_xticks(x, assays, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("imputed labels")
    axes.set_title("Conformal label imputation: labels added per assay and round")
    axes.legend(fontsize=7)
    return figure
