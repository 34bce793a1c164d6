"""Prediction quality on the simulator panel (`benchmarks/quality_panel.toml`): regime x method mean primary ROC-AUC.

Each regime is simulated, ingested, corrected and split, then run through `momil benchmark` with the README's 2-core
settings (``--preset quick``: projector 64, heads 32, lr {1e-2, 3e-3}, 25 epochs, warm-up 3, the model at the end of
the schedule, 32 wells per step; 2 imputation rounds). Everything lives under ``--out`` and is reused when the
script runs again (a killed run loses at most the fit in flight). Printed: the mean compound-level test ROC-AUC over
the primary assays (pooled over the rotations, and the mean of the per-rotation AUCs), its standard deviation over
seeds, the simulator's ceiling (the true latent activity as the score) and attention oracle (a logistic regression
on the mean of the truly responding cells), and MoMIL all minus mean-LR and minus multi-label MIL.

    python benchmarks/bench_quality.py --quick          # seed 0, rotations 0 and 1: iterate
    python benchmarks/bench_quality.py                  # the panel: every regime x every seed
    python benchmarks/bench_quality.py --large          # the large regime, once, at the end
    python benchmarks/bench_quality.py --regimes batchy --seeds 0 --train-seeds 0,1,2   # the training seed's spread
    python benchmarks/bench_quality.py --quick --train-seeds 0,1 --variant floor --flags="--linear-floor"  # an A/B

A regime's seeds are the simulator's: each is another screen. ``--train-seeds`` trains the same screens again with
other training seeds (``momil benchmark --seed``: initial weights, dropout masks, the order of the wells); the
panel table stays the one of training seed 0, and a second table gives each method's mean and standard deviation
over the training seeds, with the standard deviation of MoMIL + AS + LI's mean on each screen.

``--variant NAME --flags="..."`` runs the same prepared screens with extra `momil benchmark` flags (an A/B against
the defaults): its benchmark folders are ``bench-<rotations>-NAME`` and its tables ``quality[-quick]-NAME.csv``, so a
variant never mixes rows with the defaults' run or another variant's, and its screens are not simulated again.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from momil.cli import main as momil
from momil.config import tomllib  # the standard library's, or tomli before Python 3.11
from momil.simulate.screen import SimulateSettings

PANEL = Path(__file__).with_name("quality_panel.toml")
METHODS = "mean-lr,mean-mlp,multilabel-mil,momil-all"
AB = ",momil-as,momil-as-li"
TWO_CORE = ["--preset", "quick", "--rounds", "2", "--probes", "0", "--n-boot", "200"]
ALL_METHODS = (METHODS + AB).split(",")
NOT_SIMULATE = {"seeds", "ab"}


def regimes(large: bool) -> list[tuple[str, dict]]:
    panel = tomllib.loads(PANEL.read_text())
    table = panel["large"] if large else panel["regime"]
    return [(name, {**panel["defaults"], **spec}) for name, spec in table.items()]


def run(*argv) -> None:
    code = momil([str(a) for a in argv] + ["--quiet"])
    if code != 0:
        raise SystemExit(f"momil {argv[0]} failed ({code})")


def prepare(folder: Path, spec: dict, seed: int) -> None:
    if not (folder / "screen" / "simulation.json").exists():
        flags = []
        for key, value in spec.items():
            if key not in NOT_SIMULATE and not (spec["mode"] == "hti-cnn" and key in SimulateSettings.SYNTHETIC_ONLY):
                flags += [f"--{key.replace('_', '-')}", value]
        run("simulate", "--out", folder / "screen", *flags, "--seed", seed)
    if not (folder / "raw" / "manifest.json").exists():
        run(
            "ingest",
            "--instances",
            folder / "screen" / "instances.parquet",
            "--wells",
            folder / "screen" / "wells.parquet",
            "--out",
            folder / "raw",
        )
    if not (folder / "store" / "manifest.json").exists():
        run("correct", "--store", folder / "raw", "--out", folder / "store")
    if not (folder / "folds.parquet").exists():
        screen = folder / "screen"
        run(
            "split",
            "--wells",
            screen / "wells.parquet",
            "--labels",
            screen / "labels.parquet",
            "--compounds",
            screen / "compounds.parquet",
            "--out",
            folder / "folds.parquet",
        )


def panel_methods(spec: dict, only: list[str] | None = None) -> list[str]:
    """The methods a regime runs (+ AS and + AS + LI only where the panel asks for them), or those of ``only``."""
    methods = (METHODS + (AB if spec.get("ab") else "")).split(",")
    return [m for m in methods if only is None or m in only]


def bench_folder(folder: Path, rotations: str, train_seed: int = 0, variant: str = "") -> Path:
    """Where one `momil benchmark` run of a prepared screen lives: by rotations, training seed and variant."""
    name = f"bench-{rotations.replace(',', '')}" + (f"-t{train_seed}" if train_seed else "")
    return folder / (f"{name}-{variant}" if variant else name)


def variant_flags(variant: str | None, flags: str | None) -> tuple[str, list[str]]:
    """``--variant`` and ``--flags`` checked: (the variant's name, the extra `momil benchmark` flags)."""
    extra = shlex.split(flags or "")
    if extra and not variant:
        raise ValueError("--flags needs --variant NAME, so that the variant's runs and tables are kept apart")
    if variant and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", variant):
        raise ValueError(f"--variant must be letters, digits, '.', '_' or '-', not {variant!r}")
    if variant and not extra:
        raise ValueError("--variant needs --flags: the `momil benchmark` flags the variant changes")
    owned = sorted({f.split("=")[0] for f in extra if f.split("=")[0] in owned_flags()})
    if owned:
        raise ValueError(f"--flags: {', '.join(owned)} is set by the panel itself; choose another flag")
    return variant or "", extra


def owned_flags() -> set[str]:
    """The flags the panel sets on every `momil benchmark` run itself, which a variant's --flags may not change (the
    2-core settings of ``TWO_CORE`` it may: flags after them override them)."""
    argv = benchmark_argv(Path(), {}, "0,1")
    return {str(a) for a in argv if str(a).startswith("--")} - set(TWO_CORE) | {"--quiet"}


def benchmark(
    folder: Path,
    spec: dict,
    rotations: str,
    train_seed: int = 0,
    only: list[str] | None = None,
    variant: str = "",
    extra: list[str] | None = None,
) -> pd.DataFrame:
    run(*benchmark_argv(folder, spec, rotations, train_seed, only, variant), *(extra or []))
    return pd.read_csv(bench_folder(folder, rotations, train_seed, variant) / "table2.csv")


def benchmark_argv(
    folder: Path, spec: dict, rotations: str, train_seed: int = 0, only: list[str] | None = None, variant: str = ""
) -> list:
    """The panel's `momil benchmark` command line for one prepared screen (without a variant's extra flags)."""
    screen = folder / "screen"
    methods = panel_methods(spec, only)
    return [
        "benchmark",
        "--store",
        folder / "store",
        "--labels",
        screen / "labels.parquet",
        "--folds",
        folder / "folds.parquet",
        "--assays",
        screen / "assays.parquet",
        "--associations",
        screen / "associations.parquet",
        "--out",
        bench_folder(folder, rotations, train_seed, variant),
        "--methods",
        ",".join(methods),
        "--focus",
        "momil-all" if "momil-all" in methods else methods[-1],
        "--reference",
        "mean-lr",
        "--rotations",
        rotations,
        *TWO_CORE,
        "--seed",
        train_seed,
    ]


def ceilings(folder: Path, rotations: list[int]) -> dict:
    """The simulator's ceiling (true latent activity of the assay's target as the score) and attention oracle
    (mean-LR on the mean of each well's truly responding cells), mean over the primary assays, test compounds of
    ``rotations`` pooled."""
    from sklearn.metrics import roc_auc_score

    from momil.io.contract import read_labels
    from momil.io.store import InstanceStore
    from momil.model.linear import fit_assay
    from momil.prep.splits import n_folds, read_folds, rotation

    screen = folder / "screen"
    truth = pd.read_parquet(screen / "truth" / "assays.parquet").set_index("assay")
    potency = pd.read_parquet(screen / "truth" / "compound_potency.parquet").set_index("Metadata_Compound")
    labels = read_labels(screen / "labels.parquet").to_long()
    folds = read_folds(folder / "folds.parquet").set_index("Metadata_Compound")["fold"]
    store = InstanceStore(folder / "store")
    responders = pd.read_parquet(screen / "truth" / "responders.parquet")
    chosen = {(p, w): g["instance"].to_numpy() for (p, w), g in responders.groupby(["Metadata_Plate", "Metadata_Well"])}
    rows = []
    trt = np.flatnonzero((store.wells["Metadata_ControlType"] == "trt").to_numpy())
    for i in trt:
        bag = store.bag(int(i)).astype(np.float64)
        key = (store.wells["Metadata_Plate"].iat[i], store.wells["Metadata_Well"].iat[i])
        picked = chosen.get(key)
        rows.append(bag[picked].mean(axis=0) if picked is not None and len(picked) else bag.mean(axis=0))
    oracle = pd.DataFrame(rows).assign(c=store.wells["Metadata_Compound"].iloc[trt].astype(str).to_numpy())
    oracle = oracle.groupby("c").mean()
    k_folds = n_folds(folds.reset_index())
    ceiling, attention = [], []
    for assay in truth.index[truth["role"] == "primary"]:
        mine = labels[labels["assay"] == assay].set_index("Metadata_Compound")["label"]
        mine = mine[mine.index.isin(folds.index)]
        target = int(truth.loc[assay, "latent_target"])
        test = mine[folds.reindex(mine.index).isin(rotations).to_numpy()]
        if test.nunique() == 2 and target >= 0:
            score = potency.reindex(test.index)[f"target_{target}"].fillna(0).to_numpy()
            ceiling.append(roc_auc_score(test.to_numpy(), score))
        pooled_y, pooled_p = [], []
        for k in rotations:
            rot = rotation(k, k_folds)
            train = mine[folds.reindex(mine.index).isin(rot.train_folds).to_numpy()]
            tested = mine[(folds.reindex(mine.index) == k).to_numpy()]
            model = fit_assay(oracle.loc[train.index].to_numpy(), train.to_numpy())
            if model is None or not len(tested):
                continue
            pooled_y.append(tested.to_numpy())
            pooled_p.append(model.predict_proba(oracle.loc[tested.index].to_numpy())[:, 1])
        if pooled_y and len(np.unique(np.concatenate(pooled_y))) == 2:
            attention.append(roc_auc_score(np.concatenate(pooled_y), np.concatenate(pooled_p)))
    return {
        "ceiling": float(np.mean(ceiling)) if ceiling else float("nan"),
        "oracle": float(np.mean(attention)) if attention else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quality", help="working folder (reused: the run resumes)")
    parser.add_argument("--quick", action="store_true", help="seed 0 and rotations 0,1 only")
    parser.add_argument("--large", action="store_true", help="the large regime instead of the panel")
    parser.add_argument("--regimes", help="comma-separated subset of the regimes")
    parser.add_argument("--seeds", help="comma-separated subset of each regime's seeds (default: all of them)")
    parser.add_argument(
        "--train-seeds",
        default="0",
        help="comma-separated training seeds (momil benchmark --seed) to train each screen with (default: 0)",
    )
    parser.add_argument(
        "--methods",
        help=f"comma-separated subset of the panel's methods ({METHODS}{AB}) to run again, the other methods' rows "
        "of the earlier run kept (default: all; mean-lr is always run, every difference reads it)",
    )
    parser.add_argument("--variant", help="a name for an A/B run with --flags (its own folders and tables)")
    parser.add_argument("--flags", help='extra `momil benchmark` flags for the variant, e.g. --flags="--linear-floor"')
    args = parser.parse_args()
    try:
        variant, extra = variant_flags(args.variant, args.flags)
    except ValueError as err:
        parser.error(str(err))
    asked = only = None
    if args.methods:
        asked = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(asked) - set(ALL_METHODS))
        if unknown or not asked:
            parser.error(f"--methods: {', '.join(unknown) or 'none given'}: choose from {METHODS}{AB}")
        only = list(dict.fromkeys(["mean-lr", *asked]))
    try:
        train_seeds = [int(t) for t in args.train_seeds.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--train-seeds must be comma-separated whole numbers, not {args.train_seeds!r}")
    if not train_seeds or min(train_seeds) < 0:
        parser.error(f"--train-seeds must be comma-separated whole numbers >= 0, not {args.train_seeds!r}")
    rotations = "0,1" if args.quick else "all"
    rotation_list = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    rows = []
    for name, spec in regimes(args.large):
        if args.regimes and name not in args.regimes.split(","):
            continue
        seeds = spec["seeds"][:1] if args.quick else spec["seeds"]
        if args.seeds:
            seeds = [seed for seed in seeds if str(seed) in args.seeds.split(",")]
        if asked and not panel_methods(spec, asked):  # e.g. + AS + LI asked for, a regime that does not run it
            continue
        for seed in seeds:
            folder = Path(args.out) / f"{name}-s{seed}"
            started = time.perf_counter()
            prepare(folder, spec, seed)
            bounds = ceilings(folder, rotation_list)
            for train_seed in train_seeds:
                table = benchmark(folder, spec, rotations, train_seed, only, variant, extra)
                for _, row in table.iterrows():
                    rows.append(
                        {
                            "regime": name,
                            "seed": seed,
                            "train_seed": train_seed,
                            "method": row["method"],
                            "pooled": row["mean"],
                            "per_rotation": row.get("mean_per_rotation", float("nan")),
                            "pr_auc": row.get("mean_pr_auc", float("nan")),
                            **bounds,
                        }
                    )
            print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    stem = "quality-large" if args.large else "quality-quick" if args.quick else "quality"
    stem = f"{stem}-{variant}" if variant else stem
    order = [name for name, _ in regimes(args.large)]
    columns = ["regime", "seed", "train_seed", "method", "pooled", "per_rotation", "pr_auc", "ceiling", "oracle"]
    done = pd.DataFrame(rows, columns=columns)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    panel = done[done["train_seed"] == 0].drop(columns="train_seed")
    frame = merged(panel, Path(args.out) / f"{stem}.csv", order, key=("regime", "seed", "method"))
    if len(frame):
        frame.to_csv(Path(args.out) / f"{stem}.csv", index=False)
        print(panel_table(frame))
        print(
            targets_table(frame, [name for name, spec in regimes(args.large) if spec["subpopulations"] == "per-target"])
        )
    every = merged(
        done, Path(args.out) / f"{stem}-train-seeds.csv", order, key=("regime", "seed", "train_seed", "method")
    )
    if len(every):
        every.to_csv(Path(args.out) / f"{stem}-train-seeds.csv", index=False)
        if every["train_seed"].nunique() > 1:
            print("\n" + train_seed_table(every))
    return 0


def merged(
    frame: pd.DataFrame, path: Path, order: list[str], key: tuple[str, ...] = ("regime", "seed", "method")
) -> pd.DataFrame:
    """This run's rows with the rows of ``path`` (an earlier run) for the cells (the ``key`` columns: regime, seed,
    method) it did not run, so that ``--seeds 0`` then ``--seeds 1`` give the table of both, and ``--methods
    mean-mlp`` replaces that method's rows only; regimes in the panel's order."""
    if path.exists() and len(frame):
        earlier = pd.read_csv(path)
        done = set(zip(*(frame[k] for k in key)))
        earlier = earlier[[cell not in done for cell in zip(*(earlier[k] for k in key))]]
        frame = pd.concat([earlier, frame], ignore_index=True)
    elif path.exists():
        frame = pd.read_csv(path)
    if not len(frame):
        return frame
    rank = {name: i for i, name in enumerate(order)}
    method = frame["method"].map({m: i for i, m in enumerate(ALL_METHODS)}).fillna(len(ALL_METHODS))
    position = frame["regime"].map(rank).fillna(len(rank)) * 1e9 + frame["seed"] * 1e6 + method
    if "train_seed" in frame.columns:
        position = position + frame["train_seed"] * 100
    return frame.iloc[np.argsort(position.to_numpy(), kind="stable")].reset_index(drop=True)


def targets_table(frame: pd.DataFrame, per_target: list[str]) -> str:
    """The panel's targets (``quality_panel.toml``) against this table: what each reads, met or not."""
    gap = frame.pivot_table(index="regime", columns="method", values="pooled", aggfunc="mean", sort=False)
    lines = ["\n| target | result | status |", "|---|---|---|"]

    def add(target: str, values: pd.Series, low: float, average: float | None = None) -> None:
        values = values.dropna()
        if values.empty:
            return
        worst = values.idxmin()
        result = f"lowest {worst} {values[worst]:+.3f}"
        met = bool(values.min() >= low)
        if average is not None:
            result = f"average {values.mean():+.3f}, " + result
            met = met and bool(values.mean() >= average)
        lines.append(f"| {target} | {result} | {'met' if met else 'not met'} |")

    for method, name in (("momil-all", "MoMIL all"), ("momil-as-li", "MoMIL + AS + LI")):
        if {method, "mean-lr"} <= set(gap.columns):
            add(f"{name} - mean-LR >= -0.01 everywhere, >= +0.03 on average", gap[method] - gap["mean-lr"], -0.01, 0.03)
            if "multilabel-mil" in gap.columns:
                mine = [r for r in per_target if r in gap.index]
                add(
                    f"{name} - multi-label MIL >= 0 (per-target regimes)",
                    (gap[method] - gap["multilabel-mil"])[mine],
                    0,
                )
    for method, name in (("mean-mlp", "mean-MLP"), ("multilabel-mil", "multi-label MIL")):
        if {method, "mean-lr"} <= set(gap.columns):
            add(f"{name} - mean-LR >= -0.02", gap[method] - gap["mean-lr"], -0.02)
    as_li = frame[(frame["method"] == "momil-as-li") & frame["pooled"].notna()]  # the regimes that run it
    if as_li["seed"].nunique() > 1:
        by_seed = as_li.groupby("seed")["pooled"].mean()
        sd = float(by_seed.std(ddof=0))
        lines.append(
            f"| sd over seeds of MoMIL + AS + LI's mean <= 0.02 | {sd:.3f} (means "
            f"{', '.join(f'{v:.3f}' for v in by_seed)}) | {'met' if sd <= 0.02 else 'not met'} |"
        )
        # the seeds are the simulator's: each is another screen, and the floor moves with it too
        floor = frame[frame["method"] == "mean-lr"].merge(as_li[["regime", "seed"]])  # the same regime x seed cells
        floor_by_seed = floor.groupby("seed")["pooled"].mean()
        lift, floor_sd = float((by_seed - floor_by_seed).std(ddof=0)), float(floor_by_seed.std(ddof=0))
        lines.append(
            f"| (not a target) sd over seeds of MoMIL + AS + LI - mean-LR, same regimes | {lift:.3f} "
            f"(mean-LR's own sd {floor_sd:.3f}) | |"
        )
        # the ceiling (the true latent activity as the score) of the same cells: how much the screens themselves
        # differ; a model that kept its distance to the ceiling on every screen would still move this much
        ceiling_by_seed = as_li.groupby("seed")["ceiling"].mean()
        gap_sd = float((by_seed - ceiling_by_seed).std(ddof=0))
        lines.append(
            f"| (not a target) sd over seeds of the ceiling, same regimes | {float(ceiling_by_seed.std(ddof=0)):.3f} "
            f"(means {', '.join(f'{v:.3f}' for v in ceiling_by_seed)}; of MoMIL + AS + LI - ceiling {gap_sd:.3f}) | |"
        )
    return "\n".join(lines)


def train_seed_table(frame: pd.DataFrame) -> str:
    """Each screen (regime x simulator seed) trained with several training seeds: per method the mean pooled AUC
    over the training seeds ± their standard deviation, and the standard deviation over the training seeds of
    MoMIL + AS + LI's mean over the regimes that run it (one line per simulator seed)."""
    methods = list(dict.fromkeys(frame["method"]))
    head = ["regime", "seed", "training seeds"] + methods
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (regime, seed), group in frame.groupby(["regime", "seed"], sort=False):
        cells = [regime, str(seed), ",".join(str(t) for t in sorted(group["train_seed"].unique()))]
        for m in methods:
            values = group.loc[group["method"] == m, "pooled"].dropna()
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=0):.3f}" if len(values) else "")
        lines.append("| " + " | ".join(cells) + " |")
    as_li = frame[(frame["method"] == "momil-as-li") & frame["pooled"].notna()]
    for seed, group in as_li.groupby("seed"):
        by_train = group.groupby("train_seed")["pooled"].mean()
        if len(by_train) > 1:
            lines.append(
                f"\nseed {seed}: sd over training seeds of MoMIL + AS + LI's mean {by_train.std(ddof=0):.3f} (target "
                f"0.02; means {', '.join(f'{v:.3f}' for v in by_train)}, {group['regime'].nunique()} regime(s))"
            )
    return "\n".join(lines)


def panel_table(frame: pd.DataFrame) -> str:
    """One Markdown table: regime x method (pooled mean AUC, per-rotation mean, sd over seeds), the bounds, and
    MoMIL all minus mean-LR and minus multi-label MIL."""
    methods = list(dict.fromkeys(frame["method"]))
    head = (
        ["regime"]
        + [f"{m} (pooled / per rot. ± sd)" for m in methods]
        + ["ceiling", "oracle", "MoMIL - LR", "MoMIL - MLMIL", "+ AS + LI - LR"]
    )
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for regime, group in frame.groupby("regime", sort=False):
        cells = [regime]
        mean = {}
        for m in methods:
            mine = group[group["method"] == m]
            mean[m] = mine["pooled"].mean()
            if mean[m] != mean[m]:  # a method this regime does not run (+ AS, + AS + LI)
                cells.append("")
                continue
            sd = mine["pooled"].std(ddof=0) if len(mine) > 1 else float("nan")
            cells.append(f"{mean[m]:.3f} / {mine['per_rotation'].mean():.3f}" + (f" ± {sd:.3f}" if sd == sd else ""))
        cells += [f"{group['ceiling'].mean():.3f}", f"{group['oracle'].mean():.3f}"]
        for a, b in (("momil-all", "mean-lr"), ("momil-all", "multilabel-mil"), ("momil-as-li", "mean-lr")):
            gap = mean.get(a, np.nan) - mean.get(b, np.nan)
            cells.append(f"{gap:+.3f}" if gap == gap else "")  # blank where either method did not run
        lines.append("| " + " | ".join(cells) + " |")
    gap = frame.pivot_table(index="regime", columns="method", values="pooled", aggfunc="mean", sort=False)
    if {"momil-all", "mean-lr"} <= set(gap.columns):
        diff = gap["momil-all"] - gap["mean-lr"]
        lines.append(
            f"\nMoMIL all - mean-LR: {diff.mean():+.3f} on average (target +0.03); below -0.01 in "
            f"{int((diff < -0.01).sum())} of {len(diff)} regimes (target 0)"
            + (f": {', '.join(diff.index[diff < -0.01])}" if (diff < -0.01).any() else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
