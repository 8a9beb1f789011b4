"""Errors a person can act on (issue #14): the entry point's one-line messages and exit codes, resume from the
command line after ``kill -9``, Ctrl-C, typed config values, the backbone's clip default, hints that name
real options, and the ONNX -> PyTorch mapping that reads (never guesses) the value range."""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_path
from test_bad_input import cli, one_error_line


def _tiny_yaml(path: Path, out: Path, **kw) -> Path:
    import yaml

    gopro = shared_path("gopro240", "GOPR0477_11_00")
    car = shared_path("real_video", "car")
    cfg = {"backbone": "dmphn_1_2_4", "output_dir": str(out), "iterations": 6, "crop": 32, "batch_paired": 1,
           "batch_unpaired": 1, "checkpoint_every": 1, "log_every": 1, "tensorboard": False, "device": "cpu",
           "precision": "fp32", "lr_G": "5e-5",                                  # as PyYAML reads 5e-5: a string
           "data": {"paired": {"type": "gopro240", "path": str(gopro), "frame_range": [0, 30], "n_frames": 7},
                    "unpaired_blurry": [{"type": "kernel", "path": str(gopro), "frame_range": [100, 104]},
                                        {"type": "folder", "path": str(car), "frame_range": [0, 4]}],
                    "unpaired_sharp": {"type": "folder", "path": str(gopro), "frame_range": [0, 30]}}, **kw}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _default_sigint() -> None:
    """A terminal's Ctrl-C: a suite started in the background (``cmd &``) ignores SIGINT, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn_train(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "neurmap", "train", str(cfg), "--no-progress", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)


def _wait_for(path_glob, folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.monotonic()
    while not list(folder.glob(path_glob)):
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t > timeout:
            proc.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.1)


def test_train_kill_9_then_resume_from_the_command_line(tmp_path, capsys):
    """README: `neurmap train CONFIG`, killed, then `neurmap train --resume RUN_DIR` (its config.json holds
    lr_G as json writes it, 5e-05, which YAML reads as a string) continues and finishes."""
    import json

    run = tmp_path / "run"
    proc = _spawn_train(_tiny_yaml(tmp_path / "cfg.yaml", run, iterations=4))
    _wait_for("ckpt_*.pt", run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run / "final.safetensors").exists()
    assert json.loads((run / "config.json").read_text())["lr_G"] == 5e-05
    code, _, err = cli(["train", "--resume", run, "--no-progress"], capsys)
    assert code == 0, err
    assert (run / "final.safetensors").exists() and "Traceback" not in err
    its = [json.loads(line)["iteration"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(its) == 4 and its.count(4) == 1


def test_ctrl_c_in_train_exits_130_with_one_line_and_nothing_half_written(tmp_path):
    run = tmp_path / "run"
    proc = _spawn_train(_tiny_yaml(tmp_path / "cfg.yaml", run, iterations=2000))
    _wait_for("ckpt_*.pt", run, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted (Ctrl-C)" in one_error_line(err) and "--resume" in one_error_line(err)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    from neurmap.core.train import latest_checkpoint
    assert latest_checkpoint(run, log=lambda m: None) is not None       # the last checkpoint is whole


def test_config_values_are_type_checked(tmp_path):
    from neurmap.core.errors import ConfigError
    from neurmap.core.train import load_config

    cfg = load_config(_tiny_yaml(tmp_path / "c.yaml", tmp_path / "o"), ["iterations=7", "crop=64.0", "seed=3"])
    assert (cfg.lr_G, cfg.iterations, cfg.crop) == (5e-05, 7, 64) and isinstance(cfg.lr_G, float)
    for bad, phrase in (("iterations=abc", "iterations='abc' is not int"), ("crop=1.5", "crop=1.5 is not int"),
                        ("tensorboard=maybe", "is not bool"), ("lr_G=fast", "lr_G='fast' is not float"),
                        ("loss_weights.G_reblur=x", "G_reblur='x' is not float"),
                        ("iterations.x=1", "iterations={'x': 1} is not int")):
        with pytest.raises(ConfigError, match=re.escape(phrase)):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="not a group of settings"):
        load_config(_tiny_yaml(tmp_path / "c.yaml", tmp_path / "o"), ["iterations.x=1"])


def test_grad_clip_default_follows_the_backbone():
    """The official code clips at 0.01 for MPRNet only; DMPHN and the others train unclipped."""
    from neurmap.core.train import TrainConfig, load_config

    assert TrainConfig().grad_clip is None
    assert TrainConfig(backbone="dmphn_1_2_4").grad_clip is None
    assert load_config(None, ["backbone=mprnet"]).grad_clip == 0.01
    assert load_config(None, ["grad_clip=0.5"]).grad_clip == 0.5
    assert load_config(None, ["backbone=mprnet", "grad_clip=null"]).grad_clip is None


def _caught(fn):
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    pytest.fail("no exception")


def test_real_library_failures_are_sorted(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    from neurmap.cli import EXIT_ENGINE, EXIT_FILES, EXIT_INTERRUPTED, EXIT_MEMORY, friendly_error

    # ONNX Runtime: a valid graph fed the wrong dtype
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(m))
    sess = ort.InferenceSession(str(m), providers=["CPUExecutionProvider"])
    msg, code = friendly_error(_caught(lambda: sess.run(None, {"x": np.zeros(1, np.int64)})))
    assert code == EXIT_ENGINE and msg.startswith("ONNX Runtime failed:") and "neurmap check" in msg
    # the quantizer on a file that is not a model
    from onnxruntime.quantization import quantize_dynamic
    (tmp_path / "junk.onnx").write_bytes(b"\x00" * 64)
    msg, code = friendly_error(_caught(lambda: quantize_dynamic(str(tmp_path / "junk.onnx"), str(tmp_path / "q.onnx"))))
    assert code == EXIT_ENGINE and "ONNX Runtime failed" in msg
    # out of memory: an allocation no machine has
    for alloc in (lambda: np.empty(10 ** 15, np.float32), lambda: torch.empty(10 ** 14)):
        msg, code = friendly_error(_caught(alloc))
        assert code == EXIT_MEMORY and msg.startswith("out of memory") and "smaller" in msg
    # permissions (root too cannot create folders in /sys) and a full disk
    msg, code = friendly_error(_caught(lambda: os.makedirs("/sys/neurmap-test")))
    assert code == EXIT_FILES and ("permission" in msg or "not permitted" in msg)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "m.onnx"))
    msg, code = friendly_error(full)
    assert code == EXIT_FILES and msg.startswith("disk full writing") and "m.onnx" in msg
    assert friendly_error(KeyboardInterrupt())[1] == EXIT_INTERRUPTED
    assert friendly_error(ZeroDivisionError("a bug")) is None            # bugs keep their traceback


def _typer_options() -> dict[str, set[str]]:
    import typer

    from neurmap.cli import app

    cmd = typer.main.get_command(app)
    return {name: {o for p in c.params for o in (*p.opts, *p.secondary_opts)} for name, c in cmd.commands.items()}


def test_every_hint_names_real_commands_and_options():
    """`neurmap CMD --opt` in any message or docstring, and README's command lines, exist as written."""
    opts = _typer_options()
    found, bad = 0, []
    files = [p for part in ("neurmap_core", "export", "calibration", "edge_runtime", "neurmap")
             for p in (REPO / part).rglob("*.py")]
    texts = [(f, m.group(1), m.group(2)) for f in files
             for m in re.finditer(r"`neurmap ([a-z]+)([^`]*)`", f.read_text())]
    readme = (REPO / "README.md").read_text()
    texts += [(Path("README.md"), m.group(1), m.group(2))
              for m in re.finditer(r"^neurmap ([a-z]+)(.*)$", readme, re.M)]
    for f, sub, rest in texts:
        found += 1
        if sub not in opts:
            bad.append(f"{f.name}: no command `neurmap {sub}`")
            continue
        for o in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest.split("#")[0]):
            if o not in opts[sub] and o != "--help":
                bad.append(f"{f.name}: `neurmap {sub}` has no option {o}")
    assert found > 10 and not bad, bad


def test_one_size_parser_one_error_style(capsys):
    w = str(shared_path("pretrained", "dmphn_1_2_4"))
    lines = [one_error_line(cli(args, capsys)[2]) for args in (
        ["models", "--size", "7y7"], ["export", "-t", "onnx", "-w", w, "--shape", "7y7"],
        ["run", "x", "-e", w, "--tile", "7y7"], ["eval", "--weights", w, "--data", ".", "--crop", "7y7"])]
    assert all(re.fullmatch(r"error: --\w+ '7y7' is not HxW with positive integers, e\.g\. \d+x\d+", ln)
               for ln in lines), lines


def test_model_from_onnx_reads_the_range_and_refuses_without_it(tmp_path):
    import onnx
    import torch

    from neurmap.core import load_weights
    from neurmap.core.errors import NeurmapError
    from neurmap.edge_runtime.hotswap import model_from_onnx
    from neurmap.export.onnx_export import export_onnx

    model, _ = load_weights(str(shared_path("pretrained", "dmphn_1_2_4")))
    assert model.input_range == "-0.5,0.5"                     # the official weights: a non-default range
    path = export_onnx(model, tmp_path / "m.onnx", 32, 32)
    back = model_from_onnx(path)
    assert back.input_range == "-0.5,0.5"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-5)
    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key != "neurmap.net_input_range"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with pytest.raises(NeurmapError, match="does not record the value range"):
        model_from_onnx(tmp_path / "old.onnx")
