"""Training speed of MoMIL's batched heads.

    python benchmarks/bench_train.py [--steps 20] [--device cpu|cuda|auto] [--store PATH_TO_PAPER_SCALE_CORRECTED_STORE]

1. A paper-shaped batch (D=768, 36 instances per well, 200 assays, 4.3 % of (well, assay) pairs labelled):
   training steps (forward, backward, AdamW) of the batched model against a plain Python loop over 200 separate
   head modules computing the same pairs, in the same run: labelled pairs/s, wells/s, and their ratio.
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
from _util import print_table  # noqa: E402

from momil.model.momil import MoMIL  # noqa: E402
from momil.train import LazyHeadAdamW, keep_freed_memory, training_step  # noqa: E402

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
        x = self.projector(bags)
        total = 0.0
        bce = nn.functional.binary_cross_entropy_with_logits
        for t in torch.unique(cols).tolist():
            mine = cols == t
            bag, top = self.heads[t](x[rows[mine]])
            total = total + 0.5 * (bce(bag, labels[mine], reduction="sum") + bce(top, labels[mine], reduction="sum"))
        return total / len(rows)


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    _sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return (time.perf_counter() - started) / steps


def batched_step(model, batch, lazy_heads: bool = True):
    """momil's own training step (momil.train.training_step), lazy per-head AdamW by default."""
    bags, mask, rows, cols, labels = (t.to(DEVICE) for t in batch)
    model.to(DEVICE)
    if lazy_heads:
        lazy = LazyHeadAdamW(dict(model.heads.named_parameters()), 5e-4)
        optimizer = torch.optim.AdamW(model.projector.parameters(), lr=1e-4, weight_decay=5e-4)
    else:
        lazy, optimizer = None, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=5e-4)
    rows, cols, labels = rows.cpu().numpy(), cols.cpu().numpy(), labels.cpu().numpy()

    def step():
        training_step(model, bags, mask, rows, cols, labels, optimizer, lazy, 1e-4, DEVICE)
    return step


def loop_step(model, optimizer, batch):
    bags, _, rows, cols, labels = (t.to(DEVICE) for t in batch)

    def step():
        loss = model.loss(bags, rows, cols, labels)
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
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--wells", default="32,64", help="wells per step, comma-separated (training default: 32)")
    parser.add_argument("--store", help="paper-scale corrected store for a full-epoch timing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (training runs bf16 autocast on CUDA)")
    args = parser.parse_args()
    global DEVICE
    from momil.train import resolve_device

    DEVICE = resolve_device(args.device)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    kept = keep_freed_memory() if DEVICE.type == "cpu" else False  # as momil.train.fit does, for every model here
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}"
          f"{', malloc keeps freed memory' if kept else ''}\n")

    rows, speedups = [], {}
    for wells in [int(w) for w in args.wells.split(",")]:
        batch = make_batch(wells, 200, None)
        pairs = len(batch[2])
        momil = MoMIL(D, [f"t{i}" for i in range(200)], "dsmil", 128, 64)
        loop = LoopModel(200).to(DEVICE)
        t_batched = time_steps(batched_step(momil, batch), args.steps)
        plain = MoMIL(D, [f"t{i}" for i in range(200)], "dsmil", 128, 64)
        t_plain = time_steps(batched_step(plain, batch, lazy_heads=False), args.steps)
        t_loop = time_steps(loop_step(loop, torch.optim.AdamW(loop.parameters(), 1e-4), batch),
                            max(3, args.steps // 4))
        speedups[wells] = t_loop / t_batched
        for what, t in (("MoMIL batched heads, lazy AdamW", t_batched), ("MoMIL batched heads, plain AdamW", t_plain),
                        ("loop over 200 head modules", t_loop)):
            rows.append({"wells": wells, "what": what, "s/step": f"{t:.4f}", "pairs": pairs,
                         "pairs/s": f"{pairs / t:,.0f}", "wells/s": f"{wells / t:,.0f}",
                         "loop time / this": f"{t_loop / t:.1f}x"})
    print("1. training steps on a paper-shaped batch (D=768, 36 instances, 200 assays, 4.3 % labelled)")
    print_table(rows)
    for wells, speedup in speedups.items():
        print(f"   {wells} wells per step: batched MoMIL is {speedup:.1f}x the loop (target >= 10x)")
    print()

    wells = max(speedups)
    batch = make_batch(wells, 200, None)
    pairs = len(batch[2])
    momil = MoMIL(D, [f"t{i}" for i in range(200)], "dsmil", 128, 64)
    t_batched = time_steps(batched_step(momil, batch), args.steps)
    big = MoMIL(D, [f"t{i}" for i in range(2000)], "dsmil", 128, 64)
    batch_big = make_batch(wells, 2000, pairs)
    t_big = time_steps(batched_step(big, batch_big), args.steps)
    print(f"2. 10x the assays at the same number of labelled pairs ({wells} wells per step)")
    print_table([{"assays": 200, "pairs": pairs, "s/step": f"{t_batched:.4f}"},
                 {"assays": 2000, "pairs": len(batch_big[2]), "s/step": f"{t_big:.4f}"}])
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
    gflops_mm = 2 * 2048 ** 3 / t_mm / 1e9
    print("3. achieved throughput")
    print_table([{"what": "head path (forward + backward)", "GFLOP/s": f"{gflops_head:.1f}"},
                 {"what": "plain 2048x2048 matmul", "GFLOP/s": f"{gflops_mm:.1f}"}])
    print(f"   head path at {100 * gflops_head / gflops_mm:.0f} % of the matmul rate\n")

    if args.store:
        from momil.data import WellPairs
        from momil.io.contract import LabelMatrix
        from momil.io.store import InstanceStore
        from momil.train import TrainSettings, fit
        import pandas as pd

        store = InstanceStore(args.store)
        trt = store.wells[store.wells["Metadata_ControlType"] == "trt"]
        compounds = trt["Metadata_Compound"].unique()
        rng = np.random.default_rng(0)
        known = rng.random((len(compounds), 200)) < DENSITY
        r, c = np.nonzero(known)
        labels = LabelMatrix.from_long(pd.DataFrame({"Metadata_Compound": compounds[r],
                                                     "assay": [f"t{i:03d}" for i in c],
                                                     "label": rng.integers(0, 2, len(r))}))
        pairs_all = WellPairs.build(store.wells, labels, [f"t{i:03d}" for i in range(200)])
        wells = np.flatnonzero((store.wells["Metadata_ControlType"] == "trt").to_numpy())
        settings = TrainSettings(epochs=1, warmup_epochs=0, batch_wells=64, projector_dim=128, head_dim=64,
                                 device=str(DEVICE))
        started = time.perf_counter()
        fit(store, pairs_all, wells, wells[:0], np.ones(200, bool), settings, show_progress=True)
        seconds = time.perf_counter() - started
        print("4. one full training epoch over the memory-mapped store")
        print_table([{"wells": len(wells), "instances": int(store.counts[wells].sum()), "seconds": f"{seconds:.0f}",
                      "wells/s": f"{len(wells) / seconds:,.0f}", "target": "<= 120 s"}])


if __name__ == "__main__":
    main()
