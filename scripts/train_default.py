#!/usr/bin/env python
"""Train the shipped default model: CompactDeblur (G) + motion net (M), the NeurMAP way, on a 2-core CPU.

Reproducible (fixed seeds, fixed iteration counts, one thread by default) and small enough for a 2-core CPU:
the shipped run took 41 minutes on a 2-core CPU shared with other jobs (load average 5-10; content phase
0.4 s/iteration), plus 5.4 minutes for scoring the teacher and 1.5 for its pseudo-targets, both cached in
``--run-dir`` (paid once per run directory). Data: only ``../shared/data`` beside the checkout (``--data``):

* GoPro-protocol pairs from the 240 fps sharp frames ``gopro240/GOPR0477_11_00`` **0-79** (7-13 frames
  averaged in linear light, middle frame as target); frames **80-119 are held out** for evaluation.
* Real blurry frames without targets: ``real_video/car`` (60 frames) and ``gopro_blurry_unpaired`` (10),
  plus kernel-synthesized blur of the training frames (known motion).
* The official DMPHN 1-2-4 weights (``pretrained/dmphn_1_2_4``) as a *teacher only*: its outputs on 20 real
  blurry 320² crops become extra (pseudo-)pairs in phase 1. Its weights never enter the shipped file.

Recipe (SPEC: "G starts from a pretrained backbone (content loss only) and is then trained with all losses"):

1. **content** — G alone, 4500 iterations, L1 + 0.1·L1 of the orthonormal FFT, Adam 1e-3 (100-iteration
   warm-up, cosine decay to 1e-5), bf16 autocast, 128² crops with random flips / 90° rotations, batch 8 =
   6 GoPro-protocol pairs mined for blur (the blurriest of 4 random candidates) + 1 uniformly drawn pair +
   1 teacher pseudo-pair.
2. **motion warm-up** — M alone, 80 iterations, Adam 3e-4: NeurMAP's motion-net data term with the true sharp
   image as Ŝ, ℓ_rb(R(S, vn M(B) − vn M(S)), B) + SPEC's TV / sharp / blur priors, plus an L1 to the known
   motion on kernel-blurred crops; batch 4 GoPro + 4 kernel, 128².
3. **NeurMAP** — 80 iterations of :class:`neurmap.core.train.Trainer` (all three networks, SPEC's losses,
   real-blur weights ``LossWeights.real_blur()``, lr_G 1e-5, batch 2 paired + 2 unpaired, 128², bf16);
   unpaired blurry = car + GoPro real blurry + kernel blur, unpaired sharp = training frames.

Held-out PSNR (8-bit, 4 full-frame GoPro-protocol pairs from frames 80-119) is recorded every 500 (content)
/ 40 (NeurMAP) iterations into ``bench/results/compact_training.json``; the teacher and the blurry input are
scored on the same pairs. Output: ``neurmap_core/weights/default.safetensors`` (G + M, fp32, 8.0 MB).

    python scripts/train_default.py              # the shipped recipe
    python scripts/train_default.py --quick      # a ~3-minute smoke run into runs/train_default_quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
GOPRO_SEQ = "gopro240/GOPR0477_11_00"
TRAIN_FRAMES = (0, 80)
HELDOUT_FRAMES = (80, 120)


# ------------------------------------------------------------------------------------------------
# held-out evaluation set (also used by bench/compact_bench.py)
# ------------------------------------------------------------------------------------------------

def heldout_pairs(data: Path = DEFAULT_DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurry, sharp), each (4, 3, 720, 1280): the held-out GoPro-protocol pairs, full frames.

    Windows start at frames 80, 89, 98 and 107 of GOPR0477_11_00 (never seen in training), each 7, 9, 11 or
    13 frames long (odd, so the target is the exact middle frame; lengths drawn with seed 1) — the same
    pairs every time."""
    from neurmap.core.data import gopro_pairs_from_folder

    pairs = gopro_pairs_from_folder(data / GOPRO_SEQ, n_frames=range(7, 14, 2), stride=9,
                                    frame_range=HELDOUT_FRAMES, seed=1)
    blurry, sharp = zip(*[pairs[i] for i in range(len(pairs))])
    return torch.stack(blurry), torch.stack(sharp)


@torch.no_grad()
def evaluate_psnr(model: torch.nn.Module, blurry: torch.Tensor, sharp: torch.Tensor, chunk: int = 1,
                  per_image: bool = False):
    """Mean 8-bit PSNR of ``model`` (a [0, 1] DeblurModel) over the images, in fp32 (or the list)."""
    from neurmap.core.metrics import psnr_per_image

    was = model.training
    model.eval()
    vals = []
    for i in range(0, len(blurry), chunk):
        out = model(blurry[i:i + chunk].float()).float().clamp(0, 1)
        vals.append(psnr_per_image(out, sharp[i:i + chunk]))
    model.train(was)
    vals = torch.cat(vals)
    return [round(float(v), 3) for v in vals] if per_image else float(vals.mean())


def input_psnr(blurry: torch.Tensor, sharp: torch.Tensor) -> float:
    from neurmap.core.metrics import psnr
    return psnr(blurry, sharp)


# ------------------------------------------------------------------------------------------------
# training data in memory (reading 7-13 PNGs per sample from disk would cost more than the net)
# ------------------------------------------------------------------------------------------------

def _read_rgb(path: Path) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def _augment(arrs: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / 90° rotation of HxWxC arrays (motion blur stays motion blur)."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrs:
        a = np.rot90(a, k, axes=(0, 1))
        if flip:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float()


class GoProCrops:
    """GoPro-protocol pairs cut on the fly from frames held in memory (linear light, float32)."""

    def __init__(self, folder: Path, frame_range: tuple[int, int]) -> None:
        from neurmap.core.data import list_images, srgb_to_linear

        files = list_images(folder)[frame_range[0]:frame_range[1]]
        self.srgb = np.stack([_read_rgb(p) for p in files])                       # (N,H,W,3) uint8
        self.lin = np.empty(self.srgb.shape, np.float32)
        for i in range(len(self.srgb)):
            self.lin[i] = srgb_to_linear(self.srgb[i].astype(np.float32) / 255.0)
        self.lengths = (7, 9, 11, 13)

    def sample(self, rng: np.random.Generator, crop: int, mine: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """One (blurry, sharp) crop; ``mine`` > 1 draws that many candidates and keeps the blurriest.

        Most of GOPR0477_11_00 is a flat court where blurry and sharp hardly differ (median crop: 1.4/255
        mean difference); mining puts the iterations where there is blur to remove."""
        from neurmap.core.data import linear_to_srgb

        h, w = self.lin.shape[1:3]
        best, best_score = None, -1.0
        for _ in range(max(1, mine)):
            n = int(rng.choice(self.lengths))
            first = int(rng.integers(0, len(self.lin) - n + 1))
            top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            if mine > 1:   # cheap score: blur in linear light on a 4x subsampled grid
                sub = self.lin[first:first + n, top:top + crop:4, left:left + crop:4]
                score = float(np.abs(sub.mean(0) - sub[n // 2]).mean())
                if score <= best_score:
                    continue
                best_score = score
            best = (n, first, top, left)
        n, first, top, left = best
        win = self.lin[first:first + n, top:top + crop, left:left + crop]
        blurry = np.clip(linear_to_srgb(win.mean(0)), 0, 1)
        sharp = self.srgb[first + n // 2, top:top + crop, left:left + crop].astype(np.float32) / 255.0
        blurry, sharp = _augment([blurry, sharp], rng)
        return _to_tensor(blurry), _to_tensor(sharp)

    def sharp_frame(self, i: int) -> torch.Tensor:
        return _to_tensor(self.srgb[i].astype(np.float32) / 255.0)


class TeacherCrops:
    """Real blurry crops and the teacher's outputs on them (pseudo-pairs for distillation)."""

    def __init__(self, teacher: torch.nn.Module, images: list[np.ndarray], per_image: int, size: int,
                 rng: np.random.Generator, log) -> None:
        self.blurry, self.target = [], []
        t0 = time.perf_counter()
        with torch.no_grad():
            for im in images:
                h, w = im.shape[:2]
                for _ in range(per_image):
                    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
                    b = _to_tensor(im[top:top + size, left:left + size].astype(np.float32) / 255.0)[None]
                    self.blurry.append(b[0].numpy().transpose(1, 2, 0))
                    self.target.append(teacher(b).clamp(0, 1)[0].numpy().transpose(1, 2, 0))
        log(f"teacher pseudo-pairs: {len(self.blurry)} crops of {size}² in {time.perf_counter() - t0:.0f} s")

    @classmethod
    def cached(cls, path: Path, *a, **k) -> "TeacherCrops":
        """Teacher outputs are deterministic: computed once per run directory, then read back."""
        if path.exists():
            obj = cls.__new__(cls)
            z = np.load(path)
            obj.blurry, obj.target = list(z["blurry"]), list(z["target"])
            return obj
        obj = cls(*a, **k)
        np.savez(path, blurry=np.stack(obj.blurry), target=np.stack(obj.target))
        return obj

    def sample(self, rng: np.random.Generator, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(rng.integers(len(self.blurry)))
        b, t = self.blurry[i], self.target[i]
        h, w = b.shape[:2]
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        b, t = _augment([b[top:top + crop, left:left + crop], t[top:top + crop, left:left + crop]], rng)
        return _to_tensor(b), _to_tensor(t)


# ------------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------------

def fft_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = torch.fft.rfft2(x.float(), norm="ortho") - torch.fft.rfft2(y.float(), norm="ortho")
    return d.abs().mean()


class Curve:
    """Held-out PSNR over the run, written to JSON after every point (a crash keeps what was measured)."""

    def __init__(self, path: Path, header: dict, heldout: tuple[torch.Tensor, torch.Tensor], log) -> None:
        self.path, self.header, self.heldout, self.log = path, header, heldout, log
        self.points: list[dict] = []
        self.t0 = time.perf_counter()

    def add(self, phase: str, it: int, G: torch.nn.Module, **extra) -> float:
        p = evaluate_psnr(G, *self.heldout)
        self.points.append({"phase": phase, "iteration": it, "psnr": round(p, 3),
                            "wall_s": round(time.perf_counter() - self.t0, 1),
                            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in extra.items()}})
        self.log(f"[{phase} {it}] held-out PSNR {p:.3f} dB  ({time.perf_counter() - self.t0:.0f} s)")
        self.write()
        return p

    def write(self, **more) -> None:
        self.header.update(more)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**self.header, "points": self.points}, indent=2))


def phase_content(G, gopro: GoProCrops, teacher: TeacherCrops | None, args, curve: Curve, log) -> None:
    rng = np.random.default_rng(args.seed)
    net = G.net
    net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999))
    warm = min(100, args.iters_content // 10)
    floor = args.lr_min / args.lr

    def lr_factor(i: int) -> float:   # linear warm-up, then cosine from lr to lr_min
        cos = 0.5 * (1 + math.cos(math.pi * min(i / args.iters_content, 1.0)))
        return min(1.0, (i + 1) / max(warm, 1)) * (floor + (1 - floor) * cos)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    n_teacher = args.teacher_per_batch if teacher is not None else 0
    running, t0 = 0.0, time.perf_counter()
    for it in range(1, args.iters_content + 1):
        n_gopro = args.batch - n_teacher
        pairs = [gopro.sample(rng, args.crop, mine=args.mine if i < n_gopro - args.uniform_per_batch else 1)
                 for i in range(n_gopro)]
        pairs += [teacher.sample(rng, args.crop) for _ in range(n_teacher)]
        b = torch.stack([p[0] for p in pairs]).contiguous(memory_format=torch.channels_last)
        s = torch.stack([p[1] for p in pairs])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = net(b)
        out = out.float()
        loss = F.l1_loss(out, s) + 0.1 * fft_l1(out, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if it % args.eval_every == 0 or it == args.iters_content:
            n = args.eval_every if it % args.eval_every == 0 else it % args.eval_every
            curve.add("content", it, G, loss=running / n, lr=sched.get_last_lr()[0],
                      s_per_it=(time.perf_counter() - t0) / it)
            running = 0.0
    net.to(memory_format=torch.contiguous_format)


def phase_motion(G, M, gopro: GoProCrops, args, log) -> list[dict]:
    """Warm up M with NeurMAP's motion-net data term at Ŝ = S, plus known motion on kernel-blurred crops."""
    from neurmap.core import losses as L
    from neurmap.core.data import kernel_blur, random_motion_field
    from neurmap.core.reblur import canonical_motion, reblur
    from neurmap.core.step import LossWeights, offsets_tv

    w = LossWeights()
    rng = np.random.default_rng(args.seed + 1)
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.Adam(M.parameters(), lr=args.lr_motion, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - 0.9 * i / max(args.iters_motion, 1))
    M.train()
    hist, t0 = [], time.perf_counter()
    half, c = args.motion_batch // 2, args.crop
    for it in range(1, args.iters_motion + 1):
        gp = [gopro.sample(rng, c, mine=args.mine) for _ in range(half)]
        kb, ks, km = [], [], []
        for _ in range(half):
            # kernel blur of a training frame, drawn with a margin so the crop edge sees real content
            f = int(rng.integers(len(gopro.srgb)))
            h, wd = gopro.srgb.shape[1:3]
            m = 22
            top, left = int(rng.integers(0, h - c - 2 * m)), int(rng.integers(0, wd - c - 2 * m))
            sharp = gopro.sharp_frame(f)[:, top:top + c + 2 * m, left:left + c + 2 * m]
            field = random_motion_field(c + 2 * m, c + 2 * m, generator=gen, max_px=20.0)
            blurry = kernel_blur(sharp, field, border="replicate").clamp(0, 1)
            kb.append(blurry[:, m:-m, m:-m]); ks.append(sharp[:, m:-m, m:-m]); km.append(field[:, m:-m, m:-m])
        B = torch.cat((torch.stack([p[0] for p in gp]), torch.stack(kb)))
        S = torch.cat((torch.stack([p[1] for p in gp]), torch.stack(ks)))
        truth = canonical_motion(torch.stack(km))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            m_all = canonical_motion(M(torch.cat((B, S))).float())
        m_b, m_s = m_all[:len(B)], m_all[len(B):]
        m_rel = m_b - m_s
        parts = {"reblur": L.reblur_loss(reblur(S, m_rel), B), "tv": offsets_tv(m_rel),
                 "sharp": L.sharp_zero_motion_loss(m_s), "blur": L.blurry_large_motion_loss(m_b),
                 "known_motion": F.l1_loss(m_b[half:], truth)}
        loss = (w.M_reblur * parts["reblur"] + w.M_tv * parts["tv"] + w.M_sharp * parts["sharp"]
                + w.M_blur * parts["blur"] + args.known_motion_weight * parts["known_motion"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(M.parameters(), 1.0)
        opt.step()
        sched.step()
        if it % max(1, args.iters_motion // 8) == 0 or it == args.iters_motion:
            rec = {"iteration": it, **{k: round(v.item(), 5) for k, v in parts.items()},
                   "motion_err_px": round(float(20 * (m_b[half:] - truth).norm(dim=1).mean()), 3),
                   "wall_s": round(time.perf_counter() - t0, 1)}
            hist.append(rec)
            log(f"[motion {it}] " + " ".join(f"{k}={v}" for k, v in rec.items() if k != "iteration"))
    M.eval()
    return hist


def phase_neurmap(init_path: Path, data: Path, args, curve: Curve, log):
    """The NeurMAP phase through the project's own Trainer (all losses, G + M + D)."""
    from neurmap.core.step import LossWeights
    from neurmap.core.train import Trainer, TrainConfig

    cfg = TrainConfig(
        backbone="compact", init_weights=str(init_path), init_motion=str(init_path),
        output_dir=str(args.run_dir / "neurmap"), iterations=args.iters_neurmap,
        batch_paired=2, batch_unpaired=2, crop=args.crop, lr_G=args.lr_neurmap_G, lr_M=1e-4, lr_D=1e-4,
        grad_clip=0.01, loss_weights=LossWeights.real_blur().as_dict(),
        data={"paired": {"type": "gopro240", "path": str(data / GOPRO_SEQ), "frame_range": list(TRAIN_FRAMES)},
              "unpaired_blurry": [{"type": "folder", "path": str(data / "real_video/car")},
                                  {"type": "folder", "path": str(data / "gopro_blurry_unpaired")},
                                  {"type": "kernel", "path": str(data / GOPRO_SEQ), "frame_range": list(TRAIN_FRAMES)}],
              "unpaired_sharp": {"type": "folder", "path": str(data / GOPRO_SEQ), "frame_range": list(TRAIN_FRAMES)}},
        checkpoint_every=max(args.iters_neurmap, 1), keep_checkpoints=1, log_every=10, seed=args.seed,
        device="cpu", precision="bf16" if args.bf16 else "fp32", tensorboard=False)
    trainer = Trainer(cfg, log=log)
    keys = ("G_content", "G_reblur", "G_global", "M_reblur", "D")
    acc: dict[str, float] = {}
    t0 = time.perf_counter()
    for it, losses, _ in trainer.iterations():
        for k in keys:
            acc[k] = acc.get(k, 0.0) + losses[k]
        if it % args.eval_every_neurmap == 0 or it == cfg.iterations:
            n = args.eval_every_neurmap if it % args.eval_every_neurmap == 0 else it % args.eval_every_neurmap
            curve.add("neurmap", it, trainer.step.G, s_per_it=(time.perf_counter() - t0) / it,
                      **{k: v / n for k, v in acc.items()})
            acc = {}
    return trainer.step.G, trainer.step.M, cfg


# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--out", type=Path, default=REPO / "neurmap_core/weights/default.safetensors")
    ap.add_argument("--curve", type=Path, default=REPO / "bench/results/compact_training.json")
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs/train_default")
    ap.add_argument("--iters-content", type=int, default=4500)
    ap.add_argument("--iters-motion", type=int, default=80)
    ap.add_argument("--iters-neurmap", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-every-neurmap", type=int, default=40)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--teacher-per-batch", type=int, default=1)
    ap.add_argument("--mine", type=int, default=4, help="GoPro crops: keep the blurriest of this many candidates")
    ap.add_argument("--uniform-per-batch", type=int, default=1, help="GoPro crops per batch drawn without mining")
    ap.add_argument("--teacher-crops", type=int, default=1, help="320² crops per real blurry frame used")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-min", type=float, default=1e-5)
    ap.add_argument("--lr-motion", type=float, default=3e-4)
    ap.add_argument("--lr-neurmap-G", type=float, default=1e-5)
    ap.add_argument("--motion-batch", type=int, default=8)
    ap.add_argument("--known-motion-weight", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 was fastest on a 2-core CPU shared with other jobs)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32 (2x slower on CPU)")
    ap.add_argument("--no-teacher", action="store_true", help="skip DMPHN 1-2-4 pseudo-pairs")
    ap.add_argument("--no-teacher-eval", action="store_true", help="do not score DMPHN 1-2-4 on the held-out crops")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny iteration counts, output under runs/")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters_content, args.iters_motion, args.iters_neurmap = 40, 4, 4
        args.eval_every, args.eval_every_neurmap, args.teacher_crops = 20, 2, 1
        args.run_dir = REPO / "runs/train_default_quick"
        args.out = args.run_dir / "default.safetensors"
        args.curve = args.run_dir / "compact_training.json"

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(args.run_dir / "log.txt", "a")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    from neurmap.core import load_weights, save_weights
    from neurmap.core.models import build_network
    from neurmap.core.models.wrapper import DeblurModel, MotionModel

    t_start = time.perf_counter()
    data = args.data
    for sub in (GOPRO_SEQ, "real_video/car", "gopro_blurry_unpaired", "pretrained/dmphn_1_2_4"):
        if not (data / sub).exists():
            raise SystemExit(f"missing {data / sub}: point --data at the shared data folder")

    log("loading held-out crops and training frames")
    heldout = heldout_pairs(data)
    gopro = GoProCrops(data / GOPRO_SEQ, TRAIN_FRAMES)
    header = {"what": "CompactDeblur default: held-out PSNR during training (scripts/train_default.py)",
              "heldout": "4 GoPro-protocol pairs (7-13 frames, odd; windows from frames 80, 89, 98, 107) of "
                         "GOPR0477_11_00, full 1280x720 frames; PSNR on 8-bit outputs",
              "blurry_psnr": round(input_psnr(*heldout), 3), "args": {k: str(v) for k, v in vars(args).items()},
              "torch": torch.__version__, "cpu_cores": os.cpu_count(), "load_avg_start": os.getloadavg()}
    curve = Curve(args.curve, header, heldout, log)
    log(f"blurry input: {header['blurry_psnr']:.3f} dB on the held-out pairs")

    teacher = None
    if not args.no_teacher or not args.no_teacher_eval:
        T, _ = load_weights(data / "pretrained/dmphn_1_2_4")
    if not args.no_teacher_eval and not args.quick:
        cache = args.run_dir / "dmphn_heldout.json"       # minutes on 2 cores: score the teacher once per run dir
        if cache.exists():
            rec = json.loads(cache.read_text())
        else:
            t0 = time.perf_counter()
            per = evaluate_psnr(T, *heldout, per_image=True)
            rec = {"dmphn_1_2_4_psnr": round(sum(per) / len(per), 3), "dmphn_1_2_4_per_pair": per,
                   "dmphn_eval_s": round(time.perf_counter() - t0, 1)}
            cache.write_text(json.dumps(rec))
        curve.write(**rec)
        log(f"DMPHN 1-2-4 (official weights): {rec['dmphn_1_2_4_psnr']:.3f} dB on the held-out pairs")
    if not args.no_teacher:
        from neurmap.core.data import list_images
        real = [_read_rgb(p) for p in list_images(data / "real_video/car")[::6]]
        real += [_read_rgb(p) for p in list_images(data / "gopro_blurry_unpaired")]
        if args.quick:
            real = real[:2]
        cache = args.run_dir / f"teacher_crops_{args.teacher_crops}_{len(real)}_{args.seed}.npz"
        teacher = TeacherCrops.cached(cache, T, real, args.teacher_crops, 320,
                                      np.random.default_rng(args.seed + 2), log)
    if "T" in locals():
        del T

    G = DeblurModel(build_network("compact").init_identity(), "0,1", "compact")
    M = MotionModel(build_network("motion"))
    curve.add("content", 0, G)
    t0 = time.perf_counter()
    phase_content(G, gopro, teacher, args, curve, log)
    curve.write(content_s=round(time.perf_counter() - t0, 1))

    t0 = time.perf_counter()
    motion_hist = phase_motion(G, M, gopro, args, log)
    curve.write(motion_warmup=motion_hist, motion_s=round(time.perf_counter() - t0, 1))

    init = args.run_dir / "after_content.safetensors"
    save_weights(init, G, M, provenance={"stage": "content + motion warm-up"})
    t0 = time.perf_counter()
    G, M, cfg = phase_neurmap(init, data, args, curve, log)
    curve.write(neurmap_s=round(time.perf_counter() - t0, 1))

    G, M = G.float().eval(), M.float().eval()
    final_per = evaluate_psnr(G, *heldout, per_image=True)
    final = sum(final_per) / len(final_per)
    total = time.perf_counter() - t_start
    prov = {"trained_by": "scripts/train_default.py", "recipe": "content (L1+FFT, GoPro-protocol pairs + DMPHN "
            "1-2-4 teacher pseudo-pairs) -> motion warm-up -> NeurMAP (Trainer, real-blur weights)",
            "data": ["gopro240/GOPR0477_11_00 frames 0-79 (GoPro protocol)", "real_video/car",
                     "gopro_blurry_unpaired", "kernel blur of frames 0-79"],
            "heldout": "GOPR0477_11_00 frames 80-119", "iterations": {"content": args.iters_content,
            "motion": args.iters_motion, "neurmap": args.iters_neurmap}, "seed": args.seed,
            "heldout_psnr": round(final, 3), "blurry_psnr": header["blurry_psnr"],
            "dmphn_1_2_4_psnr": curve.header.get("dmphn_1_2_4_psnr"), "train_wall_s": round(total)}
    save_weights(args.out, G, M, provenance=prov)
    from neurmap.core.metrics import psnr_per_image
    curve.write(final_psnr=round(final, 3), final_per_pair=final_per,
                blurry_per_pair=[round(float(v), 3) for v in psnr_per_image(*heldout)],
                total_wall_s=round(total, 1), load_avg_end=os.getloadavg(),
                weights=str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else str(args.out))
    log(f"done in {total / 60:.1f} min: held-out {final:.3f} dB (blurry {header['blurry_psnr']:.3f}, "
        f"DMPHN 1-2-4 {curve.header.get('dmphn_1_2_4_psnr')}); wrote {args.out} "
        f"({args.out.stat().st_size / 1e6:.1f} MB) and {args.curve}")


if __name__ == "__main__":
    main(sys.argv[1:])
