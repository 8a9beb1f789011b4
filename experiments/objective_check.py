"""Does NeurMAP's unpaired objective prefer the truth? ``python experiments/objective_check.py`` -> objective_check.json.

Training (issue 3) and on-device adaptation (issue 6) both push G along SPEC's unpaired G terms:
``100·ℓ_rb(R(Ŝ, sg[m_rel]), B) + 0.5·(|vn M(Ŝ)| − μ_sharp)²`` with ``m_rel = vn M(B) − vn M(Ŝ)``. A gradient step
can only help if this objective is lower at the true sharp image than at the blurry input. This bench scores
three candidate outputs Ŝ — the blurry input B itself, the official DMPHN 1-2-4 output G₀(B) and the ground
truth S — on kernel-synthesized blur with known motion, for each motion net M, and reports M's motion error.
With an M that sees no motion in B, m_rel ≈ 0, R(Ŝ, 0) = Ŝ and the objective is minimised by Ŝ = B: the unpaired
terms then pull G back to its input. The last column scores the same candidates under the *true* motion,
showing what an accurate M would ask for. ``adapt_objective`` scores the same terms with ``neurmap adapt``'s
default weights (reblur 10, sharp prior 50, μ_sharp = 0), where the sharp prior weighs far more.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _setup import RESULTS  # noqa: I001  (first: puts bench/ on sys.path)
from common import report
from neurmap.core import load_motion, load_weights
from neurmap.core import losses as L
from neurmap.core.data import KernelBlurred, frame_source
from neurmap.core.models import build_network
from neurmap.core.reblur import canonical_motion, reblur

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ADAPT_W = (10.0, 50.0)  # neurmap adapt's default (λ_reblur, λ_sharp); scored here with μ_sharp = 0
BORDER = 24  # px left out of the true-motion score: the synthesis saw real neighbours there, R sees zeros


def datasets() -> dict[str, KernelBlurred]:
    from adapt_bench import EVAL_CROP, _scene_images
    bottoms = [im[:, im.shape[1] // 2:] for im in _scene_images()]
    gopro = frame_source(SHARED / "gopro240" / "GOPR0477_11_00")
    return {"adapt eval crops (issue 6)": KernelBlurred(bottoms * 2, crop_size=EVAL_CROP, seed=1),
            "proof held-out (issue 3), 256² crops": KernelBlurred([gopro[i] for i in range(100, 120, 3)],
                                                                 resize=(360, 640), crop_size=256, seed=1234)}


def fresh_motion_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("motion")


@torch.no_grad()
def score(G, M, data: KernelBlurred) -> list[dict]:
    items = [data[i] for i in range(len(data))]
    B, S = torch.stack([it["blurry"] for it in items]), torch.stack([it["sharp"] for it in items])
    truth = canonical_motion(torch.stack([it["motion"] for it in items]))
    vn = lambda x: canonical_motion(M(x).float())
    m_b = vn(B)
    mu = torch.zeros(2)
    G0 = torch.cat([G(B[i:i + 2]).clamp(0, 1) for i in range(0, len(B), 2)])
    inner = (..., slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    rows = []
    for name, s_hat in (("B (identity)", B), ("G0(B) (DMPHN 1-2-4)", G0), ("S (truth)", S)):
        m_f = vn(s_hat)
        rb = L.reblur_loss(reblur(s_hat, m_b - m_f), B)
        sharp = L.sharpness_prior_loss(m_f, mu)
        rows.append({"candidate": name, "motion_B_px": float(20 * m_b.abs().mean()),
                     "motion_true_px": float(20 * truth.abs().mean()),
                     "motion_err_px": float(20 * (m_b - truth).abs().mean()),
                     "motion_Shat_px": float(20 * m_f.abs().mean()),
                     "reblur_rel": float(rb), "sharp_prior": float(sharp),
                     "spec_objective": float(100 * rb + 0.5 * sharp),
                     "adapt_objective": float(ADAPT_W[0] * rb + ADAPT_W[1] * sharp),
                     "mse_true_motion": float(torch.mean((reblur(s_hat, truth)[inner] - B[inner]) ** 2))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--motion", action="append", default=None,
                    help="motion-net checkpoint (repeatable; default: shipped, the adapt bench's, a fresh one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    G, _ = load_weights(SHARED / "pretrained" / "dmphn_1_2_4")
    G.eval()
    nets = {}
    for path in args.motion or ["default", "runs/adapt/motion_kernel.safetensors", "fresh"]:
        if path == "fresh":
            nets["fresh (Xavier init, SPEC)"] = fresh_motion_net().eval()
        elif path == "default" or Path(path).exists():
            nets[path] = load_motion(path).eval()
    rows = []
    for dname, data in datasets().items():
        for mname, M in nets.items():
            for r in score(G, M, data):
                rows.append({"data": dname, "motion_net": mname, **r})
    lowest = {}
    for col in ("spec_objective", "adapt_objective"):
        best = {}
        for r in rows:
            k = f'{r["data"]} | {r["motion_net"]}'
            if k not in best or r[col] < best[k][col]:
                best[k] = r
        lowest[col] = {k: r["candidate"] for k, r in best.items()}
    report("objective_check", rows, {"lowest": lowest, "adapt_weights": ADAPT_W, "true_motion_border_px": BORDER}, results=RESULTS)


if __name__ == "__main__":
    main()
