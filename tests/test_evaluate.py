"""neurmap.core.evaluate and `neurmap eval`: data detection, metrics, JSON, grid, motion error, errors.

Fast: tiny GoPro-protocol crops (96x192, so NIQE has its two 96x96 blocks) and the official DMPHN 1-2-4.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from neurmap.core import DeblurModel, load_weights
from neurmap.core.data import KernelBlurred, gopro_pairs_from_folder, read_image, write_image
from neurmap.core.errors import CheckpointError, InputError, NeurmapError
from neurmap.core.evaluate import evaluate, open_data, summary_rows
from neurmap.core.metrics.psnr import psnr

from conftest import shared_path

DMPHN = ("pretrained", "dmphn_1_2_4")
GOPRO240 = ("gopro240", "GOPR0477_11_00")
CAR = ("real_video", "car")
H, W = 96, 192


@pytest.fixture(scope="module")
def gopro_pairs():
    pairs = gopro_pairs_from_folder(shared_path(*GOPRO240), n_frames=9, count=3, start=10, stride=30,
                                    crop=(300, 520, H, W))
    return [pairs[i] for i in range(len(pairs))]


@pytest.fixture(scope="module")
def dmphn():
    model, _ = load_weights(shared_path(*DMPHN))
    return model


@pytest.fixture
def paired_dir(tmp_path, gopro_pairs) -> Path:
    root = tmp_path / "paired"
    for i, (b, s) in enumerate(gopro_pairs):
        write_image(root / "blur" / f"{i:03d}.png", b)
        write_image(root / "sharp" / f"{i:03d}.png", s)
    return root


def identity_model() -> DeblurModel:
    return DeblurModel(nn.Identity(), "0,1", "identity").eval()


# --------------------------------------------------------------------------------------------- API
def test_paired_folder_psnr_rises_and_grid(dmphn, paired_dir, tmp_path):
    grid = tmp_path / "out" / "grid.png"
    res = evaluate(dmphn, paired_dir, grid_path=grid, progress=False)
    assert res["data"]["kind"] == "paired" and "paired folder" in res["data"]["description"]
    assert res["data"]["n_evaluated"] == 3 and len(res["per_image"]) == 3
    m = res["means"]
    assert set(m["input"]) == set(m["output"]) == {"psnr", "ssim", "lpips", "niqe"}
    assert m["output"]["psnr"] > m["input"]["psnr"], m
    assert m["output"]["lpips"] < m["input"]["lpips"], m
    assert 0 < m["input"]["ssim"] < 1 and m["sharp"]["niqe"] > 0
    row = res["per_image"][0]
    assert row["name"] == "000" and row["size"] == [H, W]
    with torch.inference_mode():
        out = dmphn(read_image(paired_dir / "blur" / "000.png")[None]).clamp(0, 1)
    assert row["output"]["psnr"] == pytest.approx(psnr(out, read_image(paired_dir / "sharp" / "000.png")[None]))
    img = read_image(grid)                                   # blurry | deblurred | sharp, 3 rows
    assert img.shape[-1] > 3 * W and img.shape[-2] > 3 * H
    assert not list(grid.parent.glob(".*.tmp"))              # written atomically, no temp left
    json.dumps(res, allow_nan=False)                          # JSON-ready as is
    assert [r[0] for r in summary_rows(res)][:4] == ["PSNR", "SSIM", "LPIPS", "NIQE"]


def test_gopro_layout_detected_and_test_split_chosen(tmp_path, gopro_pairs):
    root = tmp_path / "GOPRO"
    for split, seq, idx in (("train", "GOPR0001", [0, 1]), ("test", "GOPR0002", [2]), ("test", "GOPR0003", [0])):
        for i in idx:
            b, s = gopro_pairs[i]
            write_image(root / split / seq / "blur" / f"{i:06d}.png", b)
            write_image(root / split / seq / "sharp" / f"{i:06d}.png", s)
    data = open_data(root)
    assert data.kind == "gopro" and "split 'test'" in data.description and len(data) == 2
    res = evaluate(identity_model(), root, metrics=("psnr", "ssim"), progress=False)
    assert [r["name"] for r in res["per_image"]] == ["GOPR0002/000002", "GOPR0003/000000"]
    assert res["means"]["gain"]["psnr"] == pytest.approx(0.0)     # identity net: output == input
    assert open_data(root / "test" / "GOPR0002").kind == "paired"


def test_unpaired_folder_gives_niqe_only(dmphn, tmp_path):
    folder = tmp_path / "car"
    for name in ("0001.jpg", "0030.jpg"):
        frame = read_image(shared_path(*CAR) / name)
        write_image(folder / f"{Path(name).stem}.png", frame[:, 300:300 + H, 500:500 + W])
    grid = tmp_path / "car_grid.png"
    res = evaluate(dmphn, folder, grid_path=grid, progress=False)
    assert res["data"]["kind"] == "unpaired" and not res["data"]["has_reference"]
    assert set(res["means"]["input"]) == set(res["means"]["output"]) == {"niqe"}
    assert "sharp" not in res["means"]
    assert all(set(r["output"]) == {"niqe"} and r["output"]["niqe"] > 0 for r in res["per_image"])
    assert any("PSNR" in n and "skipped" in n for n in res["notes"])
    assert read_image(grid).shape[-1] < 3 * W                 # two columns: no sharp column


def test_crop_and_max_images(tmp_path, paired_dir):
    res = evaluate(identity_model(), paired_dir, metrics=["psnr"], max_images=2, crop=(64, 64), progress=False)
    assert [r["index"] for r in res["per_image"]] == [0, 2]     # evenly spaced, first and last
    assert all(r["size"] == [64, 64] for r in res["per_image"])
    assert res["settings"]["crop"] == [64, 64] and res["settings"]["max_images"] == 2


class _Oracle(nn.Module):
    """A 'motion net' that answers the true motion (optionally sign-flipped) of the current item."""

    def __init__(self, ds, sign: float) -> None:
        super().__init__()
        self.ds, self.sign, self.i = ds, sign, 0

    def forward(self, x):
        m = self.ds[self.i]["motion"][None] * self.sign
        self.i += 1
        return m


def test_motion_error_on_kernel_blurred(gopro_pairs):
    sharp = torch.stack([s for _, s in gopro_pairs[:2]])
    ds = KernelBlurred(sharp, max_px=12.0, seed=3)
    res = evaluate(identity_model(), ds, metrics=("psnr",), motion=_Oracle(ds, -1.0), progress=False)
    assert res["data"]["has_motion"] and res["means"]["motion"]["mse_px2"] == pytest.approx(0.0, abs=1e-8)
    zero = nn.Conv2d(3, 2, 1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    res = evaluate(identity_model(), ds, metrics=("psnr",), motion=zero, progress=False)
    true_px2 = sum(float((ds[i]["motion"] * 20).pow(2).mean()) for i in range(2)) / 2
    assert res["means"]["motion"]["mse_px2"] == pytest.approx(true_px2, rel=1e-5)
    assert res["means"]["motion"]["epe_px"] > 0
    res = evaluate(identity_model(), ds, metrics=("psnr",), progress=False)
    assert "motion" not in res["means"] and any("no motion net" in n for n in res["notes"])


def test_bad_data_and_weights_raise_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd" / "x").mkdir(parents=True)
    (tmp_path / "odd" / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="is empty"):
        evaluate(identity_model(), tmp_path / "empty", progress=False)
    with pytest.raises(InputError, match="unrecognised data folder"):
        evaluate(identity_model(), tmp_path / "odd", progress=False)
    with pytest.raises(InputError, match="does not exist"):
        evaluate(identity_model(), tmp_path / "missing", progress=False)
    with pytest.raises(InputError, match="unknown metric"):
        evaluate(identity_model(), tmp_path / "empty", metrics=("fid",), progress=False)
    (tmp_path / "one").mkdir()
    write_image(tmp_path / "one" / "a.png", torch.rand(3, 40, 40))
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(tmp_path / "no_weights.safetensors", tmp_path / "one", progress=False)


# --------------------------------------------------------------------------------------------- CLI
def test_cli_eval_writes_json_and_grid(paired_dir, tmp_path):
    from typer.testing import CliRunner

    from neurmap.cli import app

    out_json, out_grid = tmp_path / "r" / "eval.json", tmp_path / "r" / "grid.png"
    result = CliRunner().invoke(app, ["eval", "--weights", str(shared_path(*DMPHN)), "--data", str(paired_dir),
                                      "--json", str(out_json), "--grid", str(out_grid), "--max-images", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "PSNR" in result.output
    res = json.loads(out_json.read_text())
    assert {"data", "settings", "means", "per_image", "notes", "timing"} <= set(res)
    assert res["data"]["kind"] == "paired" and len(res["per_image"]) == 2
    assert res["settings"]["architecture"] == "dmphn_1_2_4" and res["settings"]["grid"] == str(out_grid)
    assert res["means"]["output"]["psnr"] > res["means"]["input"]["psnr"]
    assert read_image(out_grid).shape[0] == 3


def test_cli_bad_data_path_is_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from neurmap.cli import app

    result = CliRunner().invoke(app, ["eval", "--weights", "whatever", "--data", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert isinstance(result.exception, NeurmapError)
    assert "does not exist" in str(result.exception) and "\n" not in str(result.exception)


def test_module_entry_point_exit_code_and_message(tmp_path):
    env = {**os.environ, "COLUMNS": "400"}                    # rich wraps at the terminal width otherwise
    p = subprocess.run([sys.executable, "-m", "neurmap", "eval", "--weights", str(tmp_path / "nope"),
                        "--data", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in p.stderr, p.stderr
