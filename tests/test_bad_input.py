"""The bad-input campaign (issue #14): every kind of wrong input a user can give the ``neurmap`` commands.

Each case goes through the real entry point (``neurmap.cli.main``, as the console script runs it) and checks
what a user sees: one ``error:`` line naming the problem and the fix, a non-zero exit, and nothing
half-written at the target; where a result can be produced (odd pixel formats, a resolution change), every
frame comes out. Inputs are tiny crops of ../shared/data, so the whole file runs in well under a minute.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_path


def cli(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``neurmap ARGS`` run through the console-script entry point."""
    from neurmap.cli import main

    old = sys.argv
    sys.argv = ["neurmap", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single ``error:`` line of stderr (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


@pytest.fixture(scope="module")
def weights() -> str:
    return str(shared_path("pretrained", "dmphn_1_2_4"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Tiny inputs of every kind: frames, a clip, pairs, odd pixel formats, broken files."""
    import cv2
    import torch

    src = shared_path("gopro240", "GOPR0477_11_00")
    d = tmp_path_factory.mktemp("bad_input")
    imgs = [cv2.imread(str(p))[:64, :96] for p in sorted(src.glob("*.png"))[:5]]
    for name in ("frames", "gray", "rgba", "deep", "mixed", "one", "tiny", "empty", "pairs/blur", "pairs/sharp"):
        (d / name).mkdir(parents=True)
    for i, im in enumerate(imgs):
        cv2.imwrite(str(d / "frames" / f"{i:03d}.png"), im)
        cv2.imwrite(str(d / "gray" / f"{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_BGR2GRAY))
        cv2.imwrite(str(d / "rgba" / f"{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_BGR2BGRA))
        cv2.imwrite(str(d / "deep" / f"{i:03d}.png"), im.astype(np.uint16) * 257)
        cv2.imwrite(str(d / "mixed" / f"{i:03d}.png"), im if i % 2 == 0 else cv2.resize(im, (128, 80)))
        cv2.imwrite(str(d / "pairs" / "sharp" / f"{i:03d}.png"), im)
        cv2.imwrite(str(d / "pairs" / "blur" / f"{i:03d}.png"), cv2.blur(im, (7, 1)))
    cv2.imwrite(str(d / "one" / "000.png"), imgs[0])
    cv2.imwrite(str(d / "tiny" / "000.png"), imgs[0][:1, :1])
    w = cv2.VideoWriter(str(d / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for im in imgs:
        w.write(im)
    w.release()
    data = (d / "clip.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    for name in ("corrupt.mp4", "garbage.onnx", "garbage.engine", "garbage.safetensors", "garbage.pt"):
        (d / name).write_bytes(rng.bytes(4096))
    for name in ("empty.onnx", "empty.pt", "empty.safetensors"):
        (d / name).write_bytes(b"")

    class Payload:                      # a pickle that runs a command when unpickled
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PAYLOAD_RAN'}",))

    torch.save({"weight": Payload()}, d / "payload.pt")
    with open(d / "payload.pkl", "wb") as f:
        pickle.dump(Payload(), f)
    (d / "list.yaml").write_text("- iterations\n- 2\n")
    (d / "bad.yaml").write_text("iterations: [1, 2\n")
    return d


# --- one-line refusals: (name, args, a phrase the error line must hold) --------------------------------
W = "{weights}"
REFUSALS = [
    ("run-missing-video", ["run", "{d}/missing.mp4", "-e", W], "not found"),
    ("run-corrupt-video", ["run", "{d}/corrupt.mp4", "-e", W], "corrupt, truncated"),
    ("run-truncated-video", ["run", "{d}/truncated.mp4", "-e", W, "-o", "{d}/t_out.mp4"], "truncated"),
    ("run-garbage-onnx", ["run", "{d}/frames", "-e", "{d}/garbage.onnx"], "re-export"),
    ("run-empty-onnx", ["run", "{d}/frames", "-e", "{d}/empty.onnx"], "re-export"),
    ("run-engine-without-tensorrt", ["run", "{d}/frames", "-e", "{d}/garbage.engine"], "tensorrt"),
    ("run-tile-syntax", ["run", "{d}/frames", "-e", W, "--tile", "5by5"], "--tile '5by5' is not HxW"),
    ("run-unwritable-output", ["run", "{d}/frames", "-e", W, "-o", "/sys/neurmap-test/out.mp4"], "--output"),
    ("run-output-under-a-file", ["run", "{d}/frames", "-e", W, "-o", "{d}/clip.mp4/x.mp4"], "not a writable folder"),
    ("run-adapt-opts-type", ["run", "{d}/frames", "-e", W, "--adapt", "--adapt-opts", "steps=ten"],
     "steps='ten' is not int"),
    ("run-adapt-opts-negative", ["run", "{d}/frames", "-e", W, "--adapt", "--adapt-opts", "steps=-2"],
     "steps=-2 must be at least 1"),
    ("run-adapt-opts-unknown", ["run", "{d}/frames", "-e", W, "--adapt", "--adapt-opts", "stpes=2"],
     "unknown --adapt-opts key"),
    ("export-shape-syntax", ["export", "-t", "onnx", "-w", W, "--shape", "64by64"], "--shape '64by64' is not HxW"),
    ("export-unknown-target", ["export", "-t", "tpu", "-w", W], "unknown export target 'tpu'"),
    ("export-garbage-weights", ["export", "-t", "onnx", "-w", "{d}/garbage.safetensors"], "safetensors"),
    ("export-int8-without-calib", ["export", "-t", "ort", "-w", W, "-p", "int8"], "needs --calib"),
    ("export-calib-empty-folder", ["export", "-t", "ort", "-w", W, "-p", "int8", "--calib", "{d}/empty",
                                   "--shape", "64x96"], "holds no images"),
    ("eval-empty-data", ["eval", "--weights", W, "--data", "{d}/empty"], "is empty"),
    ("eval-empty-checkpoint", ["eval", "--weights", "{d}/empty.pt", "--data", "{d}/frames"], "empty or truncated"),
    ("eval-garbage-checkpoint", ["eval", "--weights", "{d}/garbage.pt", "--data", "{d}/frames"], "refused"),
    ("eval-crop-syntax", ["eval", "--weights", W, "--data", "{d}/frames", "--crop", "big"], "--crop 'big'"),
    ("check-missing-artifact", ["check", "{d}/none.onnx", "--data", "{d}/frames"], "does not exist"),
    ("check-garbage-artifact", ["check", "{d}/garbage.onnx", "--data", "{d}/frames"], "garbage.onnx"),
    ("train-config-typo", ["train", "{d}/cfg.yaml", "itrations=5"], "did you mean 'iterations'"),
    ("train-config-wrong-type", ["train", "{d}/cfg.yaml", "iterations=abc"], "iterations='abc' is not int"),
    ("train-config-wrong-type-in-yaml", ["train", "{d}/cfg_wrong.yaml"], "crop='big' is not int"),
    ("train-loss-weight-type", ["train", "{d}/cfg.yaml", "loss_weights.G_reblur=lots"], "G_reblur='lots'"),
    ("train-config-not-a-mapping", ["train", "{d}/list.yaml"], "not key: value"),
    ("train-config-bad-yaml", ["train", "{d}/bad.yaml"], "not valid YAML"),
    ("train-missing-config", ["train", "{d}/none.yaml"], "not found"),
    ("train-resume-no-run", ["train", "--resume", "{d}/no_run"], "no run there"),
    ("train-grad-clip-word", ["train", "{d}/cfg.yaml", "grad_clip=sometimes"], "grad_clip='sometimes'"),
    ("adapt-one-frame", ["adapt", "{d}/one", "-w", W, "-o", "{d}/adapted.safetensors"], "too few"),
    ("adapt-negative-steps", ["adapt", "{d}/frames", "-w", W, "--steps", "-3"], "--steps -3 must be at least 1"),
    ("adapt-empty-folder", ["adapt", "{d}/empty", "-w", W], "holds no images"),
    ("adapt-garbage-weights", ["adapt", "{d}/frames", "-w", "{d}/garbage.safetensors"], "safetensors"),
    ("demo-size-syntax", ["demo", "--size", "abc"], "--size 'abc' is not HxW"),
    ("demo-missing-input", ["demo", "--input", "{d}/missing.mp4", "--out", "{d}/demo_out", "--no-progress"],
     "does not exist"),
    ("models-size-syntax", ["models", "--size", "12xx"], "--size '12xx' is not HxW"),
    ("models-size-zero", ["models", "--size", "0x640"], "positive integers"),
]


@pytest.fixture(scope="module")
def configs(inputs) -> Path:
    import yaml

    gopro = shared_path("gopro240", "GOPR0477_11_00")
    cfg = {"backbone": "dmphn_1_2_4", "iterations": 1, "crop": 32, "batch_paired": 1, "batch_unpaired": 1,
           "device": "cpu", "tensorboard": False, "output_dir": str(inputs / "never_written"),
           "data": {"paired": {"type": "gopro240", "path": str(gopro), "frame_range": [0, 20], "n_frames": 7}}}
    (inputs / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (inputs / "cfg_wrong.yaml").write_text(yaml.safe_dump({**cfg, "crop": "big"}))
    return inputs


@pytest.mark.parametrize("name,args,phrase", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_input_is_refused_in_one_line(name, args, phrase, configs, weights, capsys):
    d = configs
    code, _, err = cli([a.format(d=d, weights=weights) for a in args], capsys)
    line = one_error_line(err)
    assert code != 0 and phrase.lower() in line.lower(), (code, line)
    assert not (d / "never_written").exists() and not (d / "adapted.safetensors").exists()
    assert not (d / "t_out.mp4").exists()
    _no_temp_files(d)


def test_pickles_with_a_payload_are_never_executed(inputs, weights, capsys):
    for name in ("payload.pt", "payload.pkl"):
        code, _, err = cli(["eval", "--weights", inputs / name, "--data", inputs / "frames"], capsys)
        assert code == 2 and "refused" in one_error_line(err)
    assert not (inputs / "PAYLOAD_RAN").exists()


@pytest.mark.parametrize("kind", ["gray", "rgba", "deep", "mixed", "tiny"])
def test_odd_frames_all_come_out(kind, inputs, weights, capsys):
    """Grayscale, RGBA, 16-bit, a resolution change mid-stream and a 1-pixel frame: every frame is written."""
    out = inputs / f"{kind}_out"
    code, _, err = cli(["run", inputs / kind, "-e", weights, "-q", "-o", f"{out}/"], capsys)
    assert code == 0, err
    n_in = len(list((inputs / kind).glob("*.png")))
    assert len(list(out.glob("*.png"))) == n_in
    if kind == "mixed":
        import cv2
        sizes = {cv2.imread(str(p)).shape[:2] for p in out.glob("*.png")}
        assert sizes == {(64, 96), (80, 128)}                     # each frame at its own size
        assert "resolution changed" in err


def test_8k_frame_size_is_counted(capsys):
    """8K: `models` counts the cost at 4320x7680 (shapes only, on the meta device: instant, no memory)."""
    import json

    code, out, _ = cli(["models", "--size", "4320x7680", "--json"], capsys)
    assert code == 0
    base = {r["name"]: r["gmacs"] for r in json.loads(cli(["models", "--size", "720x1280", "--json"], capsys)[1])}
    assert code == 0 and all(r["size"] == "4320x7680" for r in json.loads(out))
    dmphn = next(r for r in json.loads(out) if r["name"] == "dmphn_1_2_4")
    assert dmphn["gmacs"] == pytest.approx(36 * base["dmphn_1_2_4"], rel=0.02)   # 36x the 720p pixels


def test_check_accepts_the_paired_folder_eval_accepts(inputs, weights, tmp_path, capsys):
    """README: `neurmap check model.onnx --data my_pairs/` with blur/ + sharp/ — scored against the truth."""
    import json

    onnx = tmp_path / "m.onnx"
    code, _, err = cli(["export", "-t", "onnx", "-w", weights, "--shape", "64x96", "-o", onnx, "--no-parity"], capsys)
    assert code == 0, err
    code, out, err = cli(["check", onnx, "--data", inputs / "pairs", "--frames", "2", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["ok"] and res["psnr_gt"] is not None and res["psnr_blurry"] is not None
    code, _, err = cli(["eval", "--weights", weights, "--data", inputs / "pairs", "--max-images", "1"], capsys)
    assert code == 0 and "paired folder" in err


def test_full_disk_leaves_nothing_at_the_target(weights, tmp_path):
    """`ulimit -f` (a size-limited file system as the kernel sees it): one line, exit 4, no partial artifact."""
    target = tmp_path / "out" / "m.onnx"
    cmd = (f"ulimit -f 200; exec {sys.executable} -m neurmap export -t onnx -w {weights} --shape 64x96 "
           f"-o {target} --no-parity")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = one_error_line(r.stderr)
    assert r.returncode == 4 and "file size limit" in line and "nothing half-written" in line
    assert not target.exists() and not [p for p in target.parent.glob("*")]
