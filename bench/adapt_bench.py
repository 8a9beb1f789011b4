"""On-device adaptation bench (issue 6): ``python bench/adapt_bench.py`` (no args) -> bench/results/adapt.json.

What it measures, on this machine's CPU (one torch thread: on a shared 2-core box two threads oversubscribe
and run 3-10x slower; the load average is recorded with every number):

1. Domain shift with ground truth: the official DMPHN 1-2-4 (trained on GoPro-protocol blur) adapts to a
   stream of kernel-synthesized camera shake (``KernelBlurred`` over the top halves of scikit-image photos the
   motion net never saw, seeded, no sharp frames used); PSNR is measured on crops of the bottom halves
   (other pixels, other motion fields) that adaptation never sees, for each
   parameter set (LoRA, biases, last layers, everything) at the same number of steps, with the guard's
   decision, time per step, and memory per step (autograd-saved activations + gradient/Adam state).
2. Real stream: ``real_video/car`` (no ground truth): NIQE of held-out outputs, adapted vs unadapted, and of
   frames outside the buffer.
3. Cost: one step vs (G forward + motion-net forward) on the same crops; steps/s; stream FPS of the
   runtime pipeline with and without the online adapter.

``--weights default --motion default`` measures what users get (the shipped G and M; issue 13's single-image
path): ``python bench/adapt_bench.py --weights default --motion default --skip fps --out adapt_default``.

The motion net: the shipped default when installed is *not* used, so numbers stay comparable; a small one is
trained supervised on kernel blur (below) into ``runs/adapt/`` the first time (not shipped).

A small motion net for the adaptation bench and tests, trained supervised on kernel-synthesized blur.

Not shipped: the shipped motion net (``load_motion("default")``) is trained elsewhere with NeurMAP's losses.
This one exists so that adaptation can be measured before that lands. It sees gopro240 frames 0-79, Levin's
sharp images and scikit-image photos other than the bench's test scenes; only textured crops (flat ones
teach it nothing but a constant).

Targets: random smooth motion fields (``random_motion_field``, magnitudes 0-20 px, so partially blurred and
sharp crops are included: M must also measure the *residual* blur left in a deblurred image). Loss: L1 in
pixels, sign-invariant per pixel (a symmetric blur has no direction sign).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from neurmap.core.losses import sign_invariant_l1  # noqa: F401  (one definition; experiments import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "runs" / "adapt" / "motion_kernel.safetensors"


def _sources() -> list[torch.Tensor]:
    """Sharp training images: gopro240 frames 0-79 (every 4th), Levin's 4 sharp images, and scikit-image photos
    that are *not* among the bench's test scenes (``SCENES``). uint8 (3,H,W)."""
    from neurmap.core.data import array_to_tensor, list_images, read_image

    frames = []
    for p in list_images(SHARED / "gopro240" / "GOPR0477_11_00")[0:80:4]:
        frames.append((read_image(p) * 255).round().to(torch.uint8))
    levin = SHARED / "levin" / "gt"
    if levin.is_dir():
        for p in sorted(levin.glob("im*.png")):
            frames.append((read_image(p) * 255).round().to(torch.uint8))
    try:
        import skimage.data as skd
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "page", "text"):
            try:
                a = getattr(skd, name)()
            except Exception:  # noqa: BLE001 - some images need pooch downloads
                continue
            frames.append((array_to_tensor(np.asarray(a)) * 255).round().to(torch.uint8))
    except ImportError:
        pass
    return frames


def _textured(s: torch.Tensor, thresh: float = 0.02) -> bool:
    """Enough gradient energy for blur to be visible (flat crops teach M only to predict a constant)."""
    gy = (s[:, 1:] - s[:, :-1]).abs().mean()
    gx = (s[:, :, 1:] - s[:, :, :-1]).abs().mean()
    return float(gx + gy) > thresh


def sample_batch(frames, n: int, crop: int, g: torch.Generator, max_px: float = 20.0, p_sharp: float = 0.15):
    """(blurry, sharp, motion) crops: kernel blur with a random field (replicate borders via a margin)."""
    from neurmap.core.data import kernel_blur, random_motion_field

    margin = int(math.ceil(max_px)) + 1
    size = crop + 2 * margin
    bs, ss, ms = [], [], []
    for _ in range(n):
        f = frames[int(torch.randint(len(frames), (1,), generator=g))]
        h, w = f.shape[-2:]
        t = int(torch.randint(0, h - size + 1, (1,), generator=g))
        l = int(torch.randint(0, w - size + 1, (1,), generator=g))
        s = f[:, t:t + size, l:l + size].float() / 255
        for _retry in range(8):
            if _textured(s):
                break
            f = frames[int(torch.randint(len(frames), (1,), generator=g))]
            h, w = f.shape[-2:]
            t = int(torch.randint(0, h - size + 1, (1,), generator=g))
            l = int(torch.randint(0, w - size + 1, (1,), generator=g))
            s = f[:, t:t + size, l:l + size].float() / 255
        if torch.rand(1, generator=g).item() < 0.5:
            s = s.flip(-1)
        if torch.rand(1, generator=g).item() < p_sharp:
            m = torch.zeros(2, size, size)
        else:
            m = random_motion_field(size, size, generator=g, max_px=max_px, min_px=0.0)
        b = kernel_blur(s, m, border="replicate").clamp(0, 1)
        sl = (slice(None), slice(margin, margin + crop), slice(margin, margin + crop))
        bs.append(b[sl]), ss.append(s[sl]), ms.append(m[sl])
    return torch.stack(bs), torch.stack(ss), torch.stack(ms)




def train(out: Path = DEFAULT_OUT, seconds: float = 600.0, max_steps: int = 1200, crop: int = 64,
          batch: int = 8, lr: float = 1e-3, seed: int = 0, init: Path | None = None) -> dict:
    from neurmap.core.models import build_network

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    frames = _sources()
    net = build_network("motion")
    prior = {}
    if init is not None:                                   # continue an earlier phase
        from neurmap.core import load_motion
        net.load_state_dict(load_motion(init).net.state_dict())
        prior = json.loads(Path(init).with_suffix(".json").read_text())
        seed = seed + 1 + int(prior.get("steps", 0))
        g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0, step, log = time.perf_counter(), 0, []
    while step < max_steps and time.perf_counter() - t0 < seconds:
        b, s, m = sample_batch(frames, batch, crop, g)
        x = torch.cat((b, s[: batch // 4]))                 # a few exactly-sharp crops: zero motion
        y = torch.cat((m, torch.zeros_like(m[: batch // 4])))
        pred = net(x)
        loss = sign_invariant_l1(pred, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            spread = float(pred.detach()[:batch].norm(dim=1).std() * 20)   # a collapsed net predicts a constant
            log.append((step, round(time.perf_counter() - t0, 1), round(loss.item() * 20, 3), round(spread, 2)))
            print(f"step {step} t={log[-1][1]}s loss={log[-1][2]} px spread={log[-1][3]} px", flush=True)
        if step == int(0.75 * max_steps):
            for pg in opt.param_groups:
                pg["lr"] = lr * 0.3
    # held-out: gopro240 frames 100-119 crops; and |M(S)| on sharp crops (μ_sharp of this net)
    from neurmap.core.data import list_images, read_image
    held = [(read_image(p) * 255).round().to(torch.uint8)
            for p in list_images(SHARED / "gopro240" / "GOPR0477_11_00")[100:120:4]]
    gv = torch.Generator().manual_seed(1234)
    net.eval()
    with torch.no_grad():
        b, s, m = sample_batch(held, 16, 96, gv, p_sharp=0.0)
        epe = sign_invariant_l1(net(b), m).item() * 20
        zero = sign_invariant_l1(torch.zeros_like(m), m).item() * 20
        from neurmap.core.reblur import canonical_motion
        mu = canonical_motion(net(s)).abs().mean(dim=(0, 2, 3))
    stats = {"steps": step + int(prior.get("steps", 0)), "phases": (prior.get("phases") or ([{
                 "steps": prior["steps"], "lr": prior["lr"], "seconds": prior["seconds"]}] if prior else [])) + [
                 {"steps": step, "lr": lr, "seconds": round(time.perf_counter() - t0, 1)}], "seconds": round(time.perf_counter() - t0, 1), "heldout_l1_px": round(epe, 3),
             "heldout_l1_px_zero_predictor": round(zero, 3), "mu_sharp": [round(v, 4) for v in mu.tolist()],
             "crop": crop, "batch": batch, "lr": lr, "log": log[-8:]}
    save_motion_net(out, net, "bench/adapt_bench.py (motion)", {k: v for k, v in stats.items() if k != "log"}, stats)
    print(json.dumps(stats))
    return stats


def save_motion_net(out: Path, net, trained_by: str, provenance: dict, stats: dict) -> None:
    """A motion-only checkpoint ``load_motion`` reads (atomic), with ``stats`` beside it as ``.json``."""
    from safetensors.torch import save_file

    from neurmap.core.checkpoint import atomic_write
    sd = net.to(memory_format=torch.contiguous_format).state_dict()
    tensors = {f"motion.{k}": v.contiguous() for k, v in sd.items() if ".model." not in k}
    meta = {"format": "neurmap-motion/bench", "motion_architecture": "motion",
            "provenance": {"trained_by": trained_by, **provenance}}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata={"neurmap": json.dumps(meta)}))
    out.with_suffix(".json").write_text(json.dumps(stats, indent=2))



def ensure(out: Path = DEFAULT_OUT) -> Path:
    """The bench motion net, trained first when absent: 1200 steps at lr 3e-4 then 1050 at 2e-4 (one thread;
    ~35 min on a busy 2-core box)."""
    if not out.exists():
        train(out, seconds=7200.0, max_steps=1200, lr=3e-4)
        train(out, seconds=7200.0, max_steps=1050, lr=2e-4, init=out)
    return out


# ================================================================================================ the bench
SCENES = ("camera", "brick", "grass", "gravel", "coins", "moon", "hubble_deep_field", "retina")  # unseen by M
EVAL_CROP = 128
VARIANTS = [("lora", 5e-4), ("bias", 1e-4), ("last", 1e-4), ("all", 1e-5)]   # = default_lr
LOSS_OVERRIDES: dict = {}


def load_avg() -> float:
    import os
    return round(os.getloadavg()[0], 2)


def _scene_images() -> list[torch.Tensor]:
    """scikit-image photos the bench motion net never saw, RGB float, longer side <= 640."""
    import cv2
    import skimage.data as skd

    from neurmap.core.data import array_to_tensor

    out = []
    for name in SCENES:
        a = np.asarray(getattr(skd, name)())
        if max(a.shape[:2]) > 640:
            f = 640 / max(a.shape[:2])
            a = cv2.resize(a, (round(a.shape[1] * f), round(a.shape[0] * f)), interpolation=cv2.INTER_AREA)
        out.append(array_to_tensor(a))
    return out


def domain_shift_data(seed: int = 0):
    """(stream frames uint8, eval blurry (N,3,c,c), eval sharp): kernel-synthesized camera shake.

    Each scene is split in two: the top half feeds the stream the adapter watches (192² "frames", blurry
    only), the bottom half gives the PSNR crops (other pixels, other motion fields, never buffered)."""
    from neurmap.core.data import KernelBlurred

    imgs = _scene_images()
    tops = [im[:, : im.shape[1] // 2] for im in imgs]
    bottoms = [im[:, im.shape[1] // 2:] for im in imgs]
    stream = KernelBlurred(tops * 2, crop_size=192, seed=seed)
    frames = [(stream[i]["blurry"] * 255 + 0.5).to(torch.uint8) for i in range(len(stream))]
    ev = KernelBlurred(bottoms * 2, crop_size=EVAL_CROP, seed=seed + 1)
    items = [ev[i] for i in range(len(ev))]
    return frames, torch.stack([it["blurry"] for it in items]), torch.stack([it["sharp"] for it in items])


@torch.no_grad()
def eval_psnr(G, blurry, sharp, chunk: int = 2) -> float:
    from neurmap.core.metrics import psnr_per_image
    vals = [psnr_per_image(G(blurry[i:i + chunk]).clamp(0, 1), sharp[i:i + chunk]) for i in range(0, len(blurry), chunk)]
    return round(float(torch.cat(vals).mean()), 3)


def step_memory(G0, M, cfg, crops) -> dict:
    """Bytes one step keeps: tensors autograd saves for backward (deduplicated) + grads and Adam's two moments."""
    from neurmap.edge_runtime.adaptation import TrainableSet, adaptation_terms, clone_model, weighted

    G = clone_model(G0)
    ts = TrainableSet(G, cfg)
    seen, total = set(), [0]

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    mu = torch.full((2,), 0.02)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = weighted(adaptation_terms(G, M, crops, mu), cfg)
    loss.backward()
    ts.discard()
    state = ts.numel() * 4 * 3
    return {"activations_mb": round(total[0] / 2**20, 1), "param_state_mb": round(state / 2**20, 2),
            "total_mb": round((total[0] + state) / 2**20, 1)}


def forward_cost(G, M, crops, repeat: int = 3) -> float:
    """Seconds of G forward + motion-net forward (no grad) on ``crops``: the unit of the cost budget."""
    import statistics
    ts = []
    with torch.no_grad():
        for i in range(repeat + 1):
            t = time.perf_counter()
            M(G(crops))
            if i:
                ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_domain_shift(G0, M, steps: int, variants, log) -> dict:
    from neurmap.edge_runtime.adaptation import AdaptConfig, Adapter, FrameBuffer, clone_model, random_crops

    frames, eb, es = domain_shift_data()
    buf = FrameBuffer(capacity=len(frames), holdout_every=4).extend(frames)
    train_f, held_f = buf.snapshot()
    res = {"stream": f"KernelBlurred(top halves of skimage {', '.join(SCENES)}; 192^2 crops, seed 0): "
                     f"{len(train_f)} train + {len(held_f)} held-out frames",
           "eval": f"{len(eb)} crops {EVAL_CROP}^2 of KernelBlurred(bottom halves of the same photos, seed 1), "
                   "never buffered",
           "psnr_blurry": eval_psnr(lambda x: x, eb, es), "psnr_unadapted": eval_psnr(G0, eb, es), "variants": []}
    log(f"domain shift: blurry {res['psnr_blurry']} dB, unadapted {res['psnr_unadapted']} dB")
    probe = random_crops(train_f, 2, 96, torch.Generator().manual_seed(0))
    fwd = forward_cost(G0, M, probe)
    res["forward_G_plus_M_s"] = round(fwd, 3)
    for params, lr in variants:
        cfg = AdaptConfig(steps=steps, params=params, lr=lr, crop=96, batch=2, eval_crops=6, eval_crop=192,
                          min_blur_px=0.0, **LOSS_OVERRIDES)     # measure the curve even where M sees no blur
        G = clone_model(G0)
        adapter = Adapter(G, M, cfg)
        curve = {0: res["psnr_unadapted"]}

        def on_step(i, loss, adapter=adapter, curve=curve):
            if i in (steps // 2,):
                curve[i] = eval_psnr(adapter.G, eb, es)
        t0 = time.perf_counter()

        def on_merged(G_, curve=curve):       # what the round reached, before the guard decides
            curve[steps] = eval_psnr(G_, eb, es)
        r = adapter.run_round(train_f, held_f, on_step=on_step, on_merged=on_merged)
        final = curve[steps] if r.accepted else eval_psnr(G, eb, es)   # rolled back: the original again
        mem = step_memory(G0, M, cfg, probe)
        row = {"params": params, "lr": lr, "trainable": r.trainable, "steps": r.steps,
               "psnr_curve": {str(k): v for k, v in sorted(curve.items())},
               "gain_db_at_end_before_guard": round(curve[steps] - res["psnr_unadapted"], 3),
               "gain_db_per_step": round((curve[steps] - res["psnr_unadapted"]) / steps, 4),
               "accepted": r.accepted, "guard": r.reason, "psnr_after_guard": final,
               "gain_db_after_guard": round(final - res["psnr_unadapted"], 3),
               "score_before": r.before.as_dict(), "score_after": r.after.as_dict() if r.after else None,
               "step_s": round(r.step_seconds, 3), "step_over_forward": round(r.step_seconds / fwd, 2),
               "steps_per_s": round(1 / r.step_seconds, 3) if r.step_seconds else None,
               "round_s": round(time.perf_counter() - t0, 1), "memory": mem, "mu_sharp": r.mu_sharp,
               "load_avg": load_avg()}
        res["variants"].append(row)
        log(f"  {params:5s} lr {lr:g}: {row['psnr_curve']} accepted={r.accepted} step {row['step_s']} s "
            f"({row['step_over_forward']}x fwd) mem {mem['total_mb']} MB  [{r.reason}]")
    return res


def bench_real_stream(G0, M, params: str, lr: float, steps: int, log) -> dict:
    from neurmap.core.metrics import niqe
    from neurmap.edge_runtime.adapt_cli import read_frames
    from neurmap.edge_runtime.adaptation import (AdaptConfig, Adapter, FrameBuffer, clone_model, fixed_crops)

    car = SHARED / "real_video" / "car"
    frames = read_frames(str(car), 60)
    buffered = frames[0:40:2]                     # the stream the adapter saw (every 2nd of the first 40)
    outside = frames[41:60:6]                     # later frames, never buffered
    buf = FrameBuffer(capacity=len(buffered), holdout_every=4).extend(buffered)
    train_f, held_f = buf.snapshot()
    cfg = AdaptConfig(steps=steps, params=params, lr=lr, crop=96, batch=2, eval_crops=6, eval_crop=192,
                      min_blur_px=0.0, **LOSS_OVERRIDES)
    G = clone_model(G0)
    adapter = Adapter(G, M, cfg)
    probe = clone_model(G0)

    def on_merged(G_):                        # keep what the round reached, for the record, before the guard
        probe.net.load_state_dict(G_.net.state_dict())
    r = adapter.run_round(train_f, held_f, on_merged=on_merged)
    crops = fixed_crops(outside, 8, 192, seed=5)

    @torch.no_grad()
    def mosaic_niqe(model, x):
        out = torch.cat([model(x[i:i + 2]).clamp(0, 1) for i in range(0, len(x), 2)])
        return round(float(niqe(torch.cat(list(out), dim=-1))), 3)
    held = fixed_crops(held_f, 6, 192, seed=cfg.seed)
    res = {"stream": f"real_video/car: {len(train_f)} train + {len(held_f)} held-out frames (of frames 1-40)",
           "accepted": r.accepted, "guard": r.reason, "score_before": r.before.as_dict(),
           "score_after": r.after.as_dict() if r.after else None,
           "niqe_input_heldout": mosaic_niqe(lambda x: x, held), "niqe_unadapted_heldout": mosaic_niqe(G0, held),
           "niqe_round_weights_heldout": mosaic_niqe(probe, held), "niqe_deployed_heldout": mosaic_niqe(G, held),
           "niqe_input_outside": mosaic_niqe(lambda x: x, crops), "niqe_unadapted_outside": mosaic_niqe(G0, crops),
           "niqe_round_weights_outside": mosaic_niqe(probe, crops), "niqe_deployed_outside": mosaic_niqe(G, crops),
           "deployed": "adapted" if r.accepted else "unadapted (rolled back)", "step_s": round(r.step_seconds, 3),
           "note": "round_weights = what the round produced (before the guard); deployed = after the guard",
           "load_avg": load_avg()}
    log(f"real stream (car): accepted={r.accepted} [{r.reason}]; NIQE held-out unadapted "
        f"{res['niqe_unadapted_heldout']} -> round {res['niqe_round_weights_heldout']} -> deployed "
        f"{res['niqe_deployed_heldout']}; outside {res['niqe_unadapted_outside']} -> round "
        f"{res['niqe_round_weights_outside']} -> deployed {res['niqe_deployed_outside']}")
    return res


def bench_stream_fps(weights: str, M, log, size=(160, 96), n_frames: int = 24) -> dict:
    """Runtime pipeline (torch backend, offline) on shrunken car frames, with and without the online adapter."""
    import tempfile

    import cv2

    from neurmap.edge_runtime.adaptation import AdaptConfig
    from neurmap.edge_runtime.hotswap import OnlineAdapter, TorchSwap
    from neurmap.edge_runtime.pipeline import build_pipeline

    car = sorted((SHARED / "real_video" / "car").glob("*.jpg"))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(car[:n_frames]):
            cv2.imwrite(f"{d}/{i:04d}.png", cv2.resize(cv2.imread(str(p)), size, interpolation=cv2.INTER_AREA))
        for mode in ("plain", "adapting", "plain_again"):
            pipe = build_pipeline(d, weights, None, realtime=False)
            online = None
            if mode == "adapting":
                cfg = AdaptConfig(steps=1000, params="lora", lr=5e-4, crop=64, batch=2, eval_crops=2, eval_crop=96,
                                   min_blur_px=0.0)
                online = OnlineAdapter(TorchSwap(pipe.backend), pipe.backend.model, M, cfg, every=1, min_new=2,
                                       capacity=8, max_rounds=1)
            s = pipe.run()
            if online is not None:
                online.close()
            out[mode] = {"fps": round(s["fps"], 3), "frames": s["frames_written"], "load_avg": load_avg()}
            log(f"  stream {mode}: {out[mode]['fps']} fps over {s['frames_written']} frames of {size[0]}x{size[1]}")
    out["fps_ratio_adapting_vs_plain"] = round(out["adapting"]["fps"] / ((out["plain"]["fps"] + out["plain_again"]["fps"]) / 2), 3)
    out["note"] = ("torch backend, 1 torch thread; the adapter thread trains continuously (one long round) "
                   "beside the stream on the same 2 cores")
    return out


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS))
    ap.add_argument("--skip", default="", help="comma list of parts to skip: shift,real,fps")
    ap.add_argument("--out", default="adapt")
    ap.add_argument("--w-reblur", type=float, default=None, help="override λ_G_reblur (pilots)")
    ap.add_argument("--w-sharp", type=float, default=None, help="override λ_G_f_sharp (pilots)")
    ap.add_argument("--lr-scale", type=float, default=1.0, help="scale every variant's lr (pilots)")
    ap.add_argument("--lr", action="append", default=[], metavar="SET=LR",
                    help="this parameter set's lr instead of the default (repeatable), e.g. bias=1e-3")
    ap.add_argument("--motion", default=None, help="motion-net checkpoint or shipped name, e.g. default "
                    "(default: the bench's own, trained if absent)")
    ap.add_argument("--weights", default=str(SHARED / "pretrained" / "dmphn_1_2_4"),
                    help="the deblur net adapted: weights path or shipped name, e.g. default (default: the official "
                         "DMPHN 1-2-4, as in the bench's first runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from neurmap.core import load_motion, load_weights

    if args.w_reblur is not None:
        LOSS_OVERRIDES["w_reblur"] = args.w_reblur
    if args.w_sharp is not None:
        LOSS_OVERRIDES["w_sharp"] = args.w_sharp
    chosen_lr = {k: float(v) for k, v in (s.split("=", 1) for s in args.lr)}
    variants = [(v, chosen_lr.get(v, lr) * args.lr_scale) for v, lr in VARIANTS]

    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    motion = args.motion or str(ensure())
    M = load_motion(motion).eval()
    side = Path(motion).with_suffix(".json")
    mstats = json.loads(side.read_text()) if side.exists() else {}
    weights = args.weights
    G0, _ = load_weights(weights)
    skip = set(filter(None, args.skip.split(",")))
    result = {"motion_net": {"path": motion, **{k: mstats[k] for k in
              ("steps", "heldout_l1_px", "heldout_l1_px_zero_predictor", "mu_sharp") if k in mstats}},
              "deblur_net": "official DMPHN 1-2-4 (GoPro-trained)" if "dmphn_1_2_4" in weights else weights,
              "torch_threads": 1, "load_avg_start": load_avg(),
              "loss_overrides": dict(LOSS_OVERRIDES)}
    chosen = dict(variants)
    if "shift" not in skip:
        wanted = [v for v in variants if v[0] in args.variants.split(",")]
        result["domain_shift"] = bench_domain_shift(G0, M, args.steps, wanted, log)
    if "real" not in skip:
        result["real_stream"] = bench_real_stream(G0, M, "lora", chosen["lora"], args.steps, log)
    if "fps" not in skip:
        result["stream_fps"] = bench_stream_fps(weights, M, log)
    result["load_avg_end"] = load_avg()
    result["log"] = lines
    sys.path.insert(0, str(ROOT / "bench"))
    from common import machine
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2))
    print(f"wrote {path}")


RESULTS = ROOT / "bench" / "results"

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--motion-continue":   # extra training phase for the motion net
        torch.set_num_threads(1)
        train(Path(sys.argv[3]), seconds=float(sys.argv[4]), max_steps=int(sys.argv[5]), lr=float(sys.argv[6]),
              init=Path(sys.argv[2]))
    else:
        main(sys.argv[1:])
