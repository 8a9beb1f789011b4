"""Adaptation on streams (issue #13, part 2): motion sources flow / m / fused, M adapted first and rolled back
with G, the capture-thread buffer of ``neurmap run --adapt``, and its one-line refusals.

Random nets stand in for trained ones (the mechanics do not depend on the weights); quality numbers live in
``bench/adapt_stream.py``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurmap.core import build_model, save_weights
from neurmap.core.checkpoint import read_metadata
from neurmap.core.errors import ConfigError, NeurmapError
from neurmap.edge_runtime.adaptation import clone_model
from neurmap.edge_runtime.stream_adapt import (FlowWorker, StreamAdapter, StreamBuffer, fuse_motion, motion_frames,
                                               objective_at, stream_config)

from test_adapt import ACCEPT, REFUSE, _moving_clip, one_thread, snapshot  # noqa: F401 (one_thread: autouse)
from test_bad_input import cli, one_error_line


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    G, M = build_model("dmphn_1_2_4"), build_model("motion")
    with torch.no_grad():
        for n, p in G.net.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.01)
    return G.eval(), M.eval()


@pytest.fixture(scope="module")
def items():
    blurry, _ = _moving_clip(n=7)
    return motion_frames(blurry, list(range(7)), 0.8)


#: the mechanics, not the guard (random nets alter sharp images whatever they learn: the sharp guard has its own tests)
TINY = dict(steps=2, crop=16, batch=2, eval_crops=2, eval_crop=32, probe_guard=False, sharp_guard=False,
            min_blur_px=0.0, m_steps=2)


def test_sharp_probe_reads_how_much_G_alters_already_sharp_images():
    from neurmap.edge_runtime.guard import sharp_psnr

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    pairs = (x, x)
    blur = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    mild = sharp_psnr(lambda t: t + 0.2 * (t - blur(t)), pairs)     # unsharp masking, two strengths
    strong = sharp_psnr(lambda t: t + 0.8 * (t - blur(t)), pairs)
    assert sharp_psnr(lambda t: t, pairs) > 90 > mild > strong + 6


def test_stream_guard_refuses_a_round_that_made_G_alter_sharp_images():
    from neurmap.edge_runtime.guard import Score, refusal

    cfg = stream_config()
    assert cfg.sharp_guard and not cfg.probe_guard and not cfg.niqe_guard      # the stream path's guard
    before = Score(1.0, 1.0, 0.0, niqe=5.0, probe_psnr=25.0, sharp_psnr=38.0)
    worse = Score(0.8, 0.8, 0.0, niqe=4.0, probe_psnr=26.0, sharp_psnr=36.1)
    assert "already-sharp" in refusal(before, worse, cfg)
    better = Score(0.8, 0.8, 0.0, niqe=5.5, probe_psnr=24.5, sharp_psnr=38.2)   # blurred probe / NIQE: ignored
    assert refusal(before, better, cfg) == ""
    single = stream_config({"sharp_guard": False, "probe_guard": True, "niqe_guard": True})
    assert "probe dropped" in refusal(before, better, single)
    for source in ("m", "fused"):                # M under-reads: the blurred probe guards the drift to identity
        cfg_m = stream_config({"motion_source": source})
        assert cfg_m.sharp_guard and cfg_m.probe_guard
        assert "probe dropped" in refusal(before, better, cfg_m)
    assert not stream_config({"motion_source": "m", "probe_guard": False}).probe_guard     # an explicit choice wins


def test_stream_round_records_both_probes_and_rolls_back_on_the_sharp_guard(nets, items):
    G0, _ = nets
    G = clone_model(G0)
    ref = snapshot(G)
    cfg = stream_config({**TINY, "sharp_guard": True, "sharp_tol_db": -50.0, "min_gain": ACCEPT, "lr": 1e-3})
    res = StreamAdapter(G, cfg).run_round(items[:5], items[5:])   # a tolerance no round can meet
    assert not res.accepted and "already-sharp" in res.reason
    assert res.before.sharp_psnr is not None and res.after.sharp_psnr is not None
    after = snapshot(G)
    assert all(torch.equal(after[k], ref[k]) for k in ref)


def test_reblur_guard_refuses_a_round_that_only_the_anchor_improved():
    from neurmap.edge_runtime.guard import Score, refusal

    cfg = stream_config({"reblur_guard": True})
    before = Score(0.13, 0.0053, 0.0071, sharp_psnr=38.0)
    anchor_only = Score(0.10, 0.0054, 0.0051, sharp_psnr=39.0)      # `neurmap adapt car`'s round: total fell
    assert "reblur part" in refusal(before, anchor_only, cfg)
    assert refusal(before, anchor_only, stream_config({"reblur_guard": False})) == ""
    assert refusal(before, Score(0.12, 0.0050, 0.0070, sharp_psnr=38.1), cfg) == ""


def test_anchor_reads_how_much_G_alters_the_shrunk_stream_content():
    from neurmap.core.losses import sharp_anchor_loss
    from neurmap.edge_runtime.stream_adapt import anchor_scale_for

    blurry, _ = _moving_clip()
    x = torch.stack(blurry[:2])
    blur = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    mild, strong = (sharp_anchor_loss(lambda t, a=a: t + a * (t - blur(t)), x) for a in (0.2, 0.8))   # unsharp masking
    assert float(sharp_anchor_loss(lambda t: t, x)) == 0.0 and 0.0 < float(mild) < float(strong) / 3
    with pytest.raises(ConfigError, match="anchor_scale"):
        stream_config({"anchor_scale": 1})
    assert [anchor_scale_for(stream_config({"crop": c})) for c in (96, 24, 8)] == [4, 3, 0]   # shrunk crops >= 8 px
    assert anchor_scale_for(stream_config({"w_anchor": 0.0})) == 0


def test_stream_round_with_the_anchor_trains_and_scores_it(nets, items):
    """Only the anchor weighted (no reblur term): the round must lower what G changes in shrunk content, and the
    held-out score is that anchor."""
    G0, _ = nets
    G = clone_model(G0)
    cfg = stream_config({**TINY, "steps": 4, "crop": 32, "w_reblur": 0.0, "w_anchor": 1.0, "anchor_scale": 2, "lr": 1e-4,
                         "grad_clip": None, "min_gain": ACCEPT})
    res = StreamAdapter(G, cfg).run_round(items[:5], items[5:])
    assert res.accepted, res.reason
    assert res.before.sharp > 0 and res.after.sharp < 0.9 * res.before.sharp, (res.before, res.after)
    assert res.after.total == pytest.approx(res.after.sharp)


def test_fuse_takes_M_only_where_its_length_agrees_with_the_flow():
    flow = torch.zeros(1, 2, 1, 4)
    flow[0, 1] = torch.tensor([0.1, 0.1, 0.1, 0.0])
    net = torch.zeros(1, 2, 1, 4)
    net[0, 0] = torch.tensor([0.15, 0.5, 0.01, 0.3])   # agrees (1.5x), 5x, 0.1x, flow says no motion
    fused, share = fuse_motion(net, flow, band=2.0)
    assert torch.equal(fused[0, :, 0, 0], net[0, :, 0, 0])
    assert all(torch.equal(fused[0, :, 0, k], flow[0, :, 0, k]) for k in (1, 2, 3))
    assert share == pytest.approx(0.25)


def test_absolute_M_motion_does_not_keep_the_identity_a_minimum(nets):
    """The m source's objective ℓ_rb(R(X, vn M(B)), B) is not 0 at X = B, unlike SPEC's relative motion."""
    from neurmap.core.flow_motion import flow_blur

    _, M = nets
    blurry, sharp = _moving_clip()
    obj = objective_at(blurry[2][None], flow_blur(blurry, 2, 0.8)[None], {"B": blurry[2][None]}, M)
    assert obj["B"]["relative_M"] == pytest.approx(0.0, abs=1e-6) and obj["B"]["absolute_M"] > 1e-4, obj


@pytest.mark.parametrize("source", ["m", "fused"])
def test_M_is_adapted_first_and_rolled_back_with_G(nets, items, source):
    G0, M0 = nets
    G, M = clone_model(G0), clone_model(M0)
    g_before, m_before = snapshot(G), snapshot(M)
    cfg = {**TINY, "motion_source": source}
    res = StreamAdapter(G, stream_config({**cfg, "min_gain": REFUSE}), M).run_round(items[:5], items[5:])
    assert not res.accepted and res.motion["source"] == source and res.motion["m_steps"] == 2
    assert all(torch.equal(g_before[k], v) for k, v in snapshot(G).items())     # G and M bit-identical
    assert all(torch.equal(m_before[k], v) for k, v in snapshot(M).items())
    res = StreamAdapter(G, stream_config({**cfg, "min_gain": ACCEPT}), M).run_round(items[:5], items[5:])
    assert res.accepted and any(not torch.equal(g_before[k], v) for k, v in snapshot(G).items())
    m_moved = any(not torch.equal(m_before[k], v) for k, v in snapshot(M).items())
    err0, err1 = res.motion["m_heldout_err_px"]
    assert m_moved == res.motion["m_accepted"] == (err1 < err0), res.motion   # M kept only if it agrees better
    assert (res.motion["m_share"] == 1.0) == (source == "m")
    # a learning rate that throws M far off: its own guard restores it bit-identically, G's round goes on
    G2, M2 = clone_model(G0), clone_model(M0)
    m2 = snapshot(M2)
    res = StreamAdapter(G2, stream_config({**cfg, "min_gain": ACCEPT, "m_lr": 1.0}), M2).run_round(items[:5], items[5:])
    assert not res.motion["m_accepted"] and all(torch.equal(m2[k], v) for k, v in snapshot(M2).items())


def test_m_source_needs_a_motion_net_and_a_known_name(nets):
    G0, _ = nets
    with pytest.raises(NeurmapError, match="--motion-source m reads the blur with a motion net"):
        StreamAdapter(clone_model(G0), stream_config({"motion_source": "m"}))
    with pytest.raises(ConfigError, match="--motion-source 'optical': choose flow, m, fused"):
        stream_config({"motion_source": "optical"})


def _bgr(frames):
    return [np.ascontiguousarray((f.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
            for f in frames]


def test_stream_buffer_takes_centres_with_both_neighbours_off_the_capture_thread():
    blurry, _ = _moving_clip(n=10)
    raw = _bgr(blurry)
    buf = StreamBuffer(FlowWorker(), capacity=8, holdout_every=4, every=1, exposure=0.8, max_pending=100)
    for i in (0, 1, 2, 3, 4, 6, 7, 8, 9):          # frame 5 dropped: 4 and 6 have no pair of neighbours
        buf.add(i, raw[i])
    buf.worker.close()                              # wait for the flow jobs
    train, held = buf.snapshot()
    assert buf.flowed == 5 and buf.seen == 5 and len(held) == 1 and buf.worker.count == 5   # centres 1-3, 7, 8
    it = train[0]
    assert it.frame.dtype == torch.uint8 and it.frame.shape == (3, 48, 64) and it.motion.dtype == torch.float16
    assert 1.0 < float(it.motion.float().norm(dim=0).mean() * 20) < 2.0    # ≈ 0.8 · |(1, 3)| / 2 = 1.26 px
    # a full ring is not flowed again until the adaptation has taken a snapshot
    buf = StreamBuffer(FlowWorker(), capacity=4, every=1, exposure=0.8, max_pending=100)
    for i in range(8):
        buf.add(i, raw[i])
    buf.worker.call(lambda: None).result()
    assert buf.flowed == 4 and buf.skipped_full == 2
    buf.snapshot()
    buf.add(8, raw[8])
    buf.worker.close()
    assert buf.flowed == 5
    # no exposure given: the first frames estimate it in the worker, then centres follow
    buf = StreamBuffer(FlowWorker(), every=1, exposure_frames=4, max_pending=100)
    for i, f in enumerate(raw):
        if i == 5:
            buf.worker.call(lambda: None).result()     # the estimate is in
        buf.add(i, f)
    buf.worker.close()
    assert buf.exposure is not None and buf.exposure_source.startswith("estimated") and buf.flowed >= 3, buf.stats()


def test_cli_run_adapt_on_a_video_takes_the_stream_path(nets, tmp_path, monkeypatch, capsys):
    import cv2

    from neurmap.edge_runtime import hotswap

    real_close = hotswap.OnlineAdapter.close

    def close_after_the_round(self, timeout=30.0):      # the clip may end before the one round does
        self.thread.join(120)
        return real_close(self, timeout)
    monkeypatch.setattr(hotswap.OnlineAdapter, "close", close_after_the_round)
    G0, M = nets
    blurry, _ = _moving_clip(n=16)
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for f in _bgr(blurry):
        vw.write(f)
    vw.release()
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    out = tmp_path / "online.safetensors"
    opts = (f"steps=2,crop=16,batch=1,eval_crop=32,eval_crops=2,min_gain={ACCEPT},sharp_guard=false,"
            f"probe_guard=false,every=1,min_blur_px=0,min_new=4,rounds=1,exposure=0.8,motion_source=fused,m_steps=1,"
            f"out={out}")
    code, stdout, err = cli(["run", video, "--engine", w, "--quiet", "--adapt", "--adapt-opts", opts], capsys)
    assert code == 0, err
    a = json.loads(stdout[stdout.index("{"):])["adaptation"]
    assert a["mode"] == "stream" and a["error"] is None and a["rounds"] == 1 and a["accepted"] == 1, a
    s = a["stream"]
    assert s["frames_captured"] == 16 and s["frames_flowed"] >= 4 and s["flow_ms_per_frame"] > 0, s
    assert a["swaps"] + a["swap"]["pending"] == 1 and a["round_details"][0]["motion"]["source"] == "fused"
    prov = read_metadata(out)["provenance"]
    assert prov["mode"] == "stream" and prov["motion_source"] == "fused" and prov["stream"]["exposure"] == 0.8
    assert "stream path: blur from fused" in err


@pytest.mark.parametrize("args, phrase", [
    (["run", "{img}", "--adapt", "--adapt-opts", "mode=stream"], "is a single image: the stream path needs"),
    (["run", "{clip}", "--adapt", "--adapt-opts", "motion_source=optical"], "--motion-source 'optical'"),
    (["run", "{img}", "--adapt", "--adapt-opts", "motion_source=m"], "applies to the stream path only"),
    (["run", "{clip}", "--adapt", "--adapt-opts", "mode=both"], "adaptation mode 'both': choose auto, stream"),
    (["adapt", "{clip}", "--motion-source", "optical"], "--motion-source 'optical': choose flow, m, fused"),
    (["adapt", "{img}", "--motion-source", "m"], "applies to the stream path only"),
    (["adapt", "{img}", "--mode", "stream"], "the stream path needs >= 3 consecutive frames"),
])
def test_one_line_refusals(nets, tmp_path, capsys, args, phrase):
    import cv2

    G0, M = nets
    blurry, _ = _moving_clip(n=4)
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, f in enumerate(_bgr(blurry)):
        cv2.imwrite(str(clip / f"{i:03d}.png"), f)
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    flag = ["--engine", w] if args[0] == "run" else ["--weights", w]
    argv = [a.format(img=clip / "000.png", clip=clip) for a in args]
    code, _, err = cli([*argv[:2], *flag, *argv[2:]], capsys)
    assert code != 0 and phrase in one_error_line(err), err


def test_cli_adapt_with_motion_source_m_saves_the_adapted_motion_net(nets, tmp_path, capsys):
    import cv2

    from neurmap.core import load_motion

    G0, M = nets
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(_bgr(_moving_clip(n=6)[0])):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    out = tmp_path / "w2.safetensors"
    code, stdout, err = cli(["adapt", folder, "--weights", w, "--out", out, "--exposure", 0.8, "--motion-source", "m",
                             "--steps", 2, "--crop", 16, "--batch", 1, "--eval-crop", 32, "--eval-crops", 2,
                             "--no-sharp-guard", "--no-probe-guard", "--threads", 1, "--min-gain", ACCEPT,
                             "--min-blur-px", 0], capsys)
    assert code == 0, err
    line = json.loads(stdout[stdout.rindex('{"accepted"'):].splitlines()[0])
    assert line["accepted"] and line["mode"] == "stream" and line["motion_source"] == "m"
    prov = read_metadata(out)["provenance"]
    moved = any(not torch.equal(a, b) for a, b in zip(load_motion(out).net.state_dict().values(),
                                                      M.net.state_dict().values()))
    assert prov["motion_source"] == "m" and moved == prov["motion_round"]["m_accepted"], prov["motion_round"]


def test_five_point_velocity_reads_fast_shake_better_than_the_central_difference():
    """A translation x(t) = A sin(ωt) at 0.25 cycles/frame: the central difference reads sin ω / ω = 0.64 of the
    speed at t, the five-point stencil (8 sin ω − sin 2ω) / 6ω = 0.85."""
    import cv2
    import skimage.data as skd

    from neurmap.core.errors import InputError
    from neurmap.core.flow_motion import velocity

    img = cv2.resize(skd.astronaut(), (160, 120), interpolation=cv2.INTER_AREA)
    amp, w = 3.0, 2 * np.pi * 0.25
    frames = [cv2.warpAffine(img, np.float32([[1, 0, amp * np.sin(w * t)], [0, 1, 0]]), (160, 120),
                             borderMode=cv2.BORDER_REFLECT) for t in range(5)]
    true = amp * w * np.cos(w * 2)                       # dx/dt at t = 2 (-4.71 px/frame)
    inner = (slice(16, -16), slice(16, -16))
    v3, v5 = (float(velocity(frames, 2, points=p)[1][inner].mean()) for p in (3, 5))
    assert v3 / true == pytest.approx(np.sin(w) / w, abs=0.08)
    assert v5 / true == pytest.approx((8 * np.sin(w) - np.sin(2 * w)) / (6 * w), abs=0.08)
    with pytest.raises(InputError, match="stencil of 4 points"):
        velocity(frames, 2, points=4)


def test_stream_sharp_guard_tolerates_a_small_fall_of_the_sharp_probe_only():
    """The stream default lets the sharp probe fall up to sharp_tol_db (1 dB) when the score falls; more is refused."""
    from neurmap.edge_runtime.guard import Score, refusal

    cfg = stream_config()
    assert cfg.sharp_guard and cfg.sharp_tol_db > 0
    before = Score(0.40, 0.0010, 0.0090, sharp_psnr=40.0)
    within = Score(0.30, 0.0008, 0.0070, sharp_psnr=40.0 - 0.5 * cfg.sharp_tol_db)
    beyond = Score(0.30, 0.0008, 0.0070, sharp_psnr=40.0 - 1.5 * cfg.sharp_tol_db)
    assert refusal(before, within, cfg) == ""
    assert "already-sharp" in refusal(before, beyond, cfg)
    assert "already-sharp" in refusal(before, within, stream_config({"sharp_tol_db": 0.0}))
