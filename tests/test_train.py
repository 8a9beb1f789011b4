"""Training: exact resume, atomic/corrupt checkpoints, DDP on CPU (gloo), config errors, NaN stop."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from neurmap.core.errors import NeurmapError
from neurmap.core.train import TrainConfig, Trainer, latest_checkpoint, load_config

from conftest import SHARED_DATA, shared_path

GOPRO = SHARED_DATA / "gopro240" / "GOPR0477_11_00"
CAR = SHARED_DATA / "real_video" / "car"


def tiny_config(out, **kw) -> TrainConfig:
    shared_path("gopro240", "GOPR0477_11_00")
    d = dict(backbone="dmphn_1_2_4", output_dir=str(out), iterations=4, crop=32, batch_paired=1,
             batch_unpaired=1, checkpoint_every=2, tensorboard=False, device="cpu", precision="fp32",
             data={"paired": {"type": "gopro240", "path": str(GOPRO), "frame_range": [0, 30], "n_frames": 7},
                   "unpaired_blurry": [{"type": "kernel", "path": str(GOPRO), "frame_range": [100, 104]},
                                       {"type": "folder", "path": str(CAR), "frame_range": [0, 4]}],
                   "unpaired_sharp": {"type": "folder", "path": str(GOPRO), "frame_range": [0, 30]}})
    d.update(kw)
    return TrainConfig.from_dict(d)


def run(trainer: Trainer) -> list[dict]:
    return [losses for _, losses, _ in trainer.iterations()]


def weights(trainer: Trainer) -> dict:
    s = trainer.step
    return {f"{n}.{k}": v.clone() for n, net in (("G", s.G), ("M", s.M), ("D", s.D))
            for k, v in net.state_dict().items()}


def test_resume_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    full = Trainer(tiny_config(tmp_path / "full"))
    full_losses = run(full)
    half = Trainer(tiny_config(tmp_path / "half", iterations=4))
    gen = half.iterations()
    first = [next(gen)[1] for _ in range(2)]  # stop after 2 iterations (checkpoint at 2)
    gen.close()
    resumed = Trainer(tiny_config(tmp_path / "other"), resume=tmp_path / "half")
    assert resumed.start == 2
    second = run(resumed)
    assert first + second == full_losses
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "final.safetensors").exists()


def test_warmup_trains_only_motion_and_discriminator_then_all(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "w", iterations=2, warmup_iterations=2, checkpoint_every=1))
    start = weights(trainer)
    gen = trainer.iterations()
    warm = [next(gen)[1] for _ in range(2)]
    after_warmup = weights(trainer)
    assert all("G_total" not in losses and "M_total" in losses and "D" in losses for losses in warm)
    changed = lambda a, b, net: any(not torch.equal(a[k], b[k]) for k in a if k.startswith(net + "."))
    assert not changed(start, after_warmup, "G")
    assert changed(start, after_warmup, "M") and changed(start, after_warmup, "D")
    assert trainer.scheds[0].get_last_lr()[0] == trainer.cfg.lr_G  # G's decay has not started
    rest = [losses for _, losses, _ in gen]
    assert len(rest) == 2 and all("G_total" in losses for losses in rest)
    assert changed(after_warmup, weights(trainer), "G")
    assert trainer.scheds[0].get_last_lr()[0] == 0.0 and trainer.scheds[1].get_last_lr()[0] == 0.0
    # stopped inside the warm-up and resumed: the same losses and weights as the uninterrupted run
    half = Trainer(tiny_config(tmp_path / "h", iterations=2, warmup_iterations=2, checkpoint_every=1))
    gen = half.iterations()
    first = [next(gen)[1]]
    gen.close()
    resumed = Trainer(tiny_config(tmp_path / "h", iterations=2, warmup_iterations=2), resume=tmp_path / "h")
    assert resumed.start == 1
    assert first + run(resumed) == warm + rest
    a, b = weights(trainer), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "r"))
    run(trainer)
    ckpts = sorted((tmp_path / "r").glob("ckpt_*.pt"))
    assert [c.name for c in ckpts] == ["ckpt_0000002.pt", "ckpt_0000004.pt"]
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 3])  # truncated, as after a crash mid-copy
    messages = []
    path, state = latest_checkpoint(tmp_path / "r", messages.append)
    assert path.name == "ckpt_0000002.pt" and state["iteration"] == 2
    assert "unreadable" in messages[0]
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(NeurmapError, match="unknown config keys"):
        TrainConfig.from_dict({"iteratons": 3})
    with pytest.raises(ValueError, match="unknown loss weights"):
        TrainConfig.from_dict({"loss_weights": {"G_rebluur": 1}})
    with pytest.raises(NeurmapError, match="not key=value"):
        load_config(None, ["iterations"])
    cfg = load_config(None, ["iterations=7", "loss_weights.G_reblur=10"])
    assert cfg.iterations == 7 and cfg.loss_weights == {"G_reblur": 10}
    with pytest.raises(NeurmapError, match="does not exist"):
        Trainer(tiny_config(tmp_path, data={"paired": "/nonexistent", "unpaired_blurry": "/x", "unpaired_sharp": "/y"}))
    with pytest.raises(NeurmapError, match="fp16 training needs a CUDA GPU"):
        Trainer(tiny_config(tmp_path, precision="fp16"))


def test_non_finite_loss_stops_training_and_keeps_checkpoints(tmp_path):
    from neurmap.core.train import run_training
    cfg = tiny_config(tmp_path / "nan", loss_weights={"G_global": float("nan")}, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="deblur net step.*last good state"):
        run_training(cfg, progress=False)
    assert not list((tmp_path / "nan").glob("ckpt_*.pt")), "a half-updated state must not be checkpointed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, resume: str | None, iterations: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    trainer = Trainer(tiny_config(out, iterations=iterations), resume=resume)
    for _ in trainer.iterations():
        pass
    from neurmap.core.checkpoint import weights_hash
    s = trainer.step
    q.put((rank, weights_hash({**{f"G.{k}": v for k, v in s.G.module.state_dict().items()},
                               **{f"M.{k}": v for k, v in s.M.module.state_dict().items()},
                               **{f"D.{k}": v for k, v in s.D.module.state_dict().items()}}), trainer.start))
    dist.destroy_process_group()


def _spawn(world, out, resume, iterations):
    shared_path("gopro240", "GOPR0477_11_00")   # skip here: a skip raised inside a spawned rank is a crash
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ranks = mp.start_processes(_ddp_worker, args=(world, _free_port(), out, resume, iterations, q), nprocs=world,
                               join=False, start_method="spawn")
    deadline = time.monotonic() + 300          # a hung collective fails the test instead of hanging the suite
    while not ranks.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            pytest.fail(f"{world} DDP ranks did not finish within 300 s")
    return sorted(q.get() for _ in range(world))


@pytest.mark.slow
def test_ddp_two_ranks_on_cpu_stay_identical_and_resume_under_another_world_size(tmp_path):
    out = str(tmp_path / "ddp")
    results = _spawn(2, out, None, 2)
    assert results[0][1] == results[1][1], "ranks diverged"
    assert (tmp_path / "ddp" / "ckpt_0000002.pt").exists()
    # continue the 2-rank run with 3 ranks
    results3 = _spawn(3, out, out, 4)
    assert {r[2] for r in results3} == {2}
    assert len({r[1] for r in results3}) == 1
    assert (tmp_path / "ddp" / "ckpt_0000004.pt").exists()


# ---- kill -9 from the command line --------------------------------------------------------------------------
def _tiny_cli_run_folder(root: Path) -> Path:
    """A config and data folders of 64x64 GoPro crops (paired: mean of 7 frames / the 4th; unpaired sharp)."""
    import cv2
    import numpy as np

    seq = shared_path("gopro240", "GOPR0477_11_00")
    for d in ("pairs/blur", "pairs/sharp", "sharp"):
        (root / d).mkdir(parents=True)
    for i in range(4):
        y, x = 200 + 40 * i, 300 + 90 * i
        crops = [cv2.imread(str(seq / f"{j:06d}.png"))[y:y + 64, x:x + 64].astype(np.float64)
                 for j in range(1 + 10 * i, 8 + 10 * i)]
        cv2.imwrite(str(root / "pairs" / "blur" / f"{i}.png"), np.round(np.mean(crops, 0)).astype(np.uint8))
        cv2.imwrite(str(root / "pairs" / "sharp" / f"{i}.png"), crops[3].astype(np.uint8))
        cv2.imwrite(str(root / "sharp" / f"{i}.png"), cv2.imread(str(seq / f"{60 + 10 * i:06d}.png"))[y:y + 64, x + 100:x + 164])
    cfg = root / "tiny.yaml"
    cfg.write_text("backbone: dmphn_1_2_4\niterations: 4\ncrop: 32\nbatch_paired: 1\nbatch_unpaired: 1\n"
                   "checkpoint_every: 2\ntensorboard: false\ndevice: cpu\nprecision: fp32\n"
                   f"data:\n  paired: {{type: paired, path: {root / 'pairs'}}}\n"
                   f"  unpaired_blurry: {{type: kernel, path: {root / 'sharp'}}}\n"
                   f"  unpaired_sharp: {{type: folder, path: {root / 'sharp'}}}\n")
    return cfg


def _cli_train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "neurmap", "train", *args, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, what: str, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{what} did not finish within {timeout:.0f} s")
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-3000:]}"
    return out


def _tensors(obj, prefix=""):
    """Every tensor in a (nested) checkpoint, by path: weights, optimizer moments, pool, rng."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


@pytest.mark.slow
def test_cli_kill_9_then_resume_is_bit_exact(tmp_path):
    """`neurmap train CFG`, SIGKILL once a checkpoint exists, `neurmap train --resume RUN_DIR` (as the README
    says): the final weights and the whole last checkpoint equal those of a run that never stopped."""
    from safetensors.torch import load_file

    cfg = _tiny_cli_run_folder(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    _finish(_cli_train(str(cfg), f"output_dir={full}"), "the uninterrupted run")
    proc = _cli_train(str(cfg), f"output_dir={killed}")
    deadline = time.monotonic() + 300
    while not list(killed.glob("ckpt_*.pt")):
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)                     # kill -9, mid-run
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    try:
        os.killpg(proc.pid, signal.SIGKILL)               # nothing of ours left behind (data workers)
    except ProcessLookupError:
        pass
    assert not (killed / "final.safetensors").exists(), "the run finished before it was killed: nothing was tested"
    stopped_at = max(int(p.stem.split("_")[1]) for p in killed.glob("ckpt_*.pt"))
    assert stopped_at == 2
    out = _finish(_cli_train("--resume", str(killed)), "the resumed run")
    assert "run directory" in out
    a, b = load_file(str(full / "final.safetensors")), load_file(str(killed / "final.safetensors"))
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    ca = dict(_tensors(torch.load(full / "ckpt_0000004.pt", map_location="cpu", weights_only=True)))
    cb = dict(_tensors(torch.load(killed / "ckpt_0000004.pt", map_location="cpu", weights_only=True)))
    assert ca.keys() == cb.keys() and any(k.startswith(".opt_G") for k in ca)
    assert all(torch.equal(ca[k], cb[k]) for k in ca), [k for k in ca if not torch.equal(ca[k], cb[k])][:5]
