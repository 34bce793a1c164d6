"""`momil extract`: fields of view -> tiles -> backbone embeddings -> an instance store (then `momil correct`).

Fields are read, normalised and tiled by background threads while the backbone embeds batches of tiles (bf16
autocast on CUDA, fp32 on CPU). Each finished field's embeddings are written to a cache folder beside the store
(``<out>.extract/``, one small file per field, atomically), so a run that is interrupted and started again skips
every finished field and ends with the same store. When all fields are done the store is built in one pass (one
bag per well: its fields' tiles in site order, with site and tile position as instance metadata) and the cache
is removed.

Under torchrun (``torchrun --nproc-per-node N -m momil extract ...``) each rank embeds every N-th field that is
not cached yet into the shared cache folder, and rank 0 builds the store from the cache once every rank is done;
the store is the one a single process makes (features within float rounding: each rank batches other tiles).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from momil import distributed
from momil.config import Settings, check_device_name, setting
from momil.errors import InputError, MomilError
from momil.faults import fault_point
from momil.imaging.backbone import make_backbone
from momil.imaging.fields import FieldSettings, channel_map, read_field, tile_field
from momil.io.atomic import atomic_path, remove_stale_temporaries
from momil.io.contract import PLATE, SITE, WELL, read_load_data, read_wells, require_listed_fields
from momil.io.paths import check_output
from momil.io.provenance import provenance
from momil.io.readers import read_json
from momil.progress import progress


@dataclasses.dataclass
class ExtractSettings(Settings):
    backbone: str = setting("vit-b16", "vit-b16, vit-s16, vit-tiny or a timm ViT name")
    weights: str = setting(
        "", "local checkpoint (momil pretrain output, DINO / DINOv2); empty: random weights (warned)"
    )
    batch_tiles: int = setting(64, "tiles per forward pass", low=1)
    dtype: str = setting("float16", "store dtype: float16 or float32", choices=["float16", "float32"])
    device: str = setting("auto", "auto (CUDA when present), cpu or cuda")
    readers: int = setting(
        0,
        "background threads reading and tiling fields; 0: 1 on CPU (the forward uses every core), up to 8 with CUDA",
        low=0,
    )
    overwrite: bool = setting(False)

    def check(self) -> None:
        check_device_name(self.device)


def _field_key(row) -> str:
    text = f"{row[PLATE]}\x1f{row[WELL]}\x1f{row[SITE]}"
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _signature(field: FieldSettings, settings: ExtractSettings, channels) -> str:
    parts = {
        "field": dataclasses.asdict(field),
        "backbone": settings.backbone,
        "weights": settings.weights,
        "channels": channels,
    }
    if settings.weights and Path(settings.weights).exists():
        stat = Path(settings.weights).stat()
        parts["weights_file"] = [stat.st_size, int(stat.st_mtime)]
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _reader(
    rows: list[tuple[int, pd.Series]],
    channels,
    field: FieldSettings,
    root,
    nuclei: int,
    out: queue.Queue,
    stop: threading.Event,
    next_index: list,
    lock: threading.Lock,
) -> None:
    while not stop.is_set():
        with lock:
            if next_index[0] >= len(rows):
                break
            i = next_index[0]
            next_index[0] += 1
        position, row = rows[i]
        try:
            image = read_field(row, channels, field, root)
            tiles, where = tile_field(image, field, nuclei)
            item = (i, position, tiles, where, None)
        except InputError as err:  # a missing or unreadable file: stop or skip, as on_missing says
            item = (i, position, None, None, err)
        except BaseException as err:  # noqa: BLE001 - any other failure ends the run: the main thread re-raises it
            item = (i, position, None, None, _ReaderFailure(err))
        if not _put(out, item, stop):
            return
        if isinstance(item[4], _ReaderFailure):
            return
    _put(out, None, stop)


class _ReaderFailure(Exception):
    """An unexpected error in a reader thread, carried to the main thread (which raises the original)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless the run is stopping (so a reader never blocks forever on a full queue)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


@dataclasses.dataclass
class ExtractResult:
    """What :func:`extract` made: the store, and what this run did."""

    store: object  # momil.io.store.InstanceStore
    fields: int  # fields in the LoadData table
    embedded_now: int  # fields embedded by this run (the others came from the field cache of an interrupted run)
    skipped: list[dict]  # fields left out (--on-missing skip): plate, well, site, problem
    tiles_now: int
    seconds: float
    tiles_per_second: float | None


def _prepare_cache(out: Path, signature: str) -> Path:
    """The folder of per-field embeddings beside ``out`` (kept across interrupted runs with the same settings,
    started again otherwise; temporaries a killed run left are removed)."""
    cache = out.parent / f"{out.name}.extract"
    stamp = cache / "signature.txt"
    if cache.exists() and (not stamp.exists() or stamp.read_text() != signature):
        shutil.rmtree(cache)  # made with other settings: start again
    (cache / "fields").mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache / "fields", "*")  # fields a killed run was writing
    stamp.write_text(signature)
    return cache


def _assemble(out, cache, order, well_table, dim, settings, field, load_data, wells, channels, root, skipped):
    """The store from the cached field embeddings, one bag per well (in plate, well, site order)."""
    from momil.io.store import StoreWriter

    with StoreWriter.create(
        out,
        dim=dim,
        dtype=settings.dtype,
        feature_names=[f"fm{i:04d}" for i in range(dim)],
        overwrite=settings.overwrite,
    ) as writer:
        info = well_table.set_index([PLATE, WELL])
        for (plate, well), group in order.groupby([PLATE, WELL], sort=False):
            feats, metas = [], []
            for _, row in group.iterrows():
                path = cache / "fields" / f"{_field_key(row)}.npz"
                if not path.exists():
                    continue  # skipped field
                saved = np.load(path)
                if len(saved["features"]):
                    feats.append(saved["features"])
                    metas.append(
                        pd.DataFrame(
                            {SITE: row[SITE], "Metadata_TileY": saved["tile_y"], "Metadata_TileX": saved["tile_x"]}
                        )
                    )
            if not feats:
                continue
            meta_row = info.loc[(plate, well)]
            record = {
                PLATE: plate,
                WELL: well,
                **{c: meta_row[c] for c in well_table.columns if c not in (PLATE, WELL)},
            }
            writer.add_bag(record, np.concatenate(feats), pd.concat(metas, ignore_index=True))
        writer.set_provenance(
            provenance(
                "extract",
                {"field": dataclasses.asdict(field), "extract": dataclasses.asdict(settings)},
                inputs={"load_data": load_data, "wells": wells},
                channels=channels,
                root=str(root.resolve()),
                skipped_fields=len(skipped),
            )
        )


def _check_inputs(load_data, wells, out, field: FieldSettings, settings: ExtractSettings):
    """Every check of extract's inputs and output, before anything is embedded: returns the checked output path,
    the LoadData and wells tables, the channel map and the nuclei channel's index."""
    if field.size and field.tile > field.size:
        raise MomilError(
            f"--tile {field.tile} is larger than the resized field (--size {field.size}) -- choose a "
            "tile of at most the field size"
        )
    out = check_output(
        out,
        "dir",
        {"--load-data": load_data, "--wells": wells, "--weights": settings.weights or None},
        settings.overwrite,
    )
    table, available = read_load_data(load_data)
    well_table = read_wells(wells)
    channels = channel_map(field, available)
    names = [m for m, _ in channels]
    if field.nuclei_channel not in names:
        raise MomilError(f"nuclei_channel {field.nuclei_channel!r} is not a model channel ({', '.join(names)})")
    require_listed_fields(table, well_table, load_data)
    return out, table, well_table, channels, names.index(field.nuclei_channel)


def extract(
    load_data,
    wells,
    out,
    field: FieldSettings | None = None,
    settings: ExtractSettings | None = None,
    root=None,
    show_progress: bool = True,
):
    """Embed every field of ``load_data`` (a LoadData table) into a new store ``out``; returns the store.

    ``wells`` is the contract's wells table (compound and control type of every plate/well); ``root`` resolves
    relative PathName_ columns (default: the LoadData file's folder). Returns an :class:`ExtractResult`."""
    from momil.device import resolve_device
    from momil.io.store import InstanceStore

    field = field or FieldSettings()
    settings = settings or ExtractSettings()
    out, table, well_table, channels, nuclei = _check_inputs(load_data, wells, out, field, settings)
    root = Path(root) if root else Path(load_data).parent
    ctx = distributed.context()
    device = distributed.rank_device(resolve_device(settings.device))
    show_progress = show_progress and ctx.is_main
    if not settings.weights and ctx.is_main:
        warnings.warn(
            "no --weights: the backbone has random weights (pretrain one with `momil pretrain` or name "
            "a DINO / DINOv2 checkpoint)",
            stacklevel=2,
        )
    torch.manual_seed(0)  # random weights, when used, are the same every run
    model = make_backbone(settings.backbone, len(channels), field.tile, settings.weights or None).to(device).eval()

    distributed.barrier()  # every rank has checked its inputs and the output before any rank writes
    signature = _signature(field, settings, channels)
    cache = _prepare_cache(out, signature) if ctx.is_main else out.parent / f"{out.name}.extract"
    distributed.barrier()

    order = table.sort_values([PLATE, WELL, SITE], kind="stable")
    rows = [(int(i), row) for i, row in order.iterrows()]
    todo = [(i, row) for i, row in rows if not (cache / "fields" / f"{_field_key(row)}.npz").exists()]
    skipped = read_json(cache / "skipped.json", "extraction cache record") if (cache / "skipped.json").exists() else []
    started = time.perf_counter()
    mine, skipped_now = distributed.shard(todo), []  # under torchrun each rank embeds every world-th field
    n_tiles = _embed_fields(
        mine, channels, field, root, nuclei, model, device, settings, cache, skipped_now, show_progress
    )
    skipped += [item for part in distributed.all_gather_object(skipped_now) for item in part]
    n_tiles = sum(distributed.all_gather_object(n_tiles))

    dim = int(model.num_features)
    if ctx.is_main:  # one rank builds the store from the fields every rank wrote to the shared cache
        with atomic_path(cache / "skipped.json") as tmp:
            tmp.write_text(json.dumps(skipped, indent=1))
        _assemble(out, cache, order, well_table, dim, settings, field, load_data, wells, channels, root, skipped)
        shutil.rmtree(cache, ignore_errors=True)
    distributed.barrier()
    store = InstanceStore(out)
    seconds = time.perf_counter() - started
    return ExtractResult(
        store=store,
        fields=len(rows),
        embedded_now=len(todo) - len(skipped),
        skipped=skipped,
        tiles_now=n_tiles,
        seconds=round(seconds, 2),
        tiles_per_second=round(n_tiles / seconds, 2) if seconds > 0 else None,
    )


def reader_count(readers: int, device) -> int:
    """Reader threads: as asked, or (0) one on CPU, where the backbone's forward already uses every core and a
    second reader slows it (on 2 cores the pipeline reached 87-92 % of the bare forward with two readers, about
    100 % with one), and with CUDA, where reading is the bottleneck, one per core but one, at most 8."""
    if readers > 0:
        return readers
    if torch.device(device).type == "cuda":
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return 1


class _TileBuffer:
    """Tiles of finished reads waiting to be embedded together; each field is written once its tiles are."""

    def __init__(self, model, device, cache: Path):
        from momil.device import autocast_for

        self.model, self.device, self.cache = model, device, cache
        self.autocast = autocast_for(device)
        self.pending: list[dict] = []  # fields whose tiles wait in the buffer
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.done_tiles = 0

    def add(self, info: dict, tiles: np.ndarray) -> None:
        self.pending.append(info)
        if len(tiles):
            self.buffer.append(tiles)
            self.buffered += len(tiles)

    def flush(self) -> None:
        if not self.buffered:
            for info in self.pending:
                _save_field(self.cache, info, np.zeros((0, self.model.num_features), np.float32))
            self.pending = []
            return
        batch = torch.from_numpy(np.concatenate(self.buffer)).to(self.device)
        with torch.inference_mode(), self.autocast:
            embedded = self.model(batch).float().cpu().numpy()
        start = 0
        for info in self.pending:
            n = info["n"]
            _save_field(self.cache, info, embedded[start : start + n])
            fault_point("extract.field")
            start += n
        self.done_tiles += self.buffered
        self.buffer, self.buffered, self.pending = [], 0, []


def _embed_fields(
    todo,
    channels,
    field: FieldSettings,
    root,
    nuclei,
    model,
    device,
    settings: ExtractSettings,
    cache: Path,
    skipped: list,
    show_progress: bool,
) -> int:
    """Read/tile in threads, embed batches of tiles, write each finished field; returns tiles embedded."""
    if not todo:
        return 0
    n_readers = reader_count(settings.readers, device)
    results: queue.Queue = queue.Queue(maxsize=max(4, 2 * n_readers))
    stop = threading.Event()
    lock = threading.Lock()
    next_index = [0]
    threads = [
        threading.Thread(
            target=_reader, args=(todo, channels, field, root, nuclei, results, stop, next_index, lock), daemon=True
        )
        for _ in range(n_readers)
    ]
    for thread in threads:
        thread.start()
    tiles_out = _TileBuffer(model, device, cache)
    finished_readers = 0
    try:
        with progress(total=len(todo), desc="extract", unit="field", enabled=show_progress) as bar:
            while finished_readers < len(threads):
                item = results.get()
                if item is None:
                    finished_readers += 1
                    continue
                _, _, tiles, where, error = item
                row = todo[item[0]][1]
                if error is not None:
                    _field_problem(row, error, field.on_missing, skipped)
                    bar.update(1)
                    continue
                info = {
                    "key": _field_key(row),
                    "n": len(tiles),
                    "tile_y": where["Metadata_TileY"].to_numpy(),
                    "tile_x": where["Metadata_TileX"].to_numpy(),
                }
                tiles_out.add(info, tiles)
                if tiles_out.buffered >= settings.batch_tiles:
                    tiles_out.flush()
                bar.update(1)
                bar.set_postfix(tiles_per_s=f"{tiles_out.done_tiles / max(bar.format_dict['elapsed'], 1e-9):.1f}")
            tiles_out.flush()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
    return tiles_out.done_tiles


def _field_problem(row, error: Exception, on_missing: str, skipped: list) -> None:
    """A field a reader could not use: a reader failure or, with ``on_missing="stop"``, the error is raised; a
    missing or unreadable file is otherwise recorded in ``skipped``."""
    if isinstance(error, _ReaderFailure):
        raise MomilError(
            f"reading field plate {row[PLATE]} well {row[WELL]} site {row[SITE]} failed: "
            f"{type(error.error).__name__}: {error.error}"
        ) from error.error
    if on_missing == "stop":
        raise error
    skipped.append({PLATE: row[PLATE], WELL: row[WELL], SITE: row[SITE], "problem": str(error)})


def _save_field(cache: Path, info: dict, features: np.ndarray) -> None:
    with atomic_path(cache / "fields" / f"{info['key']}.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, features=features.astype(np.float32), tile_y=info["tile_y"], tile_x=info["tile_x"])
