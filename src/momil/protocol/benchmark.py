"""`momil benchmark`: the paper's Table 2 on one dataset -- every method through the same protocol.

Each method is a `momil cv` run on the same store, labels and folds (3-1-1 rotation, the same grid chosen on
validation, compound-level test AUCs pooled over rotations). Assay selection runs once per rotation and is shared
by the methods that use it. The report folder holds:

* ``table2.md`` / ``table2.csv``: per-assay compound-level ROC-AUC of the primary assays and their mean, one row
  per method, and p-values of a paired one-sided bootstrap (the same compound draws for both methods) of the
  focus method (default MoMIL + AS + LI) against the reference (default FM -> Multi-label-MIL), as in the paper;
* ``pvalues.csv``: the focus method against every other method, per assay and for the mean;
* ``runs/<method>/``: each method's cross-validation folder (reused when the command runs again);
* ``benchmark.json``: settings, inputs, version, seconds per method.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.errors import MomilError
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.contract import LabelMatrix
from momil.io.provenance import provenance
from momil.io.readers import read_json, read_parquet_frame
from momil.io.store import InstanceStore
from momil.protocol.methods import METHODS
from momil.report.paper_tables import (  # noqa: F401 (moved there; re-exported)
    auc_table,
    markdown_table,
    table2_cells,
    table3_cells,
    table3_markdown,
)


@dataclasses.dataclass
class BenchmarkSettings(Settings):
    methods: str = setting(
        ",".join(METHODS),
        "comma-separated, from: instance-count, mean-mlp, multilabel-mil, mil-amtl, momil-stl, momil-primary, "
        "momil-all, momil-as, momil-as-li",
    )
    focus: str = setting("momil-as-li", "the method tested against the others (falls back to the last method run)")
    reference: str = setting("multilabel-mil", "the method Table 2's p-values compare the focus with")
    n_boot: int = setting(1000, "bootstrap draws per test", low=100)
    probes: int = setting(12, "unseen assays probed for Table 3 (needs momil-as and momil-stl; 0: none)", low=0)
    shots: str = setting("5,10,all", "actives and inactives per fold for the probes")
    probe_repeats: int = setting(10, "random draws per shot count", low=1)
    map_null_size: int = setting(
        5000, "copairs mAP of the store's well means in the report: null permutations per p-value (0: none)", low=0
    )
    overwrite: bool = setting(False)

    def method_list(self) -> list[str]:
        chosen = [m.strip() for m in str(self.methods).split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS]
        if unknown or not chosen:
            raise MomilError(f"unknown method(s) {unknown} -- choose from {', '.join(METHODS)}")
        return chosen


@dataclasses.dataclass
class BenchmarkResult:
    table: pd.DataFrame  # methods x (assays, mean)
    pvalues: pd.DataFrame  # focus vs every other method
    scored: dict[str, pd.DataFrame]  # method -> compound predictions with labels
    seconds: dict[str, float]
    table3: pd.DataFrame | None = None  # few-shot probes on unseen assays


def _finished(folder: Path) -> bool:
    return (folder / "summary.json").exists() and (folder / "compound_predictions.parquet").exists()


RUNNER_ONLY = ("executor", "workers", "threads", "ray_address", "overwrite", "selection", "select", "device")


def _check_reusable(folder: Path, name: str, cv, train, impute) -> None:
    """A finished method is reused only when it was run with the same cross-validation and training (and, with
    imputation, the same imputation) settings; who ran its fits (the executor, the device) does not matter."""
    from momil.protocol.imputation import ImputeSettings

    impute = impute or ImputeSettings()
    saved = read_json(folder / "summary.json", "cross-validation record").get("settings", {})
    wanted = {"cv": dataclasses.asdict(cv), "train": dataclasses.asdict(train)}
    if "impute" in saved:
        wanted["impute"] = dataclasses.asdict(impute)
    defaults = {"cv": type(cv)(), "train": type(train)(), "impute": ImputeSettings()}
    for section, values in wanted.items():
        # a setting added since the folder was made counts at its default
        default = dataclasses.asdict(defaults[section])
        old = {k: v for k, v in {**default, **saved.get(section, {})}.items() if k not in RUNNER_ONLY}
        new = {k: v for k, v in values.items() if k not in RUNNER_ONLY}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            key = changed[0]
            raise MomilError(
                f"{folder}: method {name} was run with other {section} settings ({key}: {old.get(key)!r}, now "
                f"{new.get(key)!r}) -- use another --out, or delete that folder to run it again"
            )


def run_benchmark(
    store: InstanceStore,
    labels: LabelMatrix,
    folds: pd.DataFrame,
    assays: pd.DataFrame,
    associations: pd.DataFrame | None,
    out,
    settings: BenchmarkSettings | None = None,
    cv=None,
    train=None,
    select=None,
    impute=None,
    show_progress: bool = True,
) -> BenchmarkResult:
    """Run every method (reusing finished runs) and write the report folder ``out``."""
    from momil.protocol.cv import CVSettings
    from momil.training.settings import TrainSettings

    settings = settings or BenchmarkSettings()
    methods = settings.method_list()
    cv = cv or CVSettings()
    train = train or TrainSettings()
    out = Path(out)
    if settings.overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    primary = list(assays.loc[assays["role"] == "primary", "assay"])
    needs_selection = [m for m in methods if METHODS[m][2].get("select")]
    if needs_selection and associations is None and "biology" in (select.stage_list() if select else ["biology"]):
        raise MomilError(
            f"{', '.join(needs_selection)} select assays and need protein associations "
            "(--associations) -- pass them or leave those methods out of --methods"
        )
    out.mkdir(parents=True, exist_ok=True)
    if needs_selection and not cv.selection:
        cv = dataclasses.replace(
            cv,
            selection=str(
                _select_once(store, labels, folds, assays, associations, out, cv, train, select, show_progress)
            ),
        )
    scored, seconds = {}, {}
    for name in methods:
        scored[name], seconds[name] = _run_method(
            name, store, labels, folds, primary, out, cv, train, select, impute, assays, associations, show_progress
        )
    table = auc_table(scored, primary, methods)
    focus = settings.focus if settings.focus in scored else methods[-1]
    pvalues = _bootstrap_tests(scored, focus, methods, primary, settings.n_boot)
    write_report(out, table, pvalues, focus, settings.reference, methods, seconds)
    table3 = None
    if settings.probes and {"momil-as", "momil-stl"} <= set(methods):
        table3 = run_probes(store, labels, folds, out, settings, cv, train, show_progress)
    attention_examples(store, out / "runs" / focus / "models", scored[focus], primary, out / "attention.parquet")
    retrieval = store_retrieval(store, out, settings.map_null_size) if settings.map_null_size else None
    record = provenance(
        "benchmark",
        {"benchmark": dataclasses.asdict(settings), "cv": dataclasses.asdict(cv), "train": dataclasses.asdict(train)},
        inputs={"store": store.path},
        methods=methods,
        focus=focus,
        seconds=seconds,
        retrieval=retrieval,
    )
    write_json_atomic(record, out / "benchmark.json")
    from momil.report.html import render_report

    render_report(out)
    return BenchmarkResult(table, pvalues, scored, seconds, table3)


def _run_method(name, store, labels, folds, primary, out, cv, train, select, impute, assays, associations, show):
    """One method's cross-validation (reused when its folder holds a finished one with the same settings); its
    labelled compound predictions and seconds."""
    from momil.protocol.cv import cross_validate
    from momil.protocol.scoring import attach_labels

    label, train_over, cv_over = METHODS[name]
    folder = out / "runs" / name
    started = time.perf_counter()
    method_cv = dataclasses.replace(cv, **cv_over, overwrite=False)
    if method_cv.select:  # the shared selection made by run_benchmark
        method_cv = dataclasses.replace(method_cv, select=False)
    else:
        method_cv = dataclasses.replace(method_cv, selection="")
    method_train = dataclasses.replace(train, **train_over)
    if _finished(folder):
        _check_reusable(folder, name, method_cv, method_train, impute)
    else:
        if show:
            print(f"benchmark: {name} ({label})", flush=True)
        cross_validate(
            store,
            labels,
            folds,
            primary,
            folder,
            method_cv,
            method_train,
            show_progress=show,
            assays_frame=assays,
            associations=associations,
            select=select,
            impute=impute,
        )
    compounds = read_parquet_frame(folder / "compound_predictions.parquet", "compound predictions")
    scored = attach_labels(compounds, labels)
    with atomic_path(out / "scored" / f"{name}.parquet") as tmp:
        scored.to_parquet(tmp, index=False)
    summary = read_json(folder / "summary.json", "cross-validation summary")
    return scored, float(summary.get("summary", {}).get("seconds", time.perf_counter() - started))


def _bootstrap_tests(scored: dict, focus: str, methods: list[str], primary: list[str], n_boot: int) -> pd.DataFrame:
    """Paired bootstrap tests of ``focus`` against every other method."""
    from momil.protocol.scoring import paired_bootstrap

    tests = []
    for other in methods:
        if other == focus:
            continue
        test = paired_bootstrap(scored[focus], scored[other], primary, n_boot, seed=0)
        tests.append(test.assign(focus=focus, other=other))
    return pd.concat(tests, ignore_index=True) if tests else pd.DataFrame()


def _select_once(store, labels, folds, assays, associations, out: Path, cv, train, select, show_progress) -> Path:
    """Assay selection in every rotation, shared by the methods that use it (reused when already made)."""
    from momil.data.pairs import rotation_wells
    from momil.prep.splits import n_folds, test_folds
    from momil.protocol.selection import load_selection, select_assays

    root = out / "selection"
    for k in test_folds(cv.rotations, n_folds(folds)):
        _, wells = rotation_wells(store.wells, folds, k)
        train_wells, val_wells = wells["train"], wells["val"]
        try:
            load_selection(root / f"rot{k}", train_wells, val_wells)
            continue
        except MomilError:
            pass
        if show_progress:
            print(f"benchmark: assay selection, rotation {k}", flush=True)
        select_assays(
            store,
            labels,
            assays,
            associations,
            train_wells,
            val_wells,
            root / f"rot{k}",
            select,
            train,
            show_progress=show_progress,
            executor=cv.runner(),
        )
    return root


def attention_examples(
    store: InstanceStore,
    models: Path,
    scored: pd.DataFrame,
    primary: list[str],
    path: Path,
    per_assay: int = 2,
    assays: int = 3,
) -> pd.DataFrame | None:
    """Attention of the focus method's first-rotation model over the instances of the top-scored active test
    wells of a few primary assays (one row per instance, with the store's instance metadata)."""
    import torch

    from momil.io.contract import COMPOUND
    from momil.training.checkpoints import load_model

    files = sorted(models.glob("rot*_model0.pt")) if models.exists() else []
    if not files or "fold" not in scored:
        return None
    model, _ = load_model(files[0])
    k = int(files[0].name[3 : files[0].name.index("_")])
    wells = store.wells
    rows = []
    for assay in [a for a in primary if a in model.assays][:assays]:
        mine = scored[(scored["assay"] == assay) & (scored["fold"] == k) & (scored["label"] == 1)]
        for compound, probability in mine.nlargest(per_assay, "probability")[[COMPOUND, "probability"]].itertuples(
            index=False
        ):
            where = np.flatnonzero(
                (wells[COMPOUND].astype(str) == str(compound)).to_numpy()
                & (wells["Metadata_ControlType"] == "trt").to_numpy()
            )
            if not len(where):
                continue
            well = int(where[0])
            bag = torch.from_numpy(np.array(store.bag(well), dtype=np.float32))
            weights = model.attention(bag, model.assays.index(assay)).float().numpy()
            frame = store.instance_meta(well).drop(columns=["_row"], errors="ignore").reset_index(drop=True)
            frame = frame.reindex(range(len(weights)))
            frame["instance"] = np.arange(len(weights))
            frame["attention"] = weights
            frame["Metadata_Plate"] = wells["Metadata_Plate"].iat[well]
            frame["Metadata_Well"] = wells["Metadata_Well"].iat[well]
            frame[COMPOUND] = compound
            frame["assay"] = assay
            frame["probability"] = float(probability)
            rows.append(frame)
    if not rows:
        return None
    table = pd.concat(rows, ignore_index=True)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    if "Metadata_TileY" in table.columns:
        field_views(store, table, path.parent / "fields")
    return table


def find_record(history, stage: str) -> dict | None:
    """The newest provenance record of ``stage`` in a store's history (searching the records it came from)."""
    found = None
    stack = list(history) if isinstance(history, list) else [history]
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            if item.get("stage") == stage:
                found = item
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)
    return found


def store_retrieval(store: InstanceStore, out: Path, null_size: int, seed: int = 0) -> dict | None:
    """Phenotypic activity (copairs mAP of each compound's replicate well means against the negcon wells) of the
    store the methods read, written to ``out``/retrieval.csv for the report; its summary, or None where the store
    has no negcon wells or no replicates."""
    from momil.io.profiles import feature_columns, well_profiles
    from momil.protocol.retrieval import phenotypic_activity

    profiles = well_profiles(store)
    try:
        scores, summary = phenotypic_activity(profiles, feature_columns(profiles), null_size, seed=seed)
    except MomilError:
        return None
    with atomic_path(out / "retrieval.csv") as tmp:
        scores.to_csv(tmp, index=False)
    return summary


def field_views(store: InstanceStore, attention: pd.DataFrame, folder: Path) -> int:
    """RGB views (PNG) of the fields behind the attention examples of an image-derived store, for the report;
    returns how many were written (none when the store's extraction record or images cannot be found)."""
    from momil.imaging.fields import FieldSettings, read_field
    from momil.io.contract import PLATE, SITE, WELL, read_load_data
    from momil.report.figures import save_image
    from momil.report.html import field_composite, field_file_name

    record = find_record(store.manifest.get("history", []), "extract")
    if not record:
        return 0
    try:
        load = Path(record["inputs"]["load_data"]["path"])
        table, _ = read_load_data(load)
        field = FieldSettings(**record["settings"]["field"])
        channels = [tuple(c) for c in record["channels"]]
        root = Path(record.get("root") or load.parent)
    except (KeyError, TypeError, MomilError, OSError):
        return 0
    written = 0
    folder.mkdir(parents=True, exist_ok=True)
    for (plate, well, site), _ in attention.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]):
        rows = table[(table[PLATE] == str(plate)) & (table[WELL] == str(well)) & (table[SITE].astype(str) == str(site))]
        if rows.empty:
            continue
        try:
            image = read_field(rows.iloc[0], channels, field, root)
        except MomilError:
            continue
        rgb, scale = field_composite(image, [m for m, _ in channels])
        name = field_file_name(plate, well, site)
        save_image(rgb, folder / f"{name}.png")
        with atomic_path(folder / f"{name}.json") as tmp:
            tmp.write_text(json.dumps({"scale": scale, "tile": field.tile}))
        written += 1
    return written


def run_probes(store, labels, folds, out: Path, settings: BenchmarkSettings, cv, train, show_progress) -> pd.DataFrame:
    """Table 3: unseen assays (selected in no rotation, associated with a primary) probed on the primary's head of
    the MoMIL + AS models (MTL) and of the STL models, against a single-task model on the unseen assay."""
    from momil.prep.splits import n_folds, test_folds
    from momil.protocol.cv import grid
    from momil.protocol.fewshot import ProbeSettings, choose_unseen, probe_unseen
    from momil.training.checkpoints import load_model

    rotations = test_folds(cv.rotations, n_folds(folds))
    tables = [
        pd.read_csv(out / "selection" / f"rot{k}" / "selection.csv", dtype={"assay": str, "bio_primary": str})
        for k in rotations
    ]
    unseen = choose_unseen(tables, labels, settings.probes)
    if not unseen:
        return pd.DataFrame()
    if show_progress:
        print(f"benchmark: probes on {len(unseen)} unseen assays", flush=True)
    mtl = {k: out / "runs" / "momil-as" / "models" / f"rot{k}_model0.pt" for k in rotations}
    stl_models: dict[str, dict[int, Path]] = {}
    for path in sorted((out / "runs" / "momil-stl" / "models").glob("rot*_model*.pt")):
        k = int(path.name[3 : path.name.index("_")])
        model, _ = load_model(path)
        stl_models.setdefault(model.assays[0], {})[k] = path
    point = grid(cv)[0]
    stl_train = dataclasses.replace(train, **point)
    probe = ProbeSettings(shots=settings.shots, repeats=settings.probe_repeats)
    frames = [
        probe_unseen(
            store,
            labels,
            folds,
            mtl,
            unseen,
            probe,
            stl_train,
            out / "probes",
            rotations,
            label="MoMIL + AS head (MTL)",
            show_progress=show_progress,
        )
    ]
    by_primary: dict[str, dict[str, str]] = {}
    for assay, primary in unseen.items():
        by_primary.setdefault(primary, {})[assay] = primary
    for primary, mine in by_primary.items():
        if set(stl_models.get(primary, {})) >= set(rotations):
            frames.append(
                probe_unseen(
                    store,
                    labels,
                    folds,
                    stl_models[primary],
                    mine,
                    probe,
                    None,
                    None,
                    rotations,
                    label="STL head of the primary",
                    show_progress=show_progress,
                )
            )
    table3 = pd.concat(frames, ignore_index=True)
    with atomic_path(out / "table3.csv") as tmp:
        table3.to_csv(tmp, index=False)
    with atomic_path(out / "table3.md") as tmp:
        tmp.write_text(table3_markdown(table3))
    return table3


def write_report(
    out: Path,
    table: pd.DataFrame,
    pvalues: pd.DataFrame,
    focus: str,
    reference: str,
    methods: list[str],
    seconds: dict[str, float],
) -> None:
    cells, bold = table2_cells(table, pvalues, focus, reference)
    lines = [markdown_table(cells, bold)]
    text = "\n".join(lines)
    text += (
        "\n\nCompound-level test ROC-AUC of the primary assays (predictions pooled over the fold rotations); mean "
        "per rotation: the mean over assays of the mean of each rotation's ROC-AUC; mean PR-AUC: pooled; "
        "bold: best per column. Marks on the focus row: paired one-sided bootstrap against "
        f"{METHODS.get(reference, (reference,))[0]} (* p < 0.001, † p < 0.05, ‡ p < 0.1).\n"
    )
    with atomic_path(out / "table2.md") as tmp:
        tmp.write_text(text)
    with atomic_path(out / "table2.csv") as tmp:
        table.assign(seconds=table["method"].map(seconds)).to_csv(tmp, index=False)
    with atomic_path(out / "pvalues.csv") as tmp:
        pvalues.to_csv(tmp, index=False)
