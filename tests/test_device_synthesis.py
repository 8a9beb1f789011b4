"""Blur synthesis on the training device (``synthesis_device``): the CPU path keeps its bits, the device path
(run here on the CPU, the same torch code) makes the same pairs up to interpolation rounding, with the same
statistics and known motion, and a batch stays a pure function of (seed, iteration)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, shared_path
from neurmap.core.data import PhotoPairs, SynthesizedGoPro, kernel_blur, linear_to_srgb, photo_split, srgb_to_linear
from neurmap.core.data.device_synthesis import defer, pack, render
from neurmap.core.data.synthesis import draw_motion_field, motion_fields, random_motion_field
from neurmap.core.errors import ConfigError
from neurmap.core.metrics.psnr import psnr_per_image
from neurmap.core.train import BatchSampler, load_config

DIGESTS = Path(__file__).parent / "reference" / "synthesis_cpu_digests.json"


def _h(t: torch.Tensor) -> list[float]:
    """Mean, std and 16 strided values of a tensor: compared with a tolerance (another CPU's OpenCV / oneDNN
    kernels may differ in the last float bits; a changed draw or branch moves these by far more)."""
    a = t.double().flatten()
    return [round(float(a.mean()), 6), round(float(a.std()), 6)] + \
        [round(float(v), 6) for v in a[::max(1, len(a) // 16)][:16]]


def _digests() -> dict:
    """Summaries of CPU-path items: photo pairs (every blur and degradation branch, motion), GoPro windows and
    motion fields. The parameter draw was factored out of PhotoPairs at f0dfd39 with the outputs bit-identical
    to 5719f09's (checked by hashes on the machine that wrote it); the stored file, written by
    ``python tests/test_device_synthesis.py``, holds the same outputs' summaries."""
    photos = photo_split(shared_path("sharp_photos"), "heldout")[:4]
    out = {}
    for name, kw in {"mix_degrade_motion": dict(blur="mix", degrade=True, motion=True),
                     "shake_clean": dict(blur="shake", degrade=False, p_sharp=0.3),
                     "kernel_degrade": dict(blur="kernel", degrade=True)}.items():
        ds = PhotoPairs(photos, crop_size=24, max_px=8.0, seed=3, items_per_photo=3, **kw)
        ds.set_epoch(5)
        out[name] = [{k: _h(v) for k, v in ds[i].items()} for i in range(len(ds))]
    g = SynthesizedGoPro(shared_path("gopro240", "GOPR0477_11_00"), frame_range=(0, 20), n_frames=(7, 9),
                         crop_size=24, seed=1, cache=True)
    out["gopro"] = [{k: _h(v) for k, v in g[i].items()} for i in (0, 5)]
    out["field"] = [_h(random_motion_field(h, w, torch.Generator().manual_seed(s), max_px=mp, min_px=0.6 * mp))
                    for s, (h, w, mp) in enumerate([(40, 52, 8.0), (33, 33, 0.1), (60, 48, 20.0), (20, 30, 5.0)])]
    return out


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if a and isinstance(a[0], (list, dict)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return np.allclose(a, b, rtol=0, atol=5e-3)     # under 2/255: JPEG may round one level the other way


def test_cpu_synthesis_keeps_its_values():
    assert _close(_digests(), json.loads(DIGESTS.read_text()))


@pytest.fixture(scope="module")
def photos():
    return photo_split(shared_path("sharp_photos"), "train")[:24]


def test_batched_motion_fields_are_the_single_ones():
    draws = [draw_motion_field(40, 40, torch.Generator().manual_seed(s), max_px=2.0 + s, min_px=1.0,
                               n_regions=(0, 3)) for s in range(6)]
    assert len({len(d["regions"]) for d in draws}) > 1              # items with different numbers of regions
    single = torch.stack([motion_fields([d])[0] for d in draws])
    assert torch.allclose(motion_fields(draws), single, atol=1e-6)


@pytest.mark.parametrize("blur", ["shake", "kernel"])
def test_device_path_makes_the_cpu_pairs(photos, blur):
    """Same draws, no mirror or turn: the device render equals OpenCV's to interpolation and JPEG rounding."""
    ds = PhotoPairs(photos, crop_size=32, blur=blur, seed=0, degrade=True, motion=True, cache=True)
    draws = [dict(ds.draw(i), flip=False, k=0) for i in range(10)]
    assert any(d["noise"] for d in draws) and any(d["jpeg"] for d in draws)
    cpu = [ds.render(d) for d in draws]
    dev = render(pack([ds.recipe(d) for d in draws]))
    for key, tol in (("blurry", 5 / 255), ("sharp", 1e-4), ("motion", 1e-5)):
        err = (torch.stack([c[key] for c in cpu]) - dev[key]).abs()
        assert float(err.max()) < tol and float(err.mean()) < 1e-3, (key, float(err.max()))


def test_device_path_gopro_windows_are_the_cpu_ones():
    ds = SynthesizedGoPro(shared_path("gopro240", "GOPR0477_11_00"), frame_range=(0, 14), n_frames=(7, 13),
                          crop_size=40, seed=2, cache=True)
    idx = [0, 3, 6, 7]
    cpu = [ds[i] for i in idx]
    defer(ds)
    dev = render(pack([ds[i] for i in idx]))
    assert torch.equal(torch.stack([c["sharp"] for c in cpu]), dev["sharp"])
    assert torch.allclose(torch.stack([c["blurry"] for c in cpu]), dev["blurry"], atol=1e-5)


@pytest.mark.parametrize("blur", ["shake", "kernel"])
def test_device_pairs_have_the_cpu_statistics(photos, blur):
    """With the real mirrors and turns (of the window, not of the pair): blur strength within 1 dB."""
    ds = PhotoPairs(photos, crop_size=48, blur=blur, seed=4, degrade=True, cache=True, items_per_photo=2)
    idx = range(32)
    cpu = [ds[i] for i in idx]
    defer(ds)
    dev = render(pack([ds[i] for i in idx]))
    p_cpu = psnr_per_image(torch.stack([c["blurry"] for c in cpu]), torch.stack([c["sharp"] for c in cpu]))
    p_dev = psnr_per_image(dev["blurry"], dev["sharp"])
    assert abs(float(p_cpu.mean() - p_dev.mean())) < 1.0, (float(p_cpu.mean()), float(p_dev.mean()))
    assert float((p_cpu - p_dev).abs().median()) < 1.5               # item by item, the same blur lengths


def _mse(a, b, border=4):
    return float(((a - b)[..., border:-border, border:-border] ** 2).mean())


@pytest.mark.parametrize("blur", ["shake", "kernel"])
def test_device_pairs_are_consistent_with_their_motion(photos, blur):
    ds = PhotoPairs(photos, crop_size=40, blur=blur, max_px=10.0, p_sharp=0.0, seed=5, degrade=False, motion=True,
                    cache=True)
    defer(ds)
    r = render(pack([ds[i] for i in range(12)]))
    s, m, b = r["sharp"], r["motion"], r["blurry"]
    if blur == "kernel":
        rb = lambda mm: kernel_blur(s, mm, border="replicate")
    else:
        rb = lambda mm: linear_to_srgb(kernel_blur(srgb_to_linear(s), mm, border="replicate"))
    turned = torch.stack((-m[:, 1], m[:, 0]), 1)                     # the right length, the wrong direction
    true, zero, wrong = _mse(rb(m), b), _mse(s, b), _mse(rb(turned), b)
    assert true < (0.4 if blur == "shake" else 0.02) * zero and true < 0.7 * wrong, (true, zero, wrong)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, photos):
    """Six of the photos, shrunk, in a folder: a photos source as a config names one."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for i, p in enumerate(photos[:6]):
        cv2.imwrite(str(folder / f"p{i}.png"), cv2.resize(cv2.imread(str(p)), (150, 120), interpolation=cv2.INTER_AREA))
    return folder


def _cfg(tmp_path, photo_dir, synthesis, motion=False, role="paired_only", extra=()):
    paired = [{"type": "photos", "path": str(photo_dir), "split": "all", "blur": "mix", "max_px": 10, "cache": True,
               "weight": 0.7, "motion": motion},
              {"type": "gopro240", "path": str(shared_path("gopro240", "GOPR0477_11_00")), "frame_range": [0, 12],
               "n_frames": [7, 9], "cache": True, "weight": 0.3, "motion": motion}]
    return load_config(None, [f"synthesis_device={synthesis}", "device=cpu", f"{role}=true", "crop=32",
                              "batch_paired=6", f"output_dir={tmp_path}", "data.paired=" + json.dumps(paired),
                              *extra])


def test_batch_sampler_renders_on_the_device_as_a_pure_function_of_the_iteration(tmp_path, photo_dir):
    cfg = _cfg(tmp_path, photo_dir, "cuda")
    s = BatchSampler(cfg, device="cpu")
    a = s.to_device(s.batch(7), "cpu")
    b = BatchSampler(cfg, device="cpu").to_device(s.batch(7), "cpu")       # a fresh sampler: the same batch
    assert s.deferred and [tuple(x.shape) for x in a] == [(6, 3, 32, 32)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], s.to_device(s.batch(8), "cpu")[0])
    plain = BatchSampler(_cfg(tmp_path, photo_dir, "auto"), device="cpu")  # auto on a CPU: worker synthesis
    assert not plain.deferred
    c = plain.to_device(plain.batch(7), "cpu")
    assert float((c[1].mean() - a[1].mean()).abs()) < 1e-5           # the same windows, only turned


def test_device_batches_carry_motion_when_the_sources_do(tmp_path, photo_dir):
    s = BatchSampler(_cfg(tmp_path, photo_dir, "cuda", motion=True, role="motion_only"), device="cpu")
    blurry, sharp, motion = s.to_device(s.batch(0), "cpu")
    assert s.names == ["paired_blurry", "paired_sharp", "paired_motion"] and tuple(motion.shape) == (6, 2, 32, 32)
    assert float(motion.abs().amax(dim=(1, 2, 3)).min()) > 0


def test_trainer_with_device_synthesis_in_a_worker_resumes_exactly(tmp_path, photo_dir):
    """A resumed run (its recipes packed in a DataLoader worker) ends where an uninterrupted one (in-process)
    does: the rendered stream is a function of the iteration alone."""
    from neurmap.core.train import Trainer

    torch.set_num_threads(1)
    over = ["backbone=compact", "iterations=3", "batch_paired=2", "checkpoint_every=2", "tensorboard=false",
            "loss_weights={G_content: 1.0}", "grad_clip=null"]
    mk = lambda d, workers=0: _cfg(d, photo_dir, "cuda", extra=over + [f"workers={workers}"])
    full = Trainer(mk(tmp_path / "a"), log=lambda *_: None)
    list(full.iterations())
    part = Trainer(mk(tmp_path / "b"), log=lambda *_: None)
    it = part.iterations()
    for _ in range(2):
        next(it)
    it.close()                                                # stop after the checkpoint at iteration 2
    resumed = Trainer(mk(tmp_path / "b", workers=1), resume=tmp_path / "b", log=lambda *_: None)
    assert resumed.start == 2 and resumed.sampler.deferred
    list(resumed.iterations())
    for x, y in zip(full.step.G.state_dict().values(), resumed.step.G.state_dict().values()):
        assert torch.equal(x, y)


def test_synthesis_device_is_checked():
    with pytest.raises(ConfigError, match="synthesis_device"):
        load_config(None, ["synthesis_device=gpu"])


def test_gpu_script_overrides_parse():
    """Every ``neurmap train`` line of the prepared GPU script loads, with the dry-run overrides appended."""
    text = (REPO / "scripts" / "train_default_gpu.sh").read_text().replace("\\\n", " ")
    runs = [shlex.split(line)[2:] for line in text.splitlines() if line.startswith("neurmap train ")]
    assert len(runs) == 2
    for args in runs:
        config, overrides = REPO / args[0], [a for a in args[1:] if a != "$@"]
        cfg = load_config(config, overrides + ["device=cpu", "iterations=2"])
        assert cfg.synthesis_device == "cuda" and cfg.batch_paired == 64 and cfg.iterations == 2


if __name__ == "__main__":
    DIGESTS.write_text(json.dumps(_digests(), indent=1))
    sys.exit(0)
