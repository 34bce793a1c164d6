"""`momil simulate`: synthetic screens in the input contract, for demos, tests and benchmarks.

The generative model (every choice below is a setting of :class:`SimulateSettings`):

* **Targets.** ``n_targets`` latent targets, each with a signature direction in feature space and a group of
  real gene symbols (a gene and its strongest neighbours in the shipped iRefIndex network).
* **Compounds.** Each compound hits each target with probability ``hit_rate`` at a potency in [0.5, 1.5].
  Synthetic compounds come in chemical series (analogues of real molecules made with RDKit) whose members share
  their parent's hits with probability ``series_inheritance``, so chemistry predicts activity as in real
  libraries and chemical-similarity folds matter.
* **Assays.** Each assay reads one target (``related`` assays: primary assays each on their own target,
  secondary assays on a primary's target or another target) or none (``unrelated``: labels independent of
  morphology). Active = potency on the assay's target plus assay noise above a per-assay threshold. Assays of a
  shared target get genes from that target's group, so the written association table agrees with relatedness.
* **Wells.** Plates use the real JUMP-Target-1 384-well map: its 64 DMSO positions are ``negcon`` wells. A
  compound's replicate wells lie on different plates; plates are spread over batches.
* **Instances.** A well's instances come from a mixture of ``n_states`` cell states whose proportions vary from
  well to well (nuisance variation that mean pooling mixes into the signal). In wells of an active compound only
  a fraction ``responder_fraction`` of instances respond, shifted along the signatures of the compound's
  targets by ``effect_size`` (noise sd units): attention can find them, a well mean dilutes them.
* **Plates and batches.** Each plate and batch adds an offset and a per-feature gain large enough that
  plate-wise correction against DMSO wells matters.
* **Labels** are masked to ``label_density`` (``primary_density`` for primary assays); in the ``hti-cnn`` mode
  the compounds, assays and the pattern of known labels are the real hti-cnn matrix's and only label values are
  simulated (matching each assay's real active fraction).

Output folder: ``wells.parquet``, ``instances.parquet`` (or ``load_data.parquet`` + TIFF fields with
``render_images``), ``compounds.parquet``, ``labels.parquet``, ``assays.parquet``, ``associations.parquet``,
``truth/`` (latent activity, assay targets, responding instances) and ``simulation.json``.
Everything streams: one plate is in memory at a time, so paper scale (84,000 wells x 36 x 768) fits.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from momil.config import Settings, setting
from momil.errors import MomilError
from momil.io.atomic import atomic_dir, write_json_atomic
from momil.io.contract import BATCH, COMPOUND, CONTROL, INCHIKEY, PLATE, SITE, SMILES, WELL
from momil.io.provenance import provenance
from momil.progress import progress
from momil.simulate.images import (  # noqa: F401 (moved there; re-exported)
    CHANNELS,
    _write_images,
    render_field,
)
from momil.simulate.sources import (  # noqa: F401 (moved there; re-exported)
    analogue_smiles,
    data_path,
    hti_cnn_labels,
    hti_cnn_smiles,
    ppi_network,
    real_platemap,
)
from momil.simulate.wells import (  # noqa: F401 (moved there; re-exported)
    DMSO,
    _instance_counts,
    _plate_effects,
    _signs,
    plate_layout,
    well_instances,
)


@dataclasses.dataclass
class SimulateSettings(Settings):
    mode: str = setting(
        "synthetic",
        '"synthetic" or "hti-cnn" (real compounds, assays and label pattern)',
        choices=["synthetic", "hti-cnn"],
    )
    n_compounds: int = setting(300, "synthetic: compounds; hti-cnn: keep the n most-labelled (0 = all 10,574)", low=0)
    n_assays: int = setting(24, "synthetic only (hti-cnn has its 209)", low=1)
    n_primary: int = setting(6, low=1)
    n_targets: int = setting(10, low=1)
    related_fraction: float = setting(
        0.6, "secondary assays on a primary's target; the rest split below", low=0, high=1
    )
    unrelated_fraction: float = setting(0.2, "secondary assays whose labels do not depend on morphology", low=0, high=1)
    hit_rate: float = setting(0.2, low=0, high=1)
    series_size: int = setting(6, "synthetic: compounds per chemical series", low=1)
    series_inheritance: float = setting(
        0.8, "synthetic: chance a compound shares its series' hit on a target", low=0, high=1
    )
    assay_noise: float = setting(0.35, "sd of assay-specific noise on potency", low=0)
    active_rate: float = setting(
        0.35, "synthetic: fraction of actives among known labels", low=0, high=1, low_open=True, high_open=True
    )
    label_density: float = setting(
        0.043, "synthetic: fraction of known (compound, assay) pairs overall", low=0, high=1, low_open=True
    )
    primary_density: float = setting(
        0.183, "synthetic: fraction of known pairs in primary assays", low=0, high=1, low_open=True
    )
    replicates: int = setting(3, low=1)
    negcon_per_plate: int = setting(0, "0: all 64 DMSO positions of the real plate map; n: the first n of them", low=0)
    n_batches: int = setting(2, low=1)
    instances: int = setting(36, "per well", low=1)
    instances_jitter: int = setting(0, "counts drawn uniformly in instances +- jitter", low=0)
    sites: int = setting(4, "fields of view per well (instances are split over them as tiles)", low=1)
    dim: int = setting(64, low=1)
    n_states: int = setting(4, low=1)
    state_scale: float = setting(1.5, low=0)
    responder_fraction: float = setting(0.15, low=0, high=1)
    effect_size: float = setting(3.0, low=0)
    signal: str = setting(
        "shift",
        'how responding cells change: "shift" (along the compound\'s signature, so the well mean moves by about '
        'responder_fraction x effect_size) or "hidden" (the same shift with a random sign per cell: the well mean '
        "hardly moves, only single cells show it)",
        choices=["shift", "hidden"],
    )
    subpopulations: str = setting(
        "shared",
        '"shared" (every target acts on the same responding cells) or "per-target" (target k acts on the '
        "responding cells of cell state k mod n_states, so assays on different targets read different cells; "
        "responder_fraction is then the fraction within that state)",
        choices=["shared", "per-target"],
    )
    plate_effect: float = setting(2.0, "sd of plate offsets (noise sd units)", low=0)
    batch_effect: float = setting(2.0, low=0)
    gain_effect: float = setting(0.3, "sd of per-feature multiplicative plate gains", low=0)
    render_images: bool = setting(False, "write 5-channel TIFF fields + load_data.parquet instead of instance features")
    image_size: int = setting(128, low=16)
    seed: int = setting(0)
    overwrite: bool = setting(False)

    # the real matrix fixes these in the hti-cnn mode: its 209 assays, one compound per series (no analogues) and
    # its own known positions and active rates
    SYNTHETIC_ONLY: ClassVar[tuple[str, ...]] = (
        "n_assays",
        "series_size",
        "series_inheritance",
        "active_rate",
        "label_density",
        "primary_density",
    )

    def check(self) -> None:
        if self.mode != "hti-cnn":
            return
        changed = [
            f"--{f.name.replace('_', '-')} {getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name in self.SYNTHETIC_ONLY and getattr(self, f.name) != f.default
        ]
        if changed:
            raise MomilError(
                f"mode hti-cnn takes its assays, compounds and label pattern from the real matrix, so "
                f"{', '.join(changed)} would be ignored: leave {'it' if len(changed) == 1 else 'them'} at the default "
                "or use --mode synthetic"
            )


# --------------------------------------------------------------------------------------------- latent world
@dataclasses.dataclass
class World:
    compounds: np.ndarray  # (C,) ids
    smiles: list  # (C,) SMILES or None
    inchikeys: list
    potency: np.ndarray  # (C, K) 0 where no hit
    assays: np.ndarray  # (T,) names
    assay_target: np.ndarray  # (T,) target index, -1 = unrelated
    assay_role: np.ndarray  # (T,) "primary"/"secondary"
    assay_kind: np.ndarray  # (T,) "primary", "related", "other-target", "unrelated"
    target_genes: list  # (K,) list of gene symbols
    assay_genes: list  # (T,) list of gene symbols
    signatures: np.ndarray  # (K, D) unit vectors
    states: np.ndarray  # (S, D) cell state means


def _gene_groups(n_targets: int, rng: np.random.Generator) -> tuple[list[list[str]], pd.DataFrame]:
    """Gene groups for targets: a hub gene and its 4 strongest neighbours; hubs pairwise not adjacent."""
    net = ppi_network()
    strong = net[net["score"] >= 0.6]
    degree = pd.concat([strong["from"], strong["to"]]).value_counts()
    # hubs with enough strong partners to form a group, but not so central that every group touches them
    hubs = sorted(g for g, d in degree.items() if 4 <= d <= 60 and g.isupper() and g.isalnum())
    rng.shuffle(hubs)
    adjacency: dict[str, set] = {}
    for a, b in zip(strong["from"], strong["to"]):
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    groups: list[list[str]] = []
    used: set[str] = set()
    for hub in hubs:
        if len(groups) == n_targets:
            break
        if hub in used or any(hub in adjacency.get(g, ()) for group in groups for g in group):
            continue
        mine = strong[(strong["from"] == hub) | (strong["to"] == hub)].sort_values("score", ascending=False)
        partners = [b if a == hub else a for a, b in zip(mine["from"], mine["to"])]
        partners = [p for p in dict.fromkeys(partners) if p not in used and p.isalnum() and degree.get(p, 0) <= 60][:4]
        group = [hub] + partners
        groups.append(group)
        used.update(group)
    if len(groups) < n_targets:
        raise MomilError(f"cannot find {n_targets} separate gene groups in the shipped network")
    keep = net["from"].isin(used) & net["to"].isin(used)
    table = net.loc[keep, ["from", "to", "score"]].rename(columns={"from": "gene_a", "to": "gene_b"})
    # every pair inside a group is associated (real score where the network has one, else a strong one)
    extra = []
    have = set(zip(table["gene_a"], table["gene_b"])) | set(zip(table["gene_b"], table["gene_a"]))
    for group in groups:
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if (a, b) not in have:
                    extra.append((a, b, float(rng.uniform(0.7, 0.95))))
    table = pd.concat([table, pd.DataFrame(extra, columns=["gene_a", "gene_b", "score"])], ignore_index=True)
    return groups, table.reset_index(drop=True)


def _assay_design(n_assays: int, settings: SimulateSettings, rng: np.random.Generator):
    k = settings.n_targets
    n_primary = min(settings.n_primary, n_assays)
    if n_primary > k:
        raise MomilError(f"n_primary ({n_primary}) needs at least as many targets (n_targets = {k})")
    target = np.full(n_assays, -1, dtype=np.int64)
    kind = np.empty(n_assays, dtype=object)
    target[:n_primary] = np.arange(n_primary)
    kind[:n_primary] = "primary"
    n_secondary = n_assays - n_primary
    n_unrelated = int(round(settings.unrelated_fraction * n_secondary))
    n_related = min(n_secondary - n_unrelated, int(round(settings.related_fraction * n_secondary)))
    n_other = n_secondary - n_unrelated - n_related
    start = n_primary
    if n_primary:
        target[start : start + n_related] = rng.integers(0, n_primary, n_related)
    kind[start : start + n_related] = "related"
    start += n_related
    other_targets = np.arange(n_primary, k) if k > n_primary else np.arange(k)
    target[start : start + n_other] = rng.choice(other_targets, n_other) if n_other else []
    kind[start : start + n_other] = "other-target"
    start += n_other
    kind[start:] = "unrelated"
    role = np.where(np.arange(n_assays) < n_primary, "primary", "secondary").astype(object)
    return target, role, kind


def build_world(settings: SimulateSettings, rng: np.random.Generator) -> tuple[World, pd.DataFrame, object]:
    """Latent targets, compounds, assays; returns (world, associations, real label matrix or None)."""
    k, d = settings.n_targets, settings.dim
    groups, associations = _gene_groups(k, rng)
    signatures = rng.standard_normal((k, d))
    signatures /= np.linalg.norm(signatures, axis=1, keepdims=True)
    states = rng.standard_normal((settings.n_states, d)) * settings.state_scale

    real = None
    if settings.mode == "hti-cnn":
        real = hti_cnn_labels()
        per_compound = np.bincount(real.rows, minlength=len(real.compounds))
        order = np.lexsort((real.compounds.astype(str), -per_compound))
        if settings.n_compounds:
            order = order[: settings.n_compounds]
        real = real.subset_compounds(real.compounds[np.sort(order)])
        compounds = real.compounds.astype(object)
        smiles_table = hti_cnn_smiles().set_index("inchikey")["smiles"]
        smiles = [smiles_table.get(c) for c in compounds]
        inchikeys = list(compounds)
        # primary assays: the most-labelled ones (the paper's primaries carry the densest labels) among those
        # whose actives are 10-90 % of their labels, so that their test AUCs measure something
        counts = real.counts()
        counts["balanced"] = (counts["n_pos"] >= 0.1 * counts["n_labelled"]) & (
            counts["n_pos"] <= 0.9 * counts["n_labelled"]
        )
        counts = counts.sort_values(["balanced", "n_labelled", "assay"], ascending=[False, False, True])
        ordered = list(counts["assay"])
        assays = np.array(ordered, dtype=object)
        target, role, kind = _assay_design(len(assays), settings, rng)
        n = len(compounds)
        parent = np.arange(n)
    elif settings.mode == "synthetic":
        n = settings.n_compounds
        if n < 1:
            raise MomilError("n_compounds must be at least 1")
        parents_needed = int(np.ceil(n / settings.series_size))
        pool = hti_cnn_smiles()["smiles"].tolist()
        picks = rng.choice(len(pool), size=parents_needed, replace=parents_needed > len(pool))
        series = analogue_smiles([pool[i] for i in picks], settings.series_size, rng)
        smiles, parent = [], []
        for s, members in enumerate(series):
            for member in members:
                smiles.append(member)
                parent.append(s)
        smiles, parent = smiles[:n], np.array(parent[:n])
        compounds = np.array([f"CPD-{i + 1:06d}" for i in range(n)], dtype=object)
        inchikeys = [None] * n
        assays = np.array([f"assay-{i + 1:03d}" for i in range(settings.n_assays)], dtype=object)
        target, role, kind = _assay_design(len(assays), settings, rng)
    else:
        raise MomilError(f"mode must be 'synthetic' or 'hti-cnn', not {settings.mode!r}")

    # activity: series share hits with their parent
    n_series = int(parent.max()) + 1
    series_hits = rng.random((n_series, k)) < settings.hit_rate
    own_hits = rng.random((n, k)) < settings.hit_rate
    inherit = rng.random((n, k)) < settings.series_inheritance
    hits = np.where(inherit, series_hits[parent], own_hits)
    potency = hits * rng.uniform(0.5, 1.5, size=(n, k))

    assay_genes = []
    for t in range(len(assays)):
        if target[t] >= 0:
            group = groups[target[t]]
            assay_genes.append(list(rng.choice(group, size=min(2, len(group)), replace=False)))
        else:  # unrelated assays: a gene of no target group
            assay_genes.append([f"UNREL{t + 1}"])
    world = World(
        compounds, smiles, inchikeys, potency, assays, target, role, kind, groups, assay_genes, signatures, states
    )
    return world, associations, real


def simulate_labels(world: World, settings: SimulateSettings, rng: np.random.Generator, real=None) -> pd.DataFrame:
    """Known labels (long form). hti-cnn: at the real known positions with each assay's real active rate."""
    n, t = len(world.compounds), len(world.assays)
    if real is not None:
        assay_index = pd.Index(world.assays).get_indexer(real.assays[real.cols])
        rows, cols, truth = real.rows, assay_index, real.values
    else:
        density = np.where(world.assay_role == "primary", settings.primary_density, 0.0)
        n_primary = int((world.assay_role == "primary").sum())
        if t > n_primary:
            remaining = settings.label_density * n * t - settings.primary_density * n * n_primary
            density[world.assay_role != "primary"] = np.clip(remaining / (n * (t - n_primary)), 0.005, 1.0)
        known = rng.random((n, t)) < density[None, :]
        rows, cols = np.nonzero(known)
        truth = None
    score = np.empty(len(rows))
    for a in range(t):
        mine = cols == a
        if world.assay_target[a] >= 0:
            signal = world.potency[rows[mine], world.assay_target[a]]
        else:
            signal = rng.random(int(mine.sum()))
        score[mine] = signal + settings.assay_noise * rng.standard_normal(int(mine.sum()))
    labels = np.zeros(len(rows), dtype=np.int8)
    for a in range(t):
        mine = np.flatnonzero(cols == a)
        if len(mine) == 0:
            continue
        rate = truth[mine].mean() if truth is not None else settings.active_rate
        n_active = int(round(rate * len(mine)))
        if n_active:
            labels[mine[np.argsort(-score[mine], kind="stable")[:n_active]]] = 1
    return pd.DataFrame({COMPOUND: world.compounds[rows], "assay": world.assays[cols], "label": labels})


# --------------------------------------------------------------------------------------------------- simulate
def simulate(out, settings: SimulateSettings | None = None, show_progress: bool = True) -> dict:
    """Write a complete screen into folder ``out``; returns a summary."""
    settings = settings or SimulateSettings()
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    if settings.replicates < 1 or settings.instances < 1 or settings.dim < 1:
        raise MomilError("replicates, instances and dim must be at least 1")
    world, associations, real = build_world(settings, rng)
    labels = simulate_labels(world, settings, rng, real)
    wells = plate_layout(world, settings, rng)
    counts = _instance_counts(len(wells), settings, rng)
    plates = list(pd.unique(wells[PLATE]))
    effects = _plate_effects(plates, dict(zip(wells[PLATE], wells[BATCH])), settings, rng)

    with atomic_dir(out, overwrite=settings.overwrite) as tmp:
        (tmp / "truth").mkdir()
        responder_rows = []
        if settings.render_images:
            _write_images(tmp, world, wells, counts, effects, settings, rng, show_progress, responder_rows)
        else:
            _write_instances(tmp, world, wells, counts, effects, settings, rng, show_progress, responder_rows)
        _write_tables(tmp, world, wells, labels, associations, responder_rows, settings)
        summary = {
            "mode": settings.mode,
            "wells": int(len(wells)),
            "plates": len(plates),
            "batches": int(wells[BATCH].nunique()),
            "compounds": int(len(world.compounds)),
            "negcon_wells": int((wells[CONTROL] == "negcon").sum()),
            "instances": int(counts.sum()),
            "dim": settings.dim,
            "assays": int(len(world.assays)),
            "primary_assays": int((world.assay_role == "primary").sum()),
            "labels": int(len(labels)),
            "label_density": round(len(labels) / (len(world.compounds) * len(world.assays)), 4),
            "active_fraction": round(float(labels["label"].mean()), 4) if len(labels) else 0.0,
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json_atomic(provenance("simulate", settings, summary=summary), tmp / "simulation.json")
    return summary


def _write_instances(
    tmp: Path, world, wells, counts, effects, settings: SimulateSettings, rng, show_progress, responder_rows
):
    """instances.parquet: each well's instances with its plate's effect, plate by plate (``responder_rows`` gets
    each responding instance)."""
    feature_names = [f"f{i:03d}" for i in range(settings.dim)]
    plates = list(pd.unique(wells[PLATE]))
    schema = pa.schema(
        [(PLATE, pa.string()), (WELL, pa.string()), (SITE, pa.int32()), ("Metadata_Tile", pa.int32())]
        + [(n, pa.float32()) for n in feature_names]
    )
    with (
        pq.ParquetWriter(tmp / "instances.parquet", schema) as writer,
        progress(total=int(counts.sum()), desc="simulate", unit="inst", enabled=show_progress) as bar,
    ):
        for plate in plates:
            offset, gain = effects[plate]
            idx = np.flatnonzero((wells[PLATE] == plate).to_numpy())
            blocks, plate_col, well_col, site_col, tile_col = [], [], [], [], []
            for i in idx:
                x, responders = well_instances(world, int(wells["_compound"].iat[i]), int(counts[i]), settings, rng)
                blocks.append((x * gain + offset).astype(np.float32))
                n_i = int(counts[i])
                per_site = int(np.ceil(n_i / settings.sites))
                plate_col += [plate] * n_i
                well_col += [wells[WELL].iat[i]] * n_i
                site_col.append(np.arange(n_i) // per_site + 1)
                tile_col.append(np.arange(n_i) % per_site)
                for r in np.flatnonzero(responders):
                    responder_rows.append((plate, wells[WELL].iat[i], int(r)))
            block = np.concatenate(blocks)
            columns = [
                pa.array(plate_col, pa.string()),
                pa.array(well_col, pa.string()),
                pa.array(np.concatenate(site_col).astype(np.int32)),
                pa.array(np.concatenate(tile_col).astype(np.int32)),
            ]
            columns += [pa.array(block[:, j]) for j in range(settings.dim)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            bar.update(len(block))


def _write_tables(tmp: Path, world, wells, labels, associations, responder_rows, settings: SimulateSettings):
    """The screen's input tables (wells, compounds, labels, assays, associations) and its ground truth."""
    pq.write_table(pa.Table.from_pandas(wells.drop(columns="_compound"), preserve_index=False), tmp / "wells.parquet")
    compounds = pd.DataFrame(
        {
            COMPOUND: world.compounds,
            SMILES: pd.array(world.smiles, dtype="string"),
            INCHIKEY: pd.array(world.inchikeys, dtype="string"),
        }
    )
    pq.write_table(pa.Table.from_pandas(compounds, preserve_index=False), tmp / "compounds.parquet")
    pq.write_table(pa.Table.from_pandas(labels, preserve_index=False), tmp / "labels.parquet")
    assays = pd.DataFrame(
        {"assay": world.assays, "role": world.assay_role, "target_genes": ["|".join(g) for g in world.assay_genes]}
    )
    pq.write_table(pa.Table.from_pandas(assays, preserve_index=False), tmp / "assays.parquet")
    pq.write_table(pa.Table.from_pandas(associations, preserve_index=False), tmp / "associations.parquet")
    # ground truth for tests and benchmarks
    truth_assays = assays.assign(latent_target=world.assay_target, kind=world.assay_kind)
    truth_assays.to_parquet(tmp / "truth" / "assays.parquet", index=False)
    potency = pd.DataFrame(world.potency, columns=[f"target_{k}" for k in range(settings.n_targets)])
    potency.insert(0, COMPOUND, world.compounds)
    potency.to_parquet(tmp / "truth" / "compound_potency.parquet", index=False)
    pd.DataFrame(responder_rows, columns=[PLATE, WELL, "instance"]).to_parquet(
        tmp / "truth" / "responders.parquet", index=False
    )
    pd.DataFrame({"target": range(settings.n_targets), "genes": ["|".join(g) for g in world.target_genes]}).to_parquet(
        tmp / "truth" / "targets.parquet", index=False
    )


def compound_classes(screen) -> pd.Series:
    """The simulated compounds' classes from a screen folder's truth: ``target_k`` for a compound acting most
    on latent target k, ``inactive`` for one acting on none (indexed by Metadata_Compound)."""
    path = Path(screen) / "truth" / "compound_potency.parquet"
    if not path.exists():
        raise MomilError(f"{path}: not found -- compound classes come from a screen written by `momil simulate`")
    potency = pd.read_parquet(path).set_index(COMPOUND)
    values = potency.to_numpy()
    names = np.asarray(potency.columns, dtype=object)[values.argmax(axis=1)]
    return pd.Series(np.where((values > 0).any(axis=1), names, "inactive"), index=potency.index, name="class")
