"""neurmap.core.data: image/video IO, blur synthesis, joint transforms and datasets (fast: small crops)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from neurmap.core.data import (
    KernelBlurred,
    PairedFolder,
    RandomCropFlip,
    SynthesizedGoPro,
    UnpairedFolder,
    VideoReader,
    camera_shake_clip,
    frame_source,
    gopro_blur,
    gopro_pair,
    gopro_pairs_from_folder,
    hflip,
    kernel_blur,
    linear_to_srgb,
    list_images,
    pad_to,
    random_motion_field,
    read_image,
    srgb_to_linear,
    write_image,
)
from neurmap.core.errors import InputError
from neurmap.core.reblur import reblur

from conftest import shared_path

GOPRO240 = ("gopro240", "GOPR0477_11_00")
CAR = ("real_video", "car")


def grad_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_video(path: Path, n: int = 12, h: int = 48, w: int = 64) -> list[int]:
    """A tiny mp4v video whose frame i is a flat gray of level 10 + 20 i; returns the levels."""
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    if not vw.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v videos")
    levels = [10 + 20 * i for i in range(n)]
    for lv in levels:
        vw.write(np.full((h, w, 3), lv, np.uint8))
    vw.release()
    return levels


# ------------------------------------------------------------------------------------------------ io


def test_read_gray_rgba_16bit(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    t = read_image(tmp_path / "g.png")
    assert t.shape == (3, 12, 10) and t.dtype == torch.float32
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert torch.allclose(t[0], torch.from_numpy(gray).float() / 255)

    bgra = np.zeros((5, 6, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 7      # B, G, R, alpha
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    t = read_image(tmp_path / "a.png")
    assert t.shape == (3, 5, 6)
    assert torch.allclose(t[:, 0, 0], torch.tensor([30, 20, 10]) / 255.0)          # RGB order, alpha dropped

    deep = np.full((4, 4, 3), 65535, np.uint16)
    deep[..., 2] = 32768
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    t = read_image(tmp_path / "d.png")
    assert torch.allclose(t[:, 0, 0], torch.tensor([32768 / 65535, 1.0, 1.0]))


def test_corrupt_or_missing_image_is_input_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really" + os.urandom(64))
    with pytest.raises(InputError, match="cannot decode"):
        read_image(bad)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_write_image_roundtrip_atomic_and_natural_listing(tmp_path):
    img = torch.rand(3, 9, 11, generator=gen(0))
    for name in ["f10.png", "f2.png", "f1.jpg", "notes.txt"]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            write_image(tmp_path / name, img)
    assert [p.name for p in list_images(tmp_path)] == ["f1.jpg", "f2.png", "f10.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no temp files left behind
    back = read_image(tmp_path / "f2.png")
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6
    write_image(tmp_path / "deep.png", img, bit_depth=16)
    assert (read_image(tmp_path / "deep.png") - img).abs().max() <= 0.5 / 65535 + 1e-6
    with pytest.raises(InputError):
        write_image(tmp_path / "x.gif", img)


# ------------------------------------------------------------------------------------------------ video


def test_video_reader_random_access_iteration_and_unpaired(tmp_path):
    path = tmp_path / "tiny.mp4"
    levels = write_video(path)
    vr = VideoReader(path)
    assert len(vr) == len(levels) and vr.size == (48, 64)
    assert vr.fps == pytest.approx(25.0)
    for i in [5, 2, 11, 0, 3, 4, -1]:                                    # seeks, forward grabs, negatives
        f = vr[i]
        assert f.shape == (3, 48, 64) and f.dtype == torch.float32
        assert abs(float(f.mean()) * 255 - levels[i]) < 6, i
    means = [float(f.mean()) * 255 for f in vr]
    assert len(means) == len(levels)
    assert all(abs(m - lv) < 6 for m, lv in zip(means, levels))
    with pytest.raises(IndexError):
        vr[len(levels)]
    clone = pickle.loads(pickle.dumps(vr))                               # DataLoader workers pickle it
    assert abs(float(clone[7].mean()) * 255 - levels[7]) < 6

    ds = UnpairedFolder(path, crop_size=32, flip=True, seed=0)
    assert isinstance(frame_source(path), VideoReader) and len(ds) == len(levels)
    item = ds[3]
    assert set(item) == {"image"} and item["image"].shape == (3, 32, 32)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0


def test_video_dataset_in_dataloader_workers_after_parent_reads(tmp_path):
    """A capture opened in the parent must not be reused by forked workers (FFmpeg would hang)."""
    from torch.utils.data import DataLoader

    path = tmp_path / "w.mp4"
    levels = write_video(path, n=6)
    ds = UnpairedFolder(path)
    assert abs(float(ds[2]["image"].mean()) * 255 - levels[2]) < 6          # parent now holds a capture
    dl = DataLoader(ds, batch_size=3, num_workers=1, timeout=60)
    means = torch.cat([b["image"].mean(dim=(1, 2, 3)) for b in dl]) * 255
    assert means.shape == (6,) and all(abs(float(m) - lv) < 6 for m, lv in zip(means, levels))


def test_corrupt_video_is_input_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="ffmpeg"):
        VideoReader(bad)
    with pytest.raises(InputError):
        frame_source(bad)
    with pytest.raises(InputError):
        UnpairedFolder(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="no images"):
        frame_source(tmp_path)                                          # folder without images


def test_unpaired_real_video_folder():
    car = shared_path(*CAR)
    ds = UnpairedFolder(car, key="blurry", crop_size=64, flip=True)
    assert len(ds) == 60
    a = ds[0]["blurry"]
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    src = frame_source(car)
    assert src.size == (720, 1280) and len(src) == 60


# ------------------------------------------------------------------------------------------------ synthesis


def test_srgb_roundtrip_and_known_values():
    x = torch.linspace(0, 1, 1001)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6)
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.21404114, abs=1e-6)
    assert float(linear_to_srgb(torch.tensor(0.0031308))) == pytest.approx(0.04045, abs=1e-5)
    a = np.linspace(0, 1, 11, dtype=np.float32)
    assert np.allclose(srgb_to_linear(a), srgb_to_linear(torch.from_numpy(a)).numpy(), atol=1e-7)


def test_gopro_blur_of_identical_frames_is_the_frame():
    f = torch.rand(3, 16, 20, generator=gen(1))
    assert torch.allclose(gopro_blur([f] * 7), f, atol=1e-5)
    frames = torch.rand(9, 3, 8, 8, generator=gen(2))
    b, s = gopro_pair(frames)
    assert torch.equal(s, frames[4])
    # linear-light mean, not a plain sRGB mean
    two = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    assert torch.allclose(gopro_blur(two), linear_to_srgb(torch.full((3, 2, 2), 0.5)))


def test_gopro_pairs_from_real_frames():
    folder = shared_path(*GOPRO240)
    pairs = gopro_pairs_from_folder(folder, n_frames=7, count=1, crop=(250, 500, 96, 128))
    assert len(pairs) == 1 and pairs.windows == [(0, 7)]
    blurry, sharp = pairs[0]
    assert blurry.shape == sharp.shape == (3, 96, 128)
    assert torch.equal(sharp, read_image(list_images(folder)[3])[:, 250:346, 500:628])
    assert grad_energy(blurry) < 0.9 * grad_energy(sharp)
    # disjoint training / held-out frames; random 7-13 windows stay inside the range
    held = gopro_pairs_from_folder(folder, n_frames=(7, 13), frame_range=(80, 120), seed=3)
    assert held.windows and all(80 <= a and a + n <= 120 and 7 <= n <= 13 for a, n in held.windows)
    train = gopro_pairs_from_folder(folder, n_frames=7, stride=3, frame_range=(0, 80))
    assert all(a + n <= 80 for a, n in train.windows) and train.windows[1][0] == 3
    with pytest.raises(InputError):
        gopro_pairs_from_folder(folder, n_frames=13, frame_range=(0, 10))


def test_random_motion_field_smooth_bounded_reproducible():
    h, w = 128, 128
    fields = [random_motion_field(h, w, gen(s), max_px=20.0) for s in range(12)]
    for m in fields:
        assert m.shape == (2, h, w) and m.dtype == torch.float32
        px = m * 20.0                                                   # reblur units -> pixels
        assert float(px.norm(dim=0).max()) <= 20.0 + 1e-4
        assert float(px.norm(dim=0).max()) > 1.0                         # not degenerate
        step = max(float((px[:, 1:] - px[:, :-1]).abs().max()), float((px[:, :, 1:] - px[:, :, :-1]).abs().max()))
        assert step < 0.25 * 20.0                                        # no jumps between neighbours
        lap = (4 * px[:, 1:-1, 1:-1] - px[:, 2:, 1:-1] - px[:, :-2, 1:-1] - px[:, 1:-1, 2:] - px[:, 1:-1, :-2])
        assert float(lap.abs().mean()) < 0.1                             # smooth (white noise would be ~20)
    assert torch.equal(random_motion_field(h, w, gen(5)), fields[5])
    assert not torch.equal(fields[0], fields[1])
    small = random_motion_field(40, 70, gen(0), max_px=5.0)
    assert small.shape == (2, 40, 70) and float((small * 20).norm(dim=0).max()) <= 5.0 + 1e-4


def line_integral_blur(img: np.ndarray, motion: np.ndarray, border: str, taps: int = 15) -> np.ndarray:
    """Independent reference for kernel_blur: per pixel, the mean of ``taps`` bilinear samples spaced evenly
    on the segment p ± 20·m(p), in float64 loops; outside the image zeros ('zeros') or the nearest edge
    pixel ('replicate')."""
    c, h, w = img.shape
    out = np.zeros((c, h, w))

    def at(y: int, x: int) -> np.ndarray:
        if border == "replicate":
            return img[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
        return img[:, y, x] if 0 <= y < h and 0 <= x < w else np.zeros(c)

    for y in range(h):
        for x in range(w):
            dy, dx = 20.0 * motion[0, y, x], 20.0 * motion[1, y, x]
            acc = np.zeros(c)
            for k in range(taps):
                t = -1.0 + 2.0 * k / (taps - 1)
                py, px = y + t * dy, x + t * dx
                y0, x0 = int(np.floor(py)), int(np.floor(px))
                fy, fx = py - y0, px - x0
                acc += ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
                        + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))
            out[:, y, x] = acc / taps
    return out


def test_kernel_blur_against_an_explicit_line_integral():
    img = torch.rand(2, 9, 11, generator=gen(0))
    m = random_motion_field(9, 11, gen(1), max_px=4.0)
    for border in ("zeros", "replicate"):
        ref = line_integral_blur(img.double().numpy(), m.double().numpy(), border)
        got = kernel_blur(img, m, border=border)
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-5, err_msg=border)   # 5% more motion: 0.02 off
    # by hand: a 1-pixel dot under a uniform horizontal motion of 7 px spreads into 15 equal taps 1/15 wide
    dot = torch.zeros(1, 5, 21)
    dot[0, 2, 10] = 1.0
    horiz = torch.zeros(2, 5, 21)
    horiz[1] = 7.0 / 20.0
    row = kernel_blur(dot, horiz)[0, 2]
    np.testing.assert_allclose(row[3:18].numpy(), np.full(15, 1 / 15), atol=1e-6)
    assert float(row[:3].abs().max()) < 1e-6 and float(row[18:].abs().max()) < 1e-6
    assert float(kernel_blur(dot, horiz)[0, [0, 1, 3, 4]].abs().max()) < 1e-6        # nothing leaves the row


def test_kernel_blur_zero_motion_identity_batching_and_borders():
    img = torch.rand(3, 32, 40, generator=gen(0))
    zero = torch.zeros(2, 32, 40)
    for border in ("zeros", "replicate", "reflect"):
        assert torch.allclose(kernel_blur(img, zero, border=border), img, atol=1e-5)  # float32 grid round-off
    m = random_motion_field(32, 40, gen(1), max_px=6.0)
    exact = kernel_blur(img, m)
    assert exact.shape == img.shape
    batch = kernel_blur(img[None].repeat(2, 1, 1, 1), m[None].repeat(2, 1, 1, 1))
    assert batch.shape == (2, 3, 32, 40) and torch.allclose(batch[1], exact)
    rep = kernel_blur(img, m, border="replicate")                        # equals zeros away from the rim
    assert torch.allclose(rep[:, 8:-8, 8:-8], exact[:, 8:-8, 8:-8], atol=1e-5)
    flat = torch.full((3, 32, 40), 0.5)                                  # replicate keeps a flat image flat ...
    assert torch.allclose(kernel_blur(flat, m, border="replicate"), flat, atol=1e-5)
    assert float(kernel_blur(flat, m)[:, 0].min()) < 0.45                # ... zeros darken its rim
    assert grad_energy(exact) < grad_energy(img)


def test_camera_shake_clip_from_stills():
    skd = pytest.importorskip("skimage.data")
    blurry, sharp = camera_shake_clip([skd.astronaut(), skd.coffee()], n_frames=4, sub_frames=5,
                                      size=(64, 80), max_blur_px=8.0, seed=7)
    assert blurry.shape == sharp.shape == (4, 3, 64, 80)
    assert float(blurry.min()) >= 0 and float(blurry.max()) <= 1
    assert grad_energy(blurry) < grad_energy(sharp)
    again, _ = camera_shake_clip([skd.astronaut(), skd.coffee()], n_frames=4, sub_frames=5,
                                 size=(64, 80), max_blur_px=8.0, seed=7)
    assert torch.equal(again, blurry)
    still, still_sharp = camera_shake_clip(skd.astronaut()[::8, ::8], n_frames=2, max_blur_px=0.0,
                                           max_rotation_deg=0.0, hide_borders=False)
    assert torch.allclose(still, still_sharp, atol=1e-5)                # no motion, no blur


# ------------------------------------------------------------------------------------------------ transforms


def test_flip_negates_dx_and_commutes_with_kernel_blur():
    sharp = torch.rand(3, 40, 48, generator=gen(0))
    motion = random_motion_field(40, 48, gen(1), max_px=10.0)
    blurry = kernel_blur(sharp, motion)
    f = hflip({"blurry": blurry, "sharp": sharp, "motion": motion})
    assert torch.equal(f["motion"][1], -motion[1].flip(-1)) and torch.equal(f["motion"][0], motion[0].flip(-1))
    assert torch.allclose(f["blurry"], kernel_blur(f["sharp"], f["motion"]), atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_random_crop_flip_consistent_across_keys(seed):
    sharp = torch.rand(3, 96, 96, generator=gen(10))
    motion = random_motion_field(96, 96, gen(11), max_px=5.0)
    sample = {"blurry": kernel_blur(sharp, motion), "sharp": sharp, "motion": motion, "tag": "kept"}
    out = RandomCropFlip(64, flip=True)(sample, gen(seed))
    assert out["tag"] == "kept" and {out[k].shape[-2:] for k in ("blurry", "sharp", "motion")} == {(64, 64)}
    m = 6                                                                # taps reach at most 5 px
    redo = kernel_blur(out["sharp"], out["motion"])
    assert torch.allclose(out["blurry"][:, m:-m, m:-m], redo[:, m:-m, m:-m], atol=1e-5)


def test_small_images_are_padded_not_crashing():
    tf = RandomCropFlip(64, flip=True)
    for h, w in [(10, 12), (40, 50), (1, 1), (64, 20)]:
        s = {"blurry": torch.rand(3, h, w), "sharp": torch.rand(3, h, w), "motion": torch.rand(2, h, w)}
        out = tf(s, gen(0))
        assert all(out[k].shape[-2:] == (64, 64) for k in s)
        assert all(torch.isfinite(out[k]).all() for k in s)
    # reflected motion mirrors its component: the padded rim of a constant dx field has dx negated
    mo = torch.stack((torch.zeros(8, 8), torch.ones(8, 8)))
    p = pad_to(mo, 8, 12, mode="reflect", motion=True)
    assert p.shape == (2, 8, 12)
    assert torch.equal(p[1, :, :2], -torch.ones(8, 2)) and torch.equal(p[1, :, 10:], -torch.ones(8, 2))
    assert torch.equal(p[1, :, 2:10], torch.ones(8, 8)) and torch.equal(p[0], torch.zeros(8, 12))
    tiny = KernelBlurred([torch.rand(3, 9, 7)], crop_size=32, seed=0)[0]
    assert tiny["blurry"].shape == (3, 32, 32) and tiny["motion"].shape == (2, 32, 32)


def test_resize_option_scales_motion():
    s = {"sharp": torch.rand(3, 36, 64), "motion": torch.ones(2, 36, 64)}
    out = RandomCropFlip(None, flip=False, resize=(72, 32))(s)
    assert out["sharp"].shape == (3, 72, 32)
    assert torch.allclose(out["motion"][0], torch.full((72, 32), 2.0)) and torch.allclose(out["motion"][1], torch.full((72, 32), 0.5))


# ------------------------------------------------------------------------------------------------ datasets


def _write_pair_dir(d: Path, names, seed=0):
    g = gen(seed)
    for sub in ("blur", "sharp"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for n in names:
        write_image(d / "blur" / f"{n}.png", torch.rand(3, 20, 24, generator=g))
        write_image(d / "sharp" / f"{n}.png", torch.rand(3, 20, 24, generator=g))


def test_paired_folder_layouts_and_errors(tmp_path):
    gopro = tmp_path / "GOPRO"
    _write_pair_dir(gopro / "train" / "seqA", ["000010", "000002"])
    _write_pair_dir(gopro / "train" / "seqB", ["000001"])
    ds = PairedFolder(gopro)                                             # the only split is found
    assert len(ds) == 3 and ds.names == ["seqA/000002", "seqA/000010", "seqB/000001"]
    item = ds[0]
    assert set(item) == {"blurry", "sharp"} and item["blurry"].shape == (3, 20, 24)
    assert torch.equal(item["sharp"], read_image(gopro / "train" / "seqA" / "sharp" / "000002.png"))
    cropped = PairedFolder(gopro, split="train", crop_size=16, flip=True, seed=1)
    a, b = cropped[1], cropped[1]
    assert a["blurry"].shape == (3, 16, 16) and torch.equal(a["blurry"], b["blurry"])   # seeded: reproducible

    _write_pair_dir(gopro / "test" / "seqC", ["000001"])
    with pytest.raises(InputError, match="split"):
        PairedFolder(gopro)
    assert len(PairedFolder(gopro, split="test")) == 1

    simple = tmp_path / "simple"
    _write_pair_dir(simple, ["a", "b"])
    assert len(PairedFolder(simple)) == 2
    (simple / "sharp" / "b.png").unlink()
    with pytest.raises(InputError, match="unmatched"):
        PairedFolder(simple)
    assert len(PairedFolder(simple, strict=False)) == 1
    empty = tmp_path / "empty"
    (empty / "blur").mkdir(parents=True)
    (empty / "sharp").mkdir()
    with pytest.raises(InputError, match="no blurry/sharp"):
        PairedFolder(empty)
    with pytest.raises(InputError):
        PairedFolder(tmp_path / "absent")


def test_synthesized_gopro_dataset():
    folder = shared_path(*GOPRO240)
    ds = SynthesizedGoPro(folder, n_frames=(7, 9), frame_range=(0, 20), crop_size=48, seed=0)
    assert len(ds) == 20 - 7 + 1
    item = ds[len(ds) - 1]
    assert set(item) == {"blurry", "sharp"} and item["blurry"].shape == (3, 48, 48)
    assert float(item["blurry"].min()) >= 0 and float(item["blurry"].max()) <= 1


def test_kernel_blurred_dataset_truth_and_reproducibility():
    imgs = [torch.rand(3, 80, 90, generator=gen(0)), torch.rand(3, 70, 100, generator=gen(1))]
    ds = KernelBlurred(imgs, crop_size=48, flip=True, seed=3)
    a, b = ds[1], ds[1]
    assert set(a) == {"blurry", "sharp", "motion"} and a["motion"].shape == (2, 48, 48)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float((a["motion"] * 20).norm(dim=0).max()) <= 20.0 + 1e-4
    exact = KernelBlurred(imgs, border="zeros", seed=0)[0]               # no crop: exactly R(sharp, motion)
    assert torch.equal(exact["sharp"], imgs[0])
    assert torch.allclose(exact["blurry"], reblur(exact["sharp"][None], exact["motion"][None])[0].clamp(0, 1))
