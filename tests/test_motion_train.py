"""Training M to read blur (issue #13): known per-pixel blur of synthetic shake, the video_flow source,
NeurMAPStep's motion terms, the motion_only trainer (exact resume, G carried unchanged), config errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurmap.core import build_model
from neurmap.core.data import PhotoPairs, SynthesizedGoPro, VideoFlowMotion, camera_shake_clip, write_image
from neurmap.core.data.synthesis import affine_blur_motion, affine_matrix, kernel_blur, random_motion_field
from neurmap.core.errors import ConfigError, InputError, NeurmapError
from neurmap.core.losses import sign_invariant_l1
from neurmap.core.reblur import reblur
from neurmap.core.step import LossWeights, NeurMAPStep
from neurmap.core.train import TrainConfig, Trainer

from conftest import SHARED_DATA, shared_path


def _mse(a, b, border=6):
    return float(((a - b)[..., border:-border, border:-border] ** 2).mean())


def _linear_reblur(sharp, m):
    """reblur in linear light, as the renderers average their views (sRGB averaging would be the error floor)."""
    from neurmap.core.data import linear_to_srgb, srgb_to_linear
    return linear_to_srgb(reblur(srgb_to_linear(sharp), m))


def _rot90(m):
    """The same blur turned by 90°: the wrong direction at the right length."""
    return torch.stack((-m[:, 1], m[:, 0]), 1)


# ------------------------------------------------------------------------------------------------ truth


@pytest.mark.parametrize("rotation", [0.0, 3.0])
def test_camera_shake_truth_explains_the_blur(rotation):
    skd = pytest.importorskip("skimage.data")
    kw = dict(n_frames=3, size=(80, 96), max_blur_px=12.0, max_rotation_deg=rotation, exposure=0.75, seed=3)
    blurry, sharp, truth = camera_shake_clip(skd.astronaut(), motion=True, **kw)
    plain = camera_shake_clip(skd.astronaut(), **kw)
    assert torch.equal(plain[0], blurry) and torch.equal(plain[1], sharp)      # the option changes no output
    assert truth.shape == (3, 2, 80, 96) and float(truth.norm(dim=1).mean()) * 20 > 2.0
    err = _mse(_linear_reblur(sharp, truth), blurry)      # the clip averages its views in linear light
    zero, turned = _mse(sharp, blurry), _mse(_linear_reblur(sharp, _rot90(truth)), blurry)
    assert err < 0.15 * zero and err < 0.25 * turned, (err, zero, turned)
    spread = float(truth.norm(dim=1).flatten(1).std(1).max())
    assert spread > 0.01 if rotation else spread < 1e-4  # a rotation's blur varies over the frame, a shift's not


def test_truth_of_a_straight_path_is_the_endpoint_formula_and_does_not_depend_on_the_views():
    """15 views spanning the path (reblur's 15 taps): m = (W_last − W_first)/2/20 exactly. Views at the cell
    centres of one exposure (as camera_shake_clip renders it) give the same blur for 9, 15 or 31 views, where
    the endpoints alone would read 8/9 vs 30/31 of it."""
    shift = lambda s: affine_matrix((0, 0), 0.0, 1.0, 6.0 * s, -2.0 * s)     # W_k(x) = x − (6, −2)·t_k
    times = np.linspace(-0.5, 0.5, 15)
    m = affine_blur_motion([shift(t) for t in times], times, shift(0.0), 4, 5)
    assert torch.allclose(m, m[:, :1, :1].expand_as(m), atol=1e-6)           # a translation: one vector
    assert torch.allclose(m[:, 0, 0] * 20, torch.tensor([1.0, -3.0]), atol=1e-5)   # (dy, dx) = (W_l − W_f)/2
    got = {}
    for n in (9, 15, 31):
        cells = (np.arange(n) + 0.5) / n - 0.5
        got[n] = affine_blur_motion([shift(t) for t in cells], cells, shift(0.0), 2, 2)[:, 0, 0] * 20
    assert torch.allclose(got[15], torch.tensor([1.0, -3.0]) * 14 / 15, atol=1e-5)
    assert torch.allclose(got[9], got[15], rtol=0.01) and torch.allclose(got[31], got[15], rtol=0.01), got


def _photos(tmp_path, n=3, size=(90, 120)):
    import cv2

    from neurmap.core.data import photo_split
    src = photo_split(shared_path("sharp_photos"), "heldout")[:n]
    out = []
    for i, p in enumerate(src):
        img = cv2.resize(cv2.imread(str(p)), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out.append(tmp_path / f"p{i}.png")
        cv2.imwrite(str(out[-1]), img)
    return out


@pytest.mark.parametrize("blur", ["shake", "kernel"])
def test_photo_pairs_motion_truth_and_unchanged_outputs(tmp_path, blur):
    photos = _photos(tmp_path)
    kw = dict(crop_size=48, blur=blur, max_px=10.0, p_sharp=0.0, degrade=False, seed=7, items_per_photo=3)
    with_m, plain = PhotoPairs(photos, motion=True, **kw), PhotoPairs(photos, **kw)
    errs = []
    for i in range(len(plain)):
        a, b = with_m[i], plain[i]
        assert set(b) == {"blurry", "sharp"} and a["motion"].shape == (2, 48, 48)
        assert torch.equal(a["blurry"], b["blurry"]) and torch.equal(a["sharp"], b["sharp"])
        s, m, bl = a["sharp"][None], a["motion"][None], a["blurry"][None]   # flips / quarter turns included
        if blur == "kernel":
            rb = lambda mm: kernel_blur(s, mm, border="replicate")
        else:
            from neurmap.core.data import linear_to_srgb, srgb_to_linear
            rb = lambda mm: linear_to_srgb(kernel_blur(srgb_to_linear(s), mm, border="replicate"))
        errs.append((_mse(rb(m), bl), _mse(s, bl), _mse(rb(_rot90(m)), bl)))
    true, zero, turned = np.mean(errs, 0)
    # shake paths curve (acceleration, tremor): the best straight blur explains less of them than of kernel blur
    assert true < 0.4 * zero and true < (0.7 if blur == "shake" else 0.1) * turned, (true, zero, turned)


def test_gopro240_motion_from_flow_between_sharp_frames():
    ds = SynthesizedGoPro(shared_path("gopro240", "GOPR0477_11_00"), frame_range=(0, 40), n_frames=(9, 9),
                          crop_size=96, seed=0, cache=True, motion=True)
    errs = []
    for i in (2, 14, 26):
        it = ds[i]
        s, m, b = it["sharp"][None], it["motion"][None], it["blurry"][None]
        rb = lambda mm: kernel_blur(s, mm, border="replicate")
        errs.append((_mse(rb(m), b), _mse(s, b), _mse(rb(_rot90(m)), b)))
    true, zero, turned = np.mean(errs, 0)
    assert true < 0.5 * zero and true < turned, (true, zero, turned)


# ------------------------------------------------------------------------------------------------ video_flow


def _moving_clip(folder, v=(1.5, 4.0), exposure=0.5, n=6):
    from test_flow_motion import _translation_clip

    folder.mkdir()
    for t, f in enumerate(_translation_clip(v, exposure, n=n, size=(72, 96))):
        write_image(folder / f"{t:04d}.png", f)
    return folder


def test_video_flow_source_reads_a_known_translation(tmp_path):
    v, e = (1.5, 4.0), 0.5
    clip = _moving_clip(tmp_path / "clip", v, e)
    ds = VideoFlowMotion(clip, frame_range=(1, 6), exposure=e, crop_size=48, flow_scale=1.0, seed=0)

    class Spy:                                       # records which frames the source is asked for
        def __init__(self, src):
            self.src, self.read = src, set()

        def __len__(self):
            return len(self.src)

        def __getitem__(self, i):
            self.read.add(i)
            return self.src[i]

    ds.source = Spy(ds.source)
    assert len(ds) == 5
    items = [ds[i] for i in range(len(ds))]
    assert sorted(ds.source.read) == [1, 2, 3, 4, 5]   # frame 0 (outside frame_range) is never read
    assert all(it["blurry"].shape == (3, 48, 48) and it["motion"].shape == (2, 48, 48) for it in items)
    want = torch.tensor(v) * e / 2 / 20              # reblur's taps span ±20·m: half the streak e·v
    got = torch.stack([it["motion"][:, 8:-8, 8:-8].abs().mean((1, 2)) for it in items[1:-1]]).mean(0)
    assert torch.allclose(got, want, rtol=0.15), (got, want)
    again = VideoFlowMotion(clip, frame_range=(1, 6), exposure=e, crop_size=48, flow_scale=1.0, seed=0)
    assert all(torch.equal(again[i]["motion"], items[i]["motion"]) for i in range(len(ds)))   # reproducible


def test_video_flow_estimates_the_exposure_once(tmp_path):
    from test_flow_motion import _translation_clip

    def path(s):
        w = 2 * np.pi * 0.1
        return 9.0 * np.sin(w * s + 0.3), 14.0 * np.sin(0.7 * w * s + 1.1)

    folder = tmp_path / "shake"
    folder.mkdir()
    for t, f in enumerate(_translation_clip(exposure=0.6, n=7, path=path)):
        write_image(folder / f"{t:04d}.png", f)
    ds = VideoFlowMotion(folder, crop_size=64, flow_scale=1.0, seed=0)
    assert ds.exposure is None and ds.prepare() == pytest.approx(0.6, rel=0.25)
    first = ds._motion
    ds[0]
    assert ds._motion is first                       # computed once, kept


# ------------------------------------------------------------------------------------------------ the step


def _tiny_batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sharp = torch.rand(n, 3, size, size, generator=g)
    sharp = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1)          # some structure, still textured
    motion = torch.stack([random_motion_field(size, size, g, max_px=8.0, min_px=4.0) for _ in range(n)])
    return kernel_blur(sharp, motion, border="replicate"), sharp, motion


def _params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_motion_only_step_lowers_the_supervised_loss_and_touches_only_M():
    torch.manual_seed(0)
    G, M, D = build_model("compact"), build_model("motion"), build_model("discriminator")
    step = NeurMAPStep(G, M, D, weights=LossWeights(M_supervised=1.0, M_sharp=1.0, M_video=0.5), lr_M=3e-4)
    _, s, _ = _tiny_batch()
    m = torch.tensor([0.15, 0.3]).view(1, 2, 1, 1).expand(2, 2, 32, 32).contiguous()   # a 6.7 px shift blur
    b = kernel_blur(s, m, border="replicate")
    g0, d0 = _params(G), _params(D)
    losses = [step.motion_only(b, s, m, b[:1], m[:1]) for _ in range(8)]
    assert set(losses[0]) == {"M_supervised", "M_sharp", "M_video", "M_total"}
    first, last = losses[0]["M_supervised"].item(), losses[-1]["M_supervised"].item()
    assert last < 0.5 * first, [round(x["M_supervised"].item(), 4) for x in losses]
    assert all(torch.equal(g0[k], v) for k, v in G.state_dict().items())
    assert all(torch.equal(d0[k], v) for k, v in D.state_dict().items())


def test_sign_invariant_l1_ignores_the_sign_only():
    m = torch.randn(2, 2, 5, 5)
    assert sign_invariant_l1(-m, m) == 0 and sign_invariant_l1(m, m) == 0
    flipped = torch.where(torch.rand(2, 1, 5, 5) < 0.5, -m, m)              # per-pixel sign flips
    assert sign_invariant_l1(flipped, m) == 0
    assert sign_invariant_l1(torch.zeros_like(m), m) == pytest.approx(m.abs().sum(1).mean().item())


def test_neurmap_step_unchanged_unless_motion_terms_are_weighted():
    def run(weights, **targets):
        torch.manual_seed(0)
        G, M, D = build_model("compact"), build_model("motion"), build_model("discriminator")
        step = NeurMAPStep(G, M, D, weights=weights)
        torch.manual_seed(1)
        out = step(pb, ps, ub, us, **targets)
        return out, {**_params(G), **{f"M.{k}": v for k, v in _params(M).items()}}

    pb, ps, pm = _tiny_batch(1, seed=2)
    ub, us, um = _tiny_batch(1, seed=3)
    base, wb = run(LossWeights())
    given, wg = run(LossWeights(), paired_motion=pm, unpaired_motion=um)      # targets given, weights 0
    assert base.keys() == given.keys() and all(torch.equal(base[k], given[k]) for k in base)
    assert all(torch.equal(wb[k], wg[k]) for k in wb)
    on, _ = run(LossWeights(M_supervised=1.0, M_video=0.5), paired_motion=pm, unpaired_motion=um)
    assert {"M_supervised", "M_video"} <= set(on)
    extra = 1.0 * on["M_supervised"] + 0.5 * on["M_video"]
    assert on["M_total"].item() == pytest.approx(base["M_total"].item() + extra.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="M_supervised > 0 needs its motion target"):
        run(LossWeights(M_supervised=1.0))


# ------------------------------------------------------------------------------------------------ the trainer


def _motion_config(tmp_path, out, **kw) -> TrainConfig:
    photos = tmp_path / "photos"
    if not photos.exists():
        photos.mkdir()
        _photos(photos)
    clip = tmp_path / "clip"
    if not clip.exists():
        _moving_clip(clip)
    d = dict(backbone="compact", init_weights="default", motion_only=True, output_dir=str(out), iterations=4,
             crop=32, batch_paired=2, batch_unpaired=1, checkpoint_every=2, tensorboard=False, device="cpu",
             precision="fp32", lr_M=5e-4, lr_schedule="cosine", lr_warmup=1, ema_decay=0.5,
             loss_weights={"M_supervised": 1.0, "M_sharp": 1.0, "M_video": 0.5},
             data={"paired": [{"type": "photos", "path": str(photos), "split": "all", "max_px": 8.0,
                               "motion": True, "weight": 0.5},
                              {"type": "gopro240", "path": str(SHARED_DATA / "gopro240" / "GOPR0477_11_00"),
                               "frame_range": [0, 12], "n_frames": [7, 9], "cache": True, "motion": True,
                               "weight": 0.5}],
                   "unpaired_blurry": {"type": "video_flow", "path": str(clip), "frame_range": [0, 5],
                                       "exposure": 0.5, "flow_scale": 1.0}})
    d.update(kw)
    return TrainConfig.from_dict(d)


def _weights(trainer):
    s = trainer.step
    out = {f"{n}.{k}": v.clone() for n, net in (("G", s.G), ("M", s.M), ("D", s.D))
           for k, v in net.state_dict().items()}
    return {**out, **{f"ema.{k}": v.clone() for k, v in s.ema.state_dict().items()}}


def test_motion_only_training_resumes_exactly_and_carries_G(tmp_path):
    from safetensors.torch import load_file

    from neurmap.core.checkpoint import resolve_weights
    shared_path("gopro240", "GOPR0477_11_00")
    shared_path("sharp_photos")
    full = Trainer(_motion_config(tmp_path, tmp_path / "full"))
    start = _weights(full)
    full_losses = [losses for _, losses, _ in full.iterations()]
    assert all(set(x) == {"M_supervised", "M_sharp", "M_video", "M_total"} for x in full_losses)
    end = _weights(full)
    moved = lambda net: any(not torch.equal(start[k], end[k]) for k in start if k.startswith(net + "."))
    assert moved("M") and moved("ema") and not moved("G") and not moved("D")
    assert full.scheds[1].get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)   # cosine to lr_min_ratio 0

    half = Trainer(_motion_config(tmp_path, tmp_path / "half"))
    gen = half.iterations()
    first = [next(gen)[1] for _ in range(2)]
    gen.close()
    resumed = Trainer(_motion_config(tmp_path, tmp_path / "other"), resume=tmp_path / "half")
    assert resumed.start == 2
    assert first + [losses for _, losses, _ in resumed.iterations()] == full_losses
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)

    final, shipped = load_file(str(tmp_path / "full" / "final.safetensors")), load_file(str(resolve_weights("default")))
    deblur = [k for k in shipped if k.startswith("deblur.")]
    assert deblur and all(torch.equal(final[k], shipped[k]) for k in deblur)              # G as init_weights gave it
    ema_m = {k[len("module.net."):]: v for k, v in full.step.ema.state_dict().items() if k.startswith("module.net.")}
    motion = [k for k in final if k.startswith("motion.")]
    assert motion and all(torch.equal(final[k], ema_m[k[len("motion."):]]) for k in motion)  # M = its EMA


def test_motion_training_config_errors_are_one_line(tmp_path):
    shared_path("gopro240", "GOPR0477_11_00")
    shared_path("sharp_photos")
    with pytest.raises(ConfigError, match="paired_only and motion_only exclude each other"):
        TrainConfig.from_dict({"paired_only": True, "motion_only": True})
    cfg = _motion_config(tmp_path, tmp_path / "x")
    no_video = {k: v for k, v in cfg.data.items() if k != "unpaired_blurry"}
    with pytest.raises(NeurmapError, match="M_video > 0 needs data.unpaired_blurry"):
        Trainer(_motion_config(tmp_path, tmp_path / "x", data=no_video))
    no_motion = {**cfg.data, "paired": {"type": "gopro240", "path": cfg.data["paired"][1]["path"],
                                        "frame_range": [0, 12], "n_frames": 7}}
    trainer = Trainer(_motion_config(tmp_path, tmp_path / "y", data=no_motion))
    with pytest.raises(NeurmapError, match="without 'motion'.*motion: true"):
        next(trainer.iterations())
    with pytest.raises(NeurmapError, match="unknown data type 'videoflow'.*video_flow"):
        Trainer(_motion_config(tmp_path, tmp_path / "z", data={**cfg.data, "unpaired_blurry": {
            "type": "videoflow", "path": str(tmp_path / "clip")}}))
    with pytest.raises(InputError, match="exposure 1.5 must be in"):
        VideoFlowMotion(tmp_path / "clip", exposure=1.5)
    with pytest.raises(InputError, match="needs >= 3 consecutive frames.*or give exposure"):
        VideoFlowMotion(tmp_path / "clip", frame_range=(0, 2))


def test_masked_motion_terms_skip_images_without_a_target():
    """An unpaired mix of video (flow-derived target) and other blur (all-NaN target): M_video is the mean over
    the images with a target, its gradient finite; none with a target gives 0."""
    pred = torch.randn(3, 2, 8, 8, requires_grad=True)
    target = torch.randn(3, 2, 8, 8)
    valid = torch.tensor([True, False, True])
    got = sign_invariant_l1(pred, target.masked_fill(~valid.view(3, 1, 1, 1), 0.0), valid)
    assert got.item() == pytest.approx(sign_invariant_l1(pred[valid], target[valid]).item(), rel=1e-6)
    got.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1].abs().sum() == 0
    assert sign_invariant_l1(pred, target, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    from neurmap.core.data import KernelBlurred
    frames = torch.rand(2, 3, 40, 40)
    told, untold = (KernelBlurred(frames, crop_size=24, flip=True, seed=1, motion=m) for m in (True, False))
    assert "motion" in told[1] and set(untold[1]) == {"blurry", "sharp"}            # the same blur, untold
    assert torch.equal(told[1]["blurry"], untold[1]["blurry"])

    torch.manual_seed(0)
    G, M, D = build_model("compact"), build_model("motion"), build_model("discriminator")
    step = NeurMAPStep(G, M, D, weights=LossWeights(M_video=0.5))
    pb, ps, _ = _tiny_batch(1, seed=2)
    ub, us, um = _tiny_batch(2, seed=3)
    um[1] = float("nan")                              # the second unpaired image has no motion target
    out = step(pb, ps, ub, us, unpaired_motion=um)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert all(torch.isfinite(p).all() for p in M.parameters())


def test_neurmap_run_with_the_motion_prior_logs_its_M_terms(tmp_path):
    """A full NeurMAP run (not motion_only) through neurmap train's loop: M_supervised on pairs carrying motion,
    M_video on an unpaired mix of a video_flow clip and kernel blur told no motion; both in log.jsonl, and M_total
    = SPEC's six terms + the two, weighted."""
    import json

    from neurmap.core.train import run_training

    shared_path("sharp_photos")
    cfg = _motion_config(tmp_path, tmp_path / "run", motion_only=False, iterations=2, checkpoint_every=2,
                         log_every=1, batch_paired=1, batch_unpaired=2,
                         loss_weights={"M_supervised": 1.0, "M_video": 0.5})
    photos = str(tmp_path / "photos")
    cfg.data = {"paired": {"type": "photos", "path": photos, "split": "all", "max_px": 8.0, "motion": True},
                "unpaired_blurry": [{"type": "kernel", "path": photos, "max_px": 8.0, "motion": False},
                                    cfg.data["unpaired_blurry"]],
                "unpaired_sharp": {"type": "folder", "path": photos}}
    run_training(cfg, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged] == [1, 2]
    w = LossWeights(M_supervised=1.0, M_video=0.5)
    for r in logged:
        assert {"M_supervised", "M_video", "G_reblur", "G_total", "D"} <= set(r)
        assert all(np.isfinite(v) for v in r.values())
        spec = ("M_reblur", "M_tv", "M_sharp", "M_blur", "M_f_sharp", "M_never_blurrier", "M_supervised", "M_video")
        assert r["M_total"] == pytest.approx(sum(getattr(w, k) * r[k] for k in spec), rel=1e-4)
    assert (tmp_path / "run" / "final.safetensors").exists()

    cfg.data["unpaired_blurry"] = cfg.data["unpaired_blurry"][0]             # kernel blur only: no target
    with pytest.raises(NeurmapError, match="M_video > 0 needs a data.unpaired_blurry source with motion"):
        run_training(cfg, progress=False)


def test_photo_clips_source_is_unpaired_video_of_training_photos_only(tmp_path):
    """``photo_clips``: blurry handheld clips of training-split photos with their flow-derived blur, no sharp frame."""
    from neurmap.core.data.photos import is_heldout
    from neurmap.core.train_data import build_source

    rng = np.random.default_rng(0)
    texture = np.kron(rng.random((12, 12, 1)), np.ones((8, 8, 1)))          # blocks: edges the flow can follow
    names = [f"p{k:02d}.png" for k in range(16)]
    held = [n for n in names if is_heldout(n)]
    assert held and len(held) < len(names)
    for n in names:                                   # held-out photos black, training photos bright texture
        img = np.zeros((96, 96, 3)) if is_heldout(n) else 0.3 + 0.6 * np.repeat(texture, 3, axis=2)
        write_image(tmp_path / n, torch.from_numpy(img.transpose(2, 0, 1)).float())
    spec = {"type": "photo_clips", "path": str(tmp_path), "n_clips": 99, "n_frames": 4, "size": 64,
            "max_blur_px": [10.0, 10.0], "exposure": [1.0, 1.0], "flow_scale": 1.0, "seed": 3}
    ds = build_source(spec, 48, "unpaired_blurry")
    assert len(ds.datasets) == len(names) - len(held) and len(ds) == 4 * len(ds.datasets)
    items = [ds[i] for i in range(len(ds))]
    assert all(set(it) == {"blurry", "motion"} for it in items)          # nothing sharp travels with them
    assert min(float(it["blurry"].mean()) for it in items) > 0.2         # no held-out (black) photo drawn
    blur = np.mean([20 * float(it["motion"].abs().mean()) for it in items])
    assert 0.5 < blur < 6.0, blur                                        # the shake is read, not zero
    again = build_source(spec, 48, "unpaired_blurry")
    assert torch.equal(again[5]["blurry"], items[5]["blurry"])           # the same clips every build
