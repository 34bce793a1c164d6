"""Training speed of MoMIL's batched heads.

    python benchmarks/bench_train.py [--steps 20] [--rounds 3] [--wells 16,32,64] [--device cpu|cuda|auto]
                                     [--store PATH_TO_PAPER_SCALE_CORRECTED_STORE]

1. A paper-shaped batch (D=768, 36 instances per well, 200 assays, 4.3 % of (well, assay) pairs labelled):
   training steps (forward, backward, AdamW) of the batched model against two plain Python loops over 200
   separate head modules (torch.nn layers, torch.optim.AdamW), in the same run: labelled pairs/s, wells/s, and
   the ratios. The *plain loop* runs every head on every well of the batch and masks the loss to the labelled
   pairs (the straightforward multi-head model); the *pairs-only loop* runs each head only on its labelled wells
   and skips heads without labels (the same pairs as MoMIL: a stronger reference). Each time is the median of
   per-step times over ``--rounds`` rounds that alternate the methods, so drift on a shared machine hits all.
2. The step time when the number of assays grows 10x (2,000) at the same number of labelled pairs.
3. The head path's achieved GFLOP/s against a plain matmul of the same total size on this machine.
4. With --store (a paper-scale corrected store, e.g. from the README's paper-scale commands): one full training
   epoch over its 84,000 wells read from the memory-mapped store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from momil.device import keep_freed_memory
from momil.model.momil import MoMIL  # noqa: E402
from momil.training.fit import training_step
from momil.training.optim import make_optimizers

from _util import print_table  # noqa: E402

D, N, DENSITY = 768, 36, 0.043


def make_batch(wells: int, assays: int, pairs_target: int | None, seed: int = 0):
    rng = np.random.default_rng(seed)
    bags = torch.randn(wells, N, D)
    mask = torch.ones(wells, N, dtype=torch.bool)
    if pairs_target is None:
        known = rng.random((wells, assays)) < DENSITY
    else:  # a fixed number of labelled pairs spread over all assays
        known = np.zeros((wells, assays), dtype=bool)
        flat = rng.choice(wells * assays, size=pairs_target, replace=False)
        known.flat[flat] = True
    rows, cols = np.nonzero(known)
    labels = torch.from_numpy(rng.integers(0, 2, len(rows)).astype(np.float32))
    return bags, mask, torch.from_numpy(rows), torch.from_numpy(cols), labels


class LoopHead(nn.Module):
    """One assay's DSMIL head as its own module (the per-assay reference a plain implementation would use)."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Dropout(0.5))
        self.inst = nn.Linear(h, 1)
        self.q = nn.Linear(h, h)
        self.c = nn.Linear(h, 1)

    def forward(self, x):  # (B, N, d)
        h = self.gamma(x)
        inst = self.inst(h).squeeze(-1)
        critical = inst.argmax(1)
        rows = torch.arange(len(x), device=x.device)
        q = torch.tanh(self.q(h))
        a = torch.softmax(torch.bmm(q, q[rows, critical].unsqueeze(-1)).squeeze(-1) / h.shape[-1] ** 0.5, dim=1)
        bag = self.c(torch.bmm(a.unsqueeze(1), h).squeeze(1)).squeeze(-1)
        return bag, inst[rows, critical]


class LoopModel(nn.Module):
    def __init__(self, assays: int, d: int = 128, h: int = 64):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(D, d), nn.ReLU(), nn.Dropout(0.5))
        self.heads = nn.ModuleList([LoopHead(d, h) for _ in range(assays)])

    def loss(self, bags, rows, cols, labels):
        """Pairs-only: each head with labels in the batch runs on its labelled wells."""
        x = self.projector(bags)
        total = 0.0
        bce = nn.functional.binary_cross_entropy_with_logits
        for t in torch.unique(cols).tolist():
            mine = cols == t
            bag, top = self.heads[t](x[rows[mine]])
            total = total + 0.5 * (bce(bag, labels[mine], reduction="sum") + bce(top, labels[mine], reduction="sum"))
        return total / len(rows)

    def masked_loss(self, bags, known, target):
        """Plain: every head runs on every well; the loss is masked to the labelled pairs (``known`` (B, T))."""
        x = self.projector(bags)
        bce = nn.functional.binary_cross_entropy_with_logits
        total = 0.0
        for t, head in enumerate(self.heads):
            bag, top = head(x)
            weight = known[:, t]
            total = total + 0.5 * (
                (bce(bag, target[:, t], reduction="none") * weight).sum()
                + (bce(top, target[:, t], reduction="none") * weight).sum()
            )
        return total / known.sum()


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, steps: int) -> float:
    """Median seconds per step after two warm-up steps."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        _sync()
        started = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def time_alternating(steps: dict, rounds: int) -> dict:
    """``steps`` name -> (step, steps per round): per-step times collected over rounds that alternate the
    methods; the median of each method's times."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (step, count) in steps.items():
            times[name].append(time_steps(step, count))
    return {name: float(np.median(values)) for name, values in times.items()}


def batched_step(model, batch, lazy_heads: bool = True):
    """momil's own training step (momil.train.training_step), lazy per-head AdamW by default."""
    bags, mask, rows, cols, labels = (t.to(DEVICE) for t in batch)
    model.to(DEVICE)
    optimizer, lazy = make_optimizers(model, 1e-4, 5e-4, lazy_heads, DEVICE)
    rows, cols, labels = rows.cpu().numpy(), cols.cpu().numpy(), labels.cpu().numpy()

    def step():
        training_step(model, bags, mask, rows, cols, labels, optimizer, lazy, 1e-4, DEVICE)

    return step


def loop_step(model, optimizer, batch, plain: bool = False):
    bags, _, rows, cols, labels = (t.to(DEVICE) for t in batch)
    known = torch.zeros(len(bags), len(model.heads), device=DEVICE)
    target = torch.zeros_like(known)
    known[rows, cols] = 1.0
    target[rows, cols] = labels

    def step():
        loss = model.masked_loss(bags, known, target) if plain else model.loss(bags, rows, cols, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def head_flops(pairs: int, d: int = 128, h: int = 64) -> float:
    """Forward multiply-adds x2 of the DSMIL head path per step, times 3 for forward + backward."""
    per_pair = N * (d * h + h * 1 + h * h + h) + N * h + h
    return 3 * 2.0 * pairs * per_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the methods")
    parser.add_argument("--wells", default="32,64", help="wells per step, comma-separated (training default: 32)")
    parser.add_argument("--store", help="paper-scale corrected store for a full-epoch timing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (training runs bf16 autocast on CUDA)")
    args = parser.parse_args()
    global DEVICE
    from momil.device import resolve_device

    DEVICE = resolve_device(args.device)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    kept = keep_freed_memory() if DEVICE.type == "cpu" else False  # as momil.train.fit does, for every model here
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}"
        f"{', malloc keeps freed memory' if kept else ''}\n"
    )

    rows, speedups = [], {}
    for wells in [int(w) for w in args.wells.split(",")]:
        batch = make_batch(wells, 200, None)
        pairs = len(batch[2])
        momil = MoMIL(D, [f"t{i}" for i in range(200)], "dsmil", 128, 64)
        plain = MoMIL(D, [f"t{i}" for i in range(200)], "dsmil", 128, 64)
        loop, loop_plain = LoopModel(200).to(DEVICE), LoopModel(200).to(DEVICE)
        slow = max(3, args.steps // 4)
        names = {
            "lazy": "MoMIL batched heads, lazy AdamW",
            "dense": "MoMIL batched heads, plain AdamW",
            "pairs": "pairs-only loop over 200 head modules",
            "plain": "plain loop over 200 head modules",
        }
        t = time_alternating(
            {
                "lazy": (batched_step(momil, batch), args.steps),
                "dense": (batched_step(plain, batch, lazy_heads=False), args.steps),
                "pairs": (loop_step(loop, torch.optim.AdamW(loop.parameters(), 1e-4), batch), slow),
                "plain": (
                    loop_step(loop_plain, torch.optim.AdamW(loop_plain.parameters(), 1e-4), batch, plain=True),
                    slow,
                ),
            },
            args.rounds,
        )
        speedups[wells] = (t["pairs"] / t["lazy"], t["plain"] / t["lazy"])

        for key, what in names.items():
            rows.append(
                {
                    "wells": wells,
                    "what": what,
                    "ms/step": f"{1000 * t[key]:.1f}",
                    "pairs": pairs,
                    "pairs/s": f"{pairs / t[key]:,.0f}",
                    "wells/s": f"{wells / t[key]:,.0f}",
                    "plain loop / this": f"{t['plain'] / t[key]:.1f}x",
                    "pairs-only loop / this": f"{t['pairs'] / t[key]:.1f}x",
                }
            )
    print("1. training steps on a paper-shaped batch (D=768, 36 instances, 200 assays, 4.3 % labelled)")
    print_table(rows)
    for wells, (strong, naive) in speedups.items():
        print(
            f"   {wells} wells per step: batched MoMIL is {naive:.1f}x the plain loop, {strong:.1f}x the pairs-only "
            f"loop (target >= 10x)"
        )
    print()

    wells = max(speedups)
    batch = make_batch(wells, 200, None)
    pairs = len(batch[2])
    momil = MoMIL(D, [f"t{i}" for i in range(200)], "dsmil", 128, 64)
    big = MoMIL(D, [f"t{i}" for i in range(2000)], "dsmil", 128, 64)
    batch_big = make_batch(wells, 2000, pairs)
    t = time_alternating(
        {"200": (batched_step(momil, batch), args.steps), "2000": (batched_step(big, batch_big), args.steps)},
        args.rounds,
    )
    t_batched, t_big = t["200"], t["2000"]
    print(f"2. 10x the assays at the same number of labelled pairs ({wells} wells per step)")
    print_table(
        [
            {
                "assays": 200,
                "pairs": pairs,
                "heads with pairs": len(np.unique(batch[3])),
                "ms/step": f"{1000 * t_batched:.1f}",
            },
            {
                "assays": 2000,
                "pairs": len(batch_big[2]),
                "heads with pairs": len(np.unique(batch_big[3])),
                "ms/step": f"{1000 * t_big:.1f}",
            },
        ]
    )
    print(f"   time ratio 2000 / 200 assays: {t_big / t_batched:.2f} (target <= 1.5)\n")

    enc = torch.randn(pairs, N, 128, device=DEVICE)
    heads = momil.heads.to(DEVICE)
    cols, target = batch[3].to(DEVICE), batch[4].to(DEVICE)
    all_real = torch.ones(pairs, N, dtype=torch.bool, device=DEVICE)

    def head_forward_backward():
        e = enc.clone().requires_grad_(True)
        out = heads(e, all_real, cols)
        heads.loss(out, target).backward()

    t_head = time_steps(head_forward_backward, args.steps)
    a = torch.randn(2048, 2048, device=DEVICE)
    b = torch.randn(2048, 2048, device=DEVICE)
    t_mm = time_steps(lambda: a @ b, 10)
    gflops_head = head_flops(pairs) / t_head / 1e9
    gflops_mm = 2 * 2048**3 / t_mm / 1e9
    print("3. achieved throughput")
    print_table(
        [
            {"what": "head path (forward + backward)", "GFLOP/s": f"{gflops_head:.1f}"},
            {"what": "plain 2048x2048 matmul", "GFLOP/s": f"{gflops_mm:.1f}"},
        ]
    )
    print(f"   head path at {100 * gflops_head / gflops_mm:.0f} % of the matmul rate\n")

    if args.store:
        import pandas as pd

        from momil.data.pairs import WellPairs
        from momil.io.contract import LabelMatrix
        from momil.io.store import InstanceStore
        from momil.training.fit import fit
        from momil.training.settings import TrainSettings

        store = InstanceStore(args.store)
        trt = store.wells[store.wells["Metadata_ControlType"] == "trt"]
        compounds = trt["Metadata_Compound"].unique()
        rng = np.random.default_rng(0)
        known = rng.random((len(compounds), 200)) < DENSITY
        r, c = np.nonzero(known)
        labels = LabelMatrix.from_long(
            pd.DataFrame(
                {
                    "Metadata_Compound": compounds[r],
                    "assay": [f"t{i:03d}" for i in c],
                    "label": rng.integers(0, 2, len(r)),
                }
            )
        )
        pairs_all = WellPairs.build(store.wells, labels, [f"t{i:03d}" for i in range(200)])
        wells = np.flatnonzero((store.wells["Metadata_ControlType"] == "trt").to_numpy())
        settings = TrainSettings(
            epochs=1, warmup_epochs=0, batch_wells=64, projector_dim=128, head_dim=64, device=str(DEVICE)
        )
        started = time.perf_counter()
        fit(store, pairs_all, wells, wells[:0], np.ones(200, bool), settings, show_progress=True)
        seconds = time.perf_counter() - started
        print("4. one full training epoch over the memory-mapped store")
        print_table(
            [
                {
                    "wells": len(wells),
                    "instances": int(store.counts[wells].sum()),
                    "seconds": f"{seconds:.0f}",
                    "wells/s": f"{len(wells) / seconds:,.0f}",
                    "target": "<= 120 s",
                }
            ]
        )


if __name__ == "__main__":
    main()
