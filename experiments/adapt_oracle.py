"""What can 20 adaptation steps reach when the loss is right? ``python experiments/adapt_oracle.py`` -> adapt_oracle.json.

Issue 6's goal is +0.5 dB within 20 steps on the adaptation bench's domain shift (kernel-synthesized camera shake,
bench/adapt_bench.py). This separates the two things that decide it, on the same stream, eval crops, parameter
sets and step budget:

- ``supervised``: L1 to the true sharp crops — the most any loss can teach this parameter set in 20 steps.
- ``true_reblur``: SPEC's reblur loss ℓ_rb(R(Ŝ, m), B) under the *true* motion field (a perfect motion net:
  M(S) = 0, so m_rel = m). Blind, like adaptation, but with exact motion.
- ``M_abs_reblur``: the same reblur loss under the motion net's reading vn M(B) (no gradient through M).
- ``M_rel``: what ``neurmap adapt`` optimises: SPEC's relative motion + sharp prior with adapt's weights (10, 50).

Reblur losses are taken away from a 16-px border (R samples zeros outside a crop). Batch 2 of 96² crops from the
stream's 192² frames, Adam, gradient-norm clip 1, PSNR on the bench's 16 held-out 128² crops every 10 steps.

    python experiments/adapt_oracle.py [--motion runs/motion/motion_pretrained.safetensors] [--threads 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _setup import RESULTS  # noqa: I001  (first: puts bench/ on sys.path)
import adapt_bench as ab
from common import report
from neurmap.core import load_motion, load_weights
from neurmap.core import losses as L
from neurmap.core.data import KernelBlurred
from neurmap.core.reblur import canonical_motion, reblur
from neurmap.edge_runtime.adaptation import AdaptConfig, TrainableSet, adaptation_terms, clone_model, weighted

BORDER = 16
STEPS = 20
# (loss, parameter set, lr): the lr sweep that picked each set's rate is in the results' "sweep" rows
RUNS = [("supervised", "lora", 5e-4), ("supervised", "lora", 3e-3), ("supervised", "bias", 1e-3),
        ("supervised", "all", 5e-5),
        ("true_reblur", "lora", 1e-3), ("true_reblur", "lora", 3e-3), ("true_reblur", "bias", 1e-3),
        ("true_reblur", "bias", 2e-3), ("true_reblur", "last", 1e-3), ("true_reblur", "all", 3e-5),
        ("true_reblur", "all", 5e-5), ("true_reblur", "all", 1e-4),
        ("M_abs_reblur", "bias", 1e-3), ("M_abs_reblur", "all", 5e-5),
        ("M_rel", "bias", 1e-3), ("M_rel", "lora", 5e-4), ("M_rel", "all", 5e-5)]


def stream_with_truth():
    """The adapt bench's stream frames (same photos, crops and seed) with their sharp frames and motion fields."""
    tops = [im[:, : im.shape[1] // 2] for im in ab._scene_images()]
    data = KernelBlurred(tops * 2, crop_size=192, seed=0)
    items = [data[i] for i in range(len(data))]
    return tuple(torch.stack([it[k] for it in items]) for k in ("blurry", "sharp", "motion"))


def crops(stream, g: torch.Generator, n: int = 2, c: int = 96):
    B = stream[0]
    idx = torch.randint(len(B), (n,), generator=g).tolist()
    top = torch.randint(0, B.shape[-2] - c + 1, (n,), generator=g).tolist()
    left = torch.randint(0, B.shape[-1] - c + 1, (n,), generator=g).tolist()
    return [torch.stack([X[i, :, a:a + c, b:b + c] for i, a, b in zip(idx, top, left)]) for X in stream]


def loss_of(kind: str, G, M, b, s, m) -> torch.Tensor:
    if kind == "M_rel":                                   # neurmap adapt's own loss (it runs G itself)
        return weighted(adaptation_terms(G, M, b, torch.zeros(2)), AdaptConfig())
    out = G(b).float()
    inner = (..., slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    if kind == "supervised":
        return (out - s).abs().mean()
    if kind == "true_reblur":
        return L.reblur_loss(reblur(out, m)[inner], b[inner])
    with torch.no_grad():                                 # M_abs_reblur
        mb = canonical_motion(M(b).float())
    return L.reblur_loss(reblur(out, mb)[inner], b[inner])


def run(kind: str, params: str, lr: float, G0, M, stream, eb, es) -> dict:
    G = clone_model(G0)
    ts = TrainableSet(G, AdaptConfig(params=params, lr=lr))
    opt = torch.optim.Adam(ts.params, lr=lr)
    g = torch.Generator().manual_seed(0)
    curve = {0: ab.eval_psnr(G, eb, es)}
    for i in range(1, STEPS + 1):
        loss = loss_of(kind, G, M, *crops(stream, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ts.params, 1.0)
        opt.step()
        if i % 10 == 0:
            curve[i] = ab.eval_psnr(G, eb, es)
    ts.discard()
    row = {"loss": kind, "params": params, "lr": lr, "psnr_0": curve[0], "psnr_10": curve[10],
           "psnr_20": curve[STEPS], "gain_db_20": round(curve[STEPS] - curve[0], 3)}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--motion", default=str(ab.ROOT / "runs" / "motion" / "motion_pretrained.safetensors"),
                    help="motion net for the M_* rows (experiments/motion_pretrain.py)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    G0, _ = load_weights(ab.SHARED / "pretrained" / "dmphn_1_2_4")
    M = load_motion(a.motion).eval()
    for p in M.parameters():
        p.requires_grad_(False)
    _, eb, es = ab.domain_shift_data()
    stream = stream_with_truth()
    rows = [run(kind, params, lr, G0, M, stream, eb, es) for kind, params, lr in RUNS]
    report("adapt_oracle", rows, {"motion_net": str(Path(a.motion)), "steps": STEPS, "batch": 2, "crop": 96,
                                  "border_px": BORDER, "threads": a.threads, "load_avg": ab.load_avg()}, results=RESULTS)


if __name__ == "__main__":
    main()
