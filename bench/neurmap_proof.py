"""Does NeurMAP work? (a) paired-only vs (b) NeurMAP with the motion prior: same start, data, iterations, lr.

Start (``--backbone``): ``dmphn_1_2_4``, the official DMPHN 1-2-4 weights (../shared/data/pretrained/dmphn_1_2_4),
or ``default``, the shipped compact deblur net (the model users get; ~24x cheaper per G iteration on a CPU).

Training data. Both runs: GoPro-protocol pairs of gopro240 frames 0-79. (b) adds SPEC's unpaired half:
unpaired blurry = kernel-synthesized blur of gopro240 frames 80-99 and the real handheld ``car`` frames 0-39,
blurs the paired set never shows (synthetic spatially varying kernels; real camera shake of another scene),
and unpaired sharp = frames 0-79. None of it is an evaluation frame or photo (below).

The motion prior in (b): M starts from ``--motion`` (default: the shipped motion net, i.e. configs/motion.yaml's
M once it ships; until then pass ``--motion runs/motion/final.safetensors``), and M's step adds, beside SPEC's M
terms, ``M_video`` (``--w-video``): sign-invariant L1 against the flow-derived blur of the car frames 0-39
(``video_flow``; exposure estimated on those 40 frames only), and ``M_supervised`` (``--w-supervised``) against
the known blur of the pairs (gopro240 ``motion: true``: DIS flow between each window's sharp frames). The kernel
blurred unpaired frames give M no target (``motion: false``): their field is ground truth, which unpaired data
does not have. The defaults (1.0, 0.5) are configs/motion.yaml's weights, set before any proof run; nothing here
is tuned on the evaluation sets. ``--spec`` adds (b0): NeurMAP as SPEC has it (fresh M, no prior), the old (b).
``--w-anchor W`` adds (b+): (b) with G's sharp anchor (``G_anchor``: the unpaired blurry crops shrunk 4x must pass
G unchanged, the prior the reblur term lacks on the stream path). W = 100 is the stream path's anchor-to-reblur
ratio (w_anchor 10 : w_reblur 10, chosen on training-split clips, ``experiments/stream_anchor.py``) times SPEC's
G_reblur 100; measured (``--backbone default --iterations 150 --w-anchor 100``,
bench/results/neurmap_proof_anchor.json) it moves (b) further below (a) (PSNR -0.04/-0.13/-0.30 -> -0.12/-0.20/-0.32
dB, NIQE -0.22 -> -0.14): here the content term already anchors G, so the default is 0. ``--reblur-flow W`` adds
(b~): G's reblur term under the car clip's flow-derived blur as absolute motion, in linear light (``G_reblur_flow``
W, the stream path's objective) in place of SPEC's under M's relative motion; measured (``--reblur-flow 100``,
bench/results/neurmap_proof_reblur_flow.json) LPIPS drops below (a)'s on all three sets (-0.0015/-0.0009/-0.0015)
but PSNR falls further (-0.24/-0.34/-0.19 dB) and NIQE on car rises (+0.14): sharper-looking, less faithful.
``--photo-clips N`` adds (b*): (b~) whose unpaired blurry also holds N handheld camera-shake clips of
training-split photos (:func:`neurmap.core.data.photo_shake_videos`: blurry frames only, shake and exposure drawn
per clip, the exposure estimated, the blur from the neighbours' flow) — footage of the kind a user brings, of scenes
no evaluation set shows. Its G_reblur_flow weight was chosen on training-split photos
(``experiments/proof_clips_weight.py``: 100 / 300 / 1000 / 3000 move validation shake clips -0.02 / -0.07 / -0.12
/ -0.14 dB from (a)), so 100; measured (``--photo-clips 24``, bench/results/neurmap_proof_clips.json) PSNR
+0.03 / -0.00 / +0.01 dB, LPIPS +0.0015 / +0.0017 / +0.0010, NIQE -0.06: even under the true kind of blur with
accurate flow, 150 iterations of the reblur term do not add to what the paired term (and the start's photo pairs)
teach. From DMPHN 1-2-4, which never saw photo blur (``--backbone dmphn_1_2_4 --photo-clips 24 --eval-n 12``,
bench/results/neurmap_proof_dmphn_clips.json): photo_kernel +0.43 dB and LPIPS -0.004, NIQE -0.17, but
gopro_kernel -0.24 dB and shake_clips -0.03 dB (LPIPS +0.002 / +0.001) — mixed, not a win.

Held out for evaluation (never drawn in training by either run, nor by the shipped G or M):
* ``gopro_kernel``: kernel blur of gopro240 frames 100-119 (every 3rd, whole frames at 640x360): PSNR, SSIM, LPIPS
* ``photo_kernel``: kernel blur of the held-out photos (photo_split 'heldout', 256², bench/default_quality.py)
* ``shake_clips``: handheld camera-shake clips of held-out photos (bench/default_quality.shake_clips, 256²)
* ``car``: real car frames 40-59 (every 3rd, centre 360x640): NIQE (no reference)
(b) beats (a) when it has a higher PSNR and a lower LPIPS on each blurred set and a lower NIQE on car.
Writes bench/results/NAME.json: a row per (model, set), the start M's and each run's motion reading on
gopro_kernel (mean |motion| read vs the known field, pixels), train seconds and the verdict.

    python bench/neurmap_proof.py [--backbone default|dmphn_1_2_4] [--iterations 60] [--motion PATH]
        [--w-video 0.5] [--w-supervised 1.0] [--w-anchor W] [--reblur-flow W] [--device auto] [--eval-n N]
        [--name neurmap_proof]

``config``, ``held_out``, ``score`` and ``motion_reading`` keep their old form for experiments/ and bf16_quality.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from common import report
from default_quality import photo_pairs, shake_clips
from neurmap.core import load_motion, load_weights
from neurmap.core.data import KernelBlurred, UnpairedFolder, frame_source
from neurmap.core.evaluate import evaluate
from neurmap.core.reblur import canonical_motion
from neurmap.core.train import TrainConfig, run_training

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GOPRO = SHARED / "gopro240" / "GOPR0477_11_00"
CAR = SHARED / "real_video" / "car"
BACKBONES = {"dmphn_1_2_4": ("dmphn_1_2_4", str(SHARED / "pretrained" / "dmphn_1_2_4")),
             "default": ("compact", "default")}
BLURRED = ("gopro_kernel", "photo_kernel", "shake_clips")
FULL_REF = ("psnr", "ssim", "lpips")
LR = {"lr_G": 5e-5, "lr_M": 1e-4, "lr_D": 1e-4}     # SPEC's


def config(out: Path, paired_only: bool, args, warmup: int = 0, motion: str | None = None,
           prior: bool = False, anchor: float = 0.0, reblur_flow: float = 0.0, photo_clips: int = 0) -> TrainConfig:
    """One run's config. ``args`` needs iterations, crop, precision; the other flags default to the old proof
    (DMPHN 1-2-4, batch 2+2, SPEC's lrs). ``prior``: (b)'s M_video / M_supervised terms and their targets;
    ``anchor``: G's sharp-anchor weight (``G_anchor``); ``reblur_flow`` > 0: G's reblur term under the video's
    flow-derived blur (``G_reblur_flow``) in place of SPEC's under M's relative motion (``G_reblur`` 0);
    ``photo_clips`` > 0: that many handheld clips of training-split photos join the unpaired blurry (blurry frames
    only, with their flow-derived blur)."""
    opt = lambda key, default: getattr(args, key, default)  # noqa: E731
    backbone, init = BACKBONES[opt("backbone", "dmphn_1_2_4")]
    w_sup, w_vid = (opt("w_supervised", 1.0), opt("w_video", 0.5)) if prior else (0.0, 0.0)
    lrs = {k: v * opt("lr_scale", 1.0) for k, v in LR.items()}
    if motion and opt("motion_lr", None) is not None:
        lrs["lr_M"] = args.motion_lr
    car = {"type": "video_flow" if w_vid else "folder", "path": str(CAR), "frame_range": [0, 40]}
    clips = [{"type": "photo_clips", "path": str(SHARED / "sharp_photos"), "split": "train", "n_clips": photo_clips,
              "seed": 0}] if photo_clips else []
    return TrainConfig.from_dict(dict(**lrs,
        backbone=backbone, init_weights=init, output_dir=str(out), iterations=args.iterations, crop=args.crop,
        checkpoint_every=max(args.iterations // 2, 1), tensorboard=False, precision=args.precision,
        channels_last=True, paired_only=paired_only, seed=0, warmup_iterations=warmup, init_motion=motion,
        device=opt("device", "auto"), workers=opt("workers", 0), batch_paired=opt("batch_paired", 2),
        batch_unpaired=opt("batch_unpaired", 2),
        loss_weights={"M_supervised": w_sup, "M_video": w_vid, "G_anchor": anchor,
                      **({"G_reblur": 0.0, "G_reblur_flow": reblur_flow} if reblur_flow else {})},
        data={"paired": {"type": "gopro240", "path": str(GOPRO), "frame_range": [0, 80], "n_frames": [7, 13],
                         "cache": True, "motion": bool(w_sup)},
              "unpaired_blurry": [{"type": "kernel", "path": str(GOPRO), "frame_range": [80, 100], "motion": False},
                                  car, *clips],
              "unpaired_sharp": {"type": "folder", "path": str(GOPRO), "frame_range": [0, 80]}}))


def held_out():
    """The old proof's two sets: (kernel blur of gopro240 frames 100-119, car frames 40-59)."""
    frames = frame_source(GOPRO)
    # whole frames at 640x360 (random crops of this clip are mostly flat water), blurred after resizing
    kernel = KernelBlurred([frames[i] for i in range(100, 120, 3)], resize=(360, 640), seed=1234)
    car = Subset(UnpairedFolder(CAR), range(40, 60, 3))
    return kernel, car


def held_out_sets(n_clips: int = 12) -> dict:
    """Every evaluation set by name (module docstring); the same items every run."""
    kernel, car = held_out()
    return {"gopro_kernel": kernel, "photo_kernel": list(zip(*photo_pairs("kernel"))),
            "shake_clips": list(zip(*shake_clips(n_clips=n_clips))), "car": car}


def score_sets(weights, sets: dict, device: str = "cpu", max_images: int | None = None) -> list[dict]:
    """One row per set: the output's and the input's means (full-reference metrics, or NIQE on ``car``)."""
    model = load_weights(weights)[0].to(device)
    rows = []
    for name, data in sets.items():
        metrics, crop = (("niqe",), (360, 640)) if name == "car" else (FULL_REF, None)
        r = evaluate(model, data, metrics=metrics, crop=crop, max_images=max_images, progress=False)
        rows.append({"set": name, "n": r["data"]["n_evaluated"], **{m: r["means"]["output"][m] for m in metrics},
                     **{f"input_{m}": r["means"]["input"][m] for m in metrics}})
    return rows


def score(weights, kernel, car) -> dict:
    """The old proof's row: PSNR/SSIM/LPIPS on kernel blur, NIQE on car."""
    k, c = score_sets(weights, {"gopro_kernel": kernel, "car": car})
    return {**{m: k[m] for m in FULL_REF}, "niqe_car": c["niqe"], "input_psnr": k["input_psnr"],
            "input_lpips": k["input_lpips"], "input_niqe_car": c["input_niqe"]}


@torch.no_grad()
def motion_reading(weights, kernel, device: str = "cpu") -> dict:
    """What a motion net (a checkpoint's, or a shipped name's) reads on the held-out kernel blur (pixels): mean
    |motion| against the known field's, and its error."""
    M = load_motion(weights).eval().to(device)
    items = [kernel[i] for i in range(len(kernel))]
    blurry = torch.stack([it["blurry"] for it in items]).to(device)
    truth = canonical_motion(torch.stack([it["motion"] for it in items]).to(device))
    m = torch.cat([canonical_motion(M(blurry[i:i + 2]).float()) for i in range(0, len(blurry), 2)])
    return {"motion_read_px": float(20 * m.abs().mean()), "motion_true_px": float(20 * truth.abs().mean()),
            "motion_err_px": float(20 * (m - truth).abs().mean())}


def verdict(a: dict, b: dict) -> dict:
    """b minus a per set and metric; ``b_beats_a``: better PSNR and LPIPS on every blurred set, NIQE on car."""
    d = {f"{s}_{m}_b_minus_a": b[s][m] - a[s][m] for s in BLURRED if s in a for m in ("psnr", "lpips")}
    d["car_niqe_b_minus_a"] = b["car"]["niqe"] - a["car"]["niqe"]
    d["b_beats_a"] = all(v < 0 if ("lpips" in k or "niqe" in k) else v > 0 for k, v in d.items())
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="dmphn_1_2_4",
                    help="start of (a) and (b): the official DMPHN 1-2-4 or the shipped compact default G")
    ap.add_argument("--iterations", type=int, default=60, help="G iterations of each run")
    ap.add_argument("--warmup", type=int, default=0, help="(b): M+D warm-up iterations before G's (G frozen)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch-paired", type=int, default=2)
    ap.add_argument("--batch-unpaired", type=int, default=2)
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="multiplies SPEC's lr_G 5e-5, lr_M 1e-4, lr_D 1e-4 (e.g. sqrt of a batch ratio)")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=0, help="synthesis worker processes per run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--motion", default="default",
                    help="(b)'s starting motion net: a checkpoint or shipped name (default: the shipped M)")
    ap.add_argument("--motion-lr", type=float, default=None, help="(b)'s lr_M (default SPEC's 1e-4 x --lr-scale)")
    ap.add_argument("--w-video", type=float, default=0.5,
                    help="(b)'s M_video: L1 to the flow-derived blur of car frames 0-39 (configs/motion.yaml's)")
    ap.add_argument("--w-supervised", type=float, default=1.0,
                    help="(b)'s M_supervised: L1 to the pairs' known blur (configs/motion.yaml's)")
    ap.add_argument("--w-anchor", type=float, default=0.0,
                    help="> 0 adds (b+), (b) with G_anchor W (100: the stream path's anchor ratio x G_reblur)")
    ap.add_argument("--reblur-flow", type=float, default=0.0,
                    help="> 0 adds (b~), (b) with G's reblur term under the car clip's flow-derived blur (absolute, "
                         "linear light; G_reblur_flow W) instead of M's relative motion (100: SPEC's G_reblur)")
    ap.add_argument("--photo-clips", type=int, default=0,
                    help="> 0 adds (b*): (b~) whose unpaired blurry also holds N handheld clips of training-split "
                         "photos (blurry frames only; G's and M's video terms read their flow)")
    ap.add_argument("--only", default="",
                    help="comma-separated run folders to train (e.g. paired_only,neurmap_prior_clips); default all")
    ap.add_argument("--spec", action="store_true", help="also run (b0): SPEC's NeurMAP, fresh M, no prior")
    ap.add_argument("--eval-n", type=int, default=None, help="evaluate at most N items per set (smoke runs)")
    ap.add_argument("--clips", type=int, default=12, help="camera-shake clips (8 frames each) in shake_clips")
    ap.add_argument("--reuse", action="store_true", help="score a run's final.safetensors in --out, if there, untrained")
    ap.add_argument("--name", default="neurmap_proof", help="results file bench/results/NAME.json")
    ap.add_argument("--out", default="runs/proof")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    sets = held_out_sets(args.clips)
    start_name, start_weights = f"{args.backbone} (start)", BACKBONES[args.backbone][1]
    scores = {start_name: score_sets(start_weights, sets, device, args.eval_n)}
    readings = {f"--motion {args.motion} (b's start M)": motion_reading(args.motion, sets["gopro_kernel"], device)}
    runs = [("(a) paired only", "paired_only", dict(paired_only=True)),
            ("(b) NeurMAP + motion prior", "neurmap_prior",
             dict(paired_only=False, warmup=args.warmup, motion=args.motion, prior=True))]
    if args.w_anchor:
        runs.append(("(b+) NeurMAP + motion prior + sharp anchor", "neurmap_prior_anchor",
                     dict(paired_only=False, warmup=args.warmup, motion=args.motion, prior=True, anchor=args.w_anchor)))
    if args.reblur_flow:
        runs.append(("(b~) NeurMAP + motion prior, reblur under the video's flow", "neurmap_prior_flow",
                     dict(paired_only=False, warmup=args.warmup, motion=args.motion, prior=True,
                          reblur_flow=args.reblur_flow)))
    if args.photo_clips:
        runs.append(("(b*) NeurMAP + motion prior, reblur under the flow of unpaired handheld clips",
                     "neurmap_prior_clips",
                     dict(paired_only=False, warmup=args.warmup, motion=args.motion, prior=True,
                          reblur_flow=args.reblur_flow or 100.0, photo_clips=args.photo_clips)))
    if args.spec:
        runs.append(("(b0) NeurMAP as SPEC", "neurmap_spec", dict(paired_only=False, warmup=args.warmup)))
    if args.only:                        # (a) always runs: every verdict is against it
        keep = {"paired_only", *args.only.split(",")}
        runs = [r for r in runs if r[1] in keep]
    timing = {}
    for name, folder, kw in runs:
        out = Path(args.out) / f"{args.backbone}_{folder}"
        t = time.perf_counter()
        if not (args.reuse and (out / "final.safetensors").exists()):
            run_training(config(out, args=args, **kw), progress=True)
        timing[name] = round(time.perf_counter() - t, 1)
        scores[name] = score_sets(out / "final.safetensors", sets, device, args.eval_n)
        if not kw["paired_only"]:
            readings[name] = motion_reading(out / "final.safetensors", sets["gopro_kernel"], device)
        print(name, scores[name], readings.get(name), f"{timing[name]:.0f} s", flush=True)
    by_set = {model: {r["set"]: r for r in rows} for model, rows in scores.items()}
    a = by_set["(a) paired only"]
    verdicts = {name: verdict(a, by_set[name]) for name, _, kw in runs if not kw["paired_only"]}
    rows = [{"model": model, **r} for model, rs in scores.items() for r in rs]
    report(args.name, rows, {"settings": vars(args), "motion_reading_gopro_kernel": readings,
                             "train_seconds": timing, "verdict": verdicts})
    for name, v in verdicts.items():
        print(name, v)


if __name__ == "__main__":
    main()
