"""On-device adaptation (edge_runtime.adaptation / hotswap / adapt_cli): mechanics on tiny crops.

Randomly initialised nets stand in for trained ones (the mechanics do not depend on the weights); the
guard is forced open or shut with ``min_gain`` where a test needs a known outcome. Quality numbers live in
``bench/adapt_bench.py``. GPU (TensorRT refit) checks are marked and skipped elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurmap.core import build_model, load_weights, save_weights
from neurmap.core.checkpoint import read_metadata, shipped_models
from neurmap.core.errors import NeurmapError
from neurmap.edge_runtime.adaptation import (AdaptConfig, Adapter, FrameBuffer, LoRAConvs, clone_model,
                                             fixed_crops, resolve_motion, save_adapted, score)
from neurmap.edge_runtime.hotswap import (OnlineAdapter, OrtSwap, TorchSwap, model_from_onnx,
                                          patch_onnx_initializers)

from conftest import SHARED_DATA

ACCEPT = -1e9          # min_gain that accepts any finite result (mechanics tests)
REFUSE = 0.999         # min_gain no round can meet (forces the rollback path)


def frames(n=6, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, h // 4, w // 4, generator=g)
    out = []
    for i in range(n):    # smooth random images, a little different per frame (a "stream")
        f = torch.nn.functional.interpolate((base + 0.1 * i).remainder(1)[None], size=(h, w), mode="bilinear")[0]
        out.append((f.clamp(0, 1) * 255).to(torch.uint8))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors run fastest on one thread (and a shared 2-core box does not oversubscribe)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(**kw):
    base = dict(steps=2, crop=16, batch=2, eval_crops=2, eval_crop=16, lr=1e-3, min_gain=ACCEPT, probe_guard=False,
                min_blur_px=0.0)
    base.update(kw)
    return AdaptConfig(**base)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    G = build_model("dmphn_1_2_4")
    M = build_model("motion")
    with torch.no_grad():   # non-zero biases: a trained net's look (and no exporter de-duplication)
        for n, p in G.net.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.01)
    return G.eval(), M.eval()


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def run_round(G, M, cfg, n=6):
    fr = frames(n)
    buf = FrameBuffer(capacity=n, holdout_every=3).extend(fr)
    adapter = Adapter(G, M, cfg)
    return adapter, adapter.run_round(*buf.snapshot())


# ---- parameter sets, LoRA, guard ------------------------------------------------------------------------------
@pytest.mark.parametrize("params", ["lora", "bias", "last"])
def test_only_the_chosen_parameter_set_changes(nets, params):
    G0, M = nets
    G = clone_model(G0)
    before = snapshot(G)
    adapter, res = run_round(G, M, tiny_cfg(params=params))
    assert res.accepted, res.reason
    after = G.net.state_dict()
    assert set(after) == set(before)                      # same tensors, same names: the exported graph is unchanged
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = adapter.trainable_names()
    assert changed and changed <= allowed, (changed - allowed)
    if params == "bias":
        assert all(k.endswith(".bias") for k in changed)
    if params == "lora":
        assert all(k.endswith(".weight") for k in changed)
        assert res.trainable < 0.1 * sum(v.numel() for v in before.values())
    if params == "last":
        assert all(k.startswith("decoder_lv1.") for k in changed)   # the tail that runs last
    assert all(not p.requires_grad for p in G.parameters())
    convs = [m for m in G.net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) or "forward" in m.__dict__ for m in convs)


def test_merged_lora_gives_identical_outputs_to_the_adapter_form(nets):
    G = clone_model(nets[0])
    lora = LoRAConvs(G.net, rank=4, alpha=4.0, seed=1)
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m, _ in lora.adapters.values())
    with torch.no_grad():
        for _, l in lora.adapters.values():
            l.B.normal_(0, 0.05)
    x = torch.rand(2, 3, 24, 32)
    with torch.no_grad():
        y_adapter = G(x)
        lora.merge()
        y_merged = G(x)
    assert torch.equal(y_adapter, y_merged)
    assert not torch.equal(y_merged, clone_model(nets[0])(x))   # the adapters did change the net


def test_rollback_on_a_worse_score_is_bit_identical(nets):
    G0, M = nets
    for cfg in (tiny_cfg(params="all", lr=10.0, min_gain=0.0),      # destructive lr
                tiny_cfg(params="lora+bias", min_gain=REFUSE)):     # guard shut
        G = clone_model(G0)
        before = snapshot(G)
        _, res = run_round(G, M, cfg)
        assert not res.accepted, res.reason
        after = G.net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(not p.requires_grad for p in G.parameters())


def test_round_is_skipped_when_the_motion_net_reads_no_blur(nets):
    G, M = nets
    blind = clone_model(M)
    with torch.no_grad():
        for p in blind.parameters():
            p.zero_()                                  # reads 0 px of motion everywhere
    model = clone_model(G)
    before = snapshot(model)
    _, res = run_round(model, blind, tiny_cfg(min_blur_px=1.0))
    assert not res.accepted and res.steps == 0 and res.after is None
    assert res.before.blur_px == 0.0 and "reads 0.00 px of blur" in res.reason
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    # the same frames with the check off: steps are taken
    assert run_round(clone_model(G), blind, tiny_cfg(min_blur_px=0.0))[1].steps == 2


def test_accepted_weights_saved_atomically_with_provenance(nets, tmp_path, monkeypatch):
    G0, M = nets
    orig = save_weights(tmp_path / "orig.safetensors", G0, motion=M, provenance={"source": "test"})
    digest = hashlib.sha256(orig.read_bytes()).hexdigest()
    G, _ = load_weights(orig)
    cfg = tiny_cfg()
    buf = FrameBuffer(capacity=6, holdout_every=3).extend(frames(6))
    adapter = Adapter(G, M, cfg)
    res = adapter.run_round(*buf.snapshot())
    assert res.accepted and res.after.total != res.before.total
    import neurmap.core.checkpoint as ck
    calls = []
    real = ck.atomic_write
    monkeypatch.setattr(ck, "atomic_write", lambda p, w: calls.append(p) or real(p, w))
    prov = {"source": "clip.mp4", "steps": res.steps, "score_before": res.before.as_dict(),
            "score_after": res.after.as_dict()}
    out = save_adapted(tmp_path / "adapted.safetensors", adapter.G, M, prov, original=orig)
    assert calls == [out]
    assert hashlib.sha256(orig.read_bytes()).hexdigest() == digest            # original untouched
    meta = read_metadata(out)
    assert meta["provenance"]["source"] == "clip.mp4" and meta["provenance"]["steps"] == 2
    G2, _ = load_weights(out)
    # the file holds the weights the guard scored: re-scored on the same held-out crops, the saved weights
    # give the recorded score_after and the original file gives score_before (a swap or stale save fails)
    held = fixed_crops(buf.snapshot()[1], cfg.eval_crops, cfg.eval_crop, cfg.seed)
    for weights_file, key in ((out, "score_after"), (orig, "score_before")):
        rescored = score(load_weights(weights_file)[0].eval(), M, held, adapter.mu, cfg).total
        assert rescored == pytest.approx(meta["provenance"][key]["total"], rel=1e-5, abs=1e-6), key
    assert all(torch.equal(a, b) for a, b in zip(G2.net.state_dict().values(), adapter.G.net.state_dict().values()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.safetensors", "orig.safetensors"]  # no temp left
    with pytest.raises(NeurmapError, match="never overwrite"):
        save_adapted(orig, adapter.G, M, prov, original=orig)


def test_motion_net_resolution(nets, tmp_path):
    G0, M = nets
    with_m = save_weights(tmp_path / "with_m.safetensors", G0, motion=M)
    without = save_weights(tmp_path / "without.safetensors", G0)
    m, src = resolve_motion(with_m)
    assert "carried" in src
    m, src = resolve_motion(without, with_m)
    assert src == str(with_m)
    if "default" not in shipped_models():
        with pytest.raises(NeurmapError, match="--motion"):
            resolve_motion(without)


# ---- hot swap ----------------------------------------------------------------------------------------------
def perturbed_state(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=g) if k.endswith("weight") else v.clone()
            for k, v in model.net.state_dict().items()}


def test_torch_hot_swap_between_frames(nets, tmp_path):
    from neurmap.edge_runtime.backends import load_backend

    G0, _ = nets
    w = save_weights(tmp_path / "g.safetensors", G0)
    backend = load_backend(w)
    swap = TorchSwap(backend)
    x = np.random.default_rng(0).random((1, 3, 24, 32), dtype=np.float32)
    y_old = backend.infer(x)
    new = perturbed_state(G0)
    ref = clone_model(G0)
    ref.net.load_state_dict(new)
    with torch.no_grad():
        y_new_ref = ref(torch.from_numpy(x)).numpy()
    # frames keep flowing in a thread while the update is submitted: each output is wholly old or wholly new
    outs, stop = [], threading.Event()

    def stream():
        while not stop.is_set():
            outs.append(backend.infer(x))
    t = threading.Thread(target=stream)
    t.start()
    while len(outs) < 2:
        pass
    swap.submit(new)
    while swap.swaps == 0 or len(outs) < 2 + 3:
        pass
    stop.set()
    t.join()
    scale = float(np.abs(y_new_ref).max())      # random nets give large outputs: compare relative to their range

    def kind(o):
        if np.array_equal(o, y_old):
            return "old"
        return "new" if float(np.abs(o - y_new_ref).max()) <= 1e-5 * scale else "mixed"
    kinds = [kind(o) for o in outs]
    assert "mixed" not in kinds and kinds[0] == "old" and kinds[-1] == "new", kinds
    assert kinds == sorted(kinds, key=lambda k: k == "new")         # old ... old new ... new
    swap.detach()
    assert "infer" not in backend.__dict__


@pytest.fixture(scope="module")
def exported(nets, tmp_path_factory):
    from neurmap.export.onnx_export import export_onnx
    G0, _ = nets
    return export_onnx(G0, tmp_path_factory.mktemp("onnx") / "g.onnx", 16, 16, dynamic=True)


def test_ort_hot_swap_between_frames(nets, exported):
    from neurmap.edge_runtime.backends import load_backend

    G0, _ = nets
    backend = load_backend(exported)
    swap = OrtSwap(backend, exported, reference=G0.net.state_dict())
    x = np.random.default_rng(1).random((1, 3, 24, 32), dtype=np.float32)
    y_old = backend.infer(x)
    with torch.no_grad():
        np.testing.assert_allclose(y_old, G0(torch.from_numpy(x)).numpy(), atol=1e-3, rtol=1e-3)
    new = perturbed_state(G0)
    ref = clone_model(G0)
    ref.net.load_state_dict(new)
    old_session = backend.session
    swap.submit(new)                          # new session built here, off the "stream"
    assert backend.session is old_session     # ... and used only from the next frame on
    y_new = backend.infer(x)
    assert swap.swaps == 1 and backend.session is not old_session and swap.reexports == 0
    with torch.no_grad():
        np.testing.assert_allclose(y_new, ref(torch.from_numpy(x)).numpy(), atol=1e-3, rtol=1e-3)
    assert np.abs(y_new - y_old).max() > 1e-3


def test_ort_swap_falls_back_to_re_export_when_a_tensor_cannot_be_patched(nets, exported, monkeypatch):
    from neurmap.edge_runtime import hotswap
    from neurmap.export import onnx_weights
    from neurmap.edge_runtime.backends import load_backend

    G0, _ = nets
    backend = load_backend(exported)
    swap = hotswap.swapper_for(backend, exported, model=G0)       # OrtSwap with a re-export fallback

    def unpatchable(*a, **k):
        raise KeyError("folded by the exporter")
    monkeypatch.setattr(onnx_weights, "patch_onnx_initializers", unpatchable)
    new = perturbed_state(G0)
    ref = clone_model(G0)
    ref.net.load_state_dict(new)
    swap.submit(new)
    x = np.random.default_rng(3).random((1, 3, 16, 24), dtype=np.float32)
    y = backend.infer(x)
    assert swap.reexports == 1 and swap.swaps == 1
    with torch.no_grad():
        np.testing.assert_allclose(y, ref(torch.from_numpy(x)).numpy(), atol=1e-3, rtol=1e-3)


def test_onnx_patch_refuses_an_unmapped_changed_tensor_and_maps_back(nets, exported):
    import onnx

    G0, _ = nets
    proto = onnx.load(str(exported))
    state = {k: v.clone() for k, v in G0.net.state_dict().items()}
    patch_onnx_initializers(proto, state, reference=G0.net.state_dict())        # nothing changed: fine
    state["no.such.tensor"] = torch.ones(1)
    with pytest.raises(KeyError):
        patch_onnx_initializers(proto, state, reference=G0.net.state_dict())
    back = model_from_onnx(exported)                                              # ONNX -> trainable PyTorch
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(back(x), G0(x))


def test_online_adapter_swaps_an_accepted_round_into_the_stream(nets, tmp_path):
    from neurmap.edge_runtime.backends import load_backend

    G0, M = nets
    w = save_weights(tmp_path / "g.safetensors", G0, motion=M)
    backend = load_backend(w)
    swap = TorchSwap(backend)
    online = OnlineAdapter(swap, backend.model, M, tiny_cfg(), out=tmp_path / "online.safetensors", every=1,
                           min_new=6, capacity=6, max_rounds=1, provenance={"base_weights": str(w)})
    for f in frames(6):
        backend.infer(f.float().numpy()[None] / 255)
    online.thread.join(60)
    x = frames(1, seed=5)[0].float().numpy()[None] / 255
    y = backend.infer(x)                                  # the swap lands on this frame
    summary = online.close()
    assert summary["rounds"] == 1 and summary["accepted"] == 1 and summary["swaps"] == 1, summary
    with torch.no_grad():
        np.testing.assert_allclose(y, online.adapter.G(torch.from_numpy(x)).numpy(), atol=1e-6)
    assert read_metadata(tmp_path / "online.safetensors")["provenance"]["adapted_online"] is True


# ---- CLI ---------------------------------------------------------------------------------------------------
def cli(*args):
    from neurmap.cli import app
    return CliRunner().invoke(app, list(map(str, args)))


def test_cli_adapt_on_a_tiny_folder(nets, tmp_path):
    import cv2

    G0, M = nets
    car = SHARED_DATA / "real_video" / "car"
    folder = tmp_path / "clip"
    folder.mkdir()
    if car.is_dir():      # real blurry camera frames, shrunk
        for i, p in enumerate(sorted(car.glob("*.jpg"))[:6]):
            cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.resize(cv2.imread(str(p)), (64, 36), interpolation=cv2.INTER_AREA))
    else:
        for i, f in enumerate(frames(6)):
            cv2.imwrite(str(folder / f"{i:03d}.png"), f.permute(1, 2, 0).numpy()[:, :, ::-1])
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    digest = hashlib.sha256(w.read_bytes()).hexdigest()
    out = tmp_path / "w2.safetensors"
    common = ["--steps", 2, "--crop", 16, "--batch", 1, "--eval-crop", 16, "--eval-crops", 2, "--no-probe-guard",
              "--no-sharp-guard", "--min-blur-px", 0, "--threads", 1]
    r = cli("adapt", folder, "--weights", w, "--out", out, "--min-gain", ACCEPT, *common)
    assert r.exit_code == 0, r.output
    assert '"accepted": true' in r.output and out.exists()
    prov = read_metadata(out)["provenance"]
    assert prov["source"] == str(folder) and prov["steps"] == 2 and "score_after" in prov
    assert hashlib.sha256(w.read_bytes()).hexdigest() == digest
    # a shut guard: rolled back, nothing written
    out2 = tmp_path / "w3.safetensors"
    r = cli("adapt", folder, "--weights", w, "--out", out2, "--min-gain", REFUSE, *common)
    assert r.exit_code == 0 and '"accepted": false' in r.output and not out2.exists()
    # never over the original
    r = cli("adapt", folder, "--weights", w, "--out", w, *common)
    assert r.exit_code != 0 and "never overwrite" in str(r.exception or r.output)


def test_cli_run_with_adapt_reports_the_adapter(nets, tmp_path, monkeypatch):
    import cv2

    from neurmap.edge_runtime import hotswap

    # the stream may end before the round does (close() then rolls it back): let the one round finish first,
    # so that an accepted round is what this test sees
    real_close = hotswap.OnlineAdapter.close

    def close_after_the_round(self, timeout=30.0):
        self.thread.join(120)
        return real_close(self, timeout)
    monkeypatch.setattr(hotswap.OnlineAdapter, "close", close_after_the_round)
    G0, M = nets
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(frames(6)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f.permute(1, 2, 0).numpy()[:, :, ::-1])
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    out = tmp_path / "online.safetensors"
    opts = (f"steps=2,crop=16,batch=1,eval_crop=16,eval_crops=2,min_gain={ACCEPT},probe_guard=false,every=1,"
            f"min_blur_px=0,min_new=4,rounds=1,mode=single,"       # ordered frames: the stream path's by default
            f"out={out}")
    r = cli("run", folder, "--engine", w, "--loop", "--max-frames", 30, "--input-rate", 10, "--quiet",
            "--adapt", "--adapt-opts", opts)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    a = summary["adaptation"]
    assert a["error"] is None and a["frames_buffered"] >= 4 and a["mode"] == "single"
    # the round (min_gain -1e9: any finite result) is accepted, saved, then swapped in at the next frame
    # (pending if the stream ended first)
    assert a["rounds"] == 1 and a["accepted"] == 1, a
    assert out.exists() and a["swaps"] + a["swap"]["pending"] == 1, a
    prov = read_metadata(out)["provenance"]
    assert prov["adapted_online"] is True and prov["rounds_accepted"] == 1
    G_saved, _ = load_weights(out)
    assert any(not torch.equal(a_, b_) for a_, b_ in zip(G_saved.net.state_dict().values(),
                                                         G0.net.state_dict().values()))   # new weights saved
    r = cli("run", folder, "--engine", w, "--adapt", "--adapt-opts", "bogus=1")
    assert r.exit_code != 0 and "bogus" in str(r.exception)


# ------------------------------------------------------------------------------------------------ streams (#13)
def _moving_clip(n=6, h=48, w=64, v=(1.0, 3.0), exposure=0.8, sub=7):
    """Consecutive frames of a textured image moving at ``v`` px/frame, blurred over ``exposure`` (and sharp)."""
    import cv2
    import skimage.data as skd

    img = cv2.resize(skd.astronaut(), (w + 60, h + 60), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    blurry, sharp = [], []
    for t in range(n):
        views = []
        for o in [*((np.arange(sub) + 0.5) / sub - 0.5), None]:
            s = t + (exposure * o if o is not None else 0.0)
            mat = np.float32([[1, 0, -30 + v[1] * s], [0, 1, -30 + v[0] * s]])
            views.append(cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR))
        blurry.append(torch.from_numpy(np.mean(views[:-1], 0)).permute(2, 0, 1).contiguous())
        sharp.append(torch.from_numpy(views[-1]).permute(2, 0, 1).contiguous())
    return blurry, sharp


def test_absolute_flow_motion_does_not_keep_the_identity_a_minimum(nets):
    """Relative motion vn M(B) − vn M(X) is 0 at X = B, so R(B, 0) = B scores 0 (the identity is a minimum);
    under the absolute flow-derived motion the blurry frame scores worse than the sharp truth."""
    from neurmap.core.flow_motion import flow_blur
    from neurmap.edge_runtime.stream_adapt import objective_at

    _, M = nets
    blurry, sharp = _moving_clip()
    m = flow_blur(blurry, 2, 0.8)[None]
    # _moving_clip averages the encoded values, so R in sRGB is its exact blur model
    obj = objective_at(blurry[2][None], m, {"B": blurry[2][None], "S": sharp[2][None]}, M, space="srgb")
    assert obj["B"]["relative_M"] == pytest.approx(0.0, abs=1e-6)
    assert obj["B"]["absolute_flow"] > 1.2 * obj["S"]["absolute_flow"], obj


def test_stream_round_accepts_or_restores_bit_identically(nets):
    from neurmap.edge_runtime.stream_adapt import FlowWorker, StreamAdapter, motion_frames, stream_config

    G0, _ = nets
    blurry, _ = _moving_clip(n=7)
    worker = FlowWorker()
    items = motion_frames(blurry, list(range(7)), 0.8, worker)
    assert worker.count == 7 and worker.per_frame() > 0          # the flow ran (in the worker) and was timed
    worker.close()
    assert 1.0 < float(items[3].motion.norm(dim=0).mean() * 20) < 2.0   # ≈ 0.8 · |v| / 2 = 1.26 px
    cfg = dict(steps=2, crop=16, batch=2, eval_crops=2, eval_crop=32, sharp_guard=False, min_blur_px=0.0)
    G = clone_model(G0)
    before = snapshot(G)
    res = StreamAdapter(G, stream_config({**cfg, "min_gain": REFUSE})).run_round(items[:5], items[5:])
    assert not res.accepted and res.steps == 2
    assert all(torch.equal(before[k], v) for k, v in snapshot(G).items())
    res = StreamAdapter(G, stream_config({**cfg, "min_gain": ACCEPT})).run_round(items[:5], items[5:])
    assert res.accepted and res.params == "all"
    assert any(not torch.equal(before[k], v) for k, v in snapshot(G).items())
    with pytest.raises(NeurmapError, match="held-out frames"):
        StreamAdapter(G, stream_config(cfg)).run_round(items, [])


def test_cli_adapt_on_a_video_folder_takes_the_stream_path(nets, tmp_path):
    import cv2

    G0, M = nets
    folder = tmp_path / "clip"
    folder.mkdir()
    blurry, _ = _moving_clip(n=6)
    for i, f in enumerate(blurry):
        cv2.imwrite(str(folder / f"{i:03d}.png"), (f.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    out = tmp_path / "w2.safetensors"
    common = ["--steps", 2, "--crop", 16, "--batch", 1, "--eval-crop", 32, "--eval-crops", 2, "--no-sharp-guard",
              "--threads", 1, "--min-gain", ACCEPT]
    r = cli("adapt", folder, "--weights", w, "--out", out, "--exposure", 0.8, *common)
    assert r.exit_code == 0, r.output
    line = json.loads(r.output[r.output.rindex('{"accepted"'):].splitlines()[0])
    assert line["mode"] == "stream" and line["exposure"] == 0.8 and line["accepted"] and out.exists()
    assert read_metadata(out)["provenance"]["mode"] == "stream"
    r = cli("adapt", folder, "--weights", w, "--out", out, "--exposure", 1.5, *common)
    assert r.exit_code != 0 and "exposure 1.5 must be in" in str(r.exception or r.output)
    r = cli("adapt", folder, "--weights", w, "--out", tmp_path / "w3.safetensors", "--mode", "single",
            "--min-blur-px", 0, *common)
    assert r.exit_code == 0 and '"mode"' not in r.output.splitlines()[-1], r.output


def test_cli_motion_reports_the_motion_net_beside_flow(nets, tmp_path):
    import cv2

    G0, M = nets
    folder = tmp_path / "clip"
    folder.mkdir()
    blurry, _ = _moving_clip(n=6)                       # frames 2-3 take the stream's five-point stencil
    for i, f in enumerate(blurry):
        cv2.imwrite(str(folder / f"{i:03d}.png"), (f.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8))
    w = save_weights(tmp_path / "w.safetensors", G0, motion=M)
    video = tmp_path / "viz.mp4"
    r = cli("motion", folder, "--weights", w, "--exposure", 0.8, "-o", video, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["stream"] and res["frames"] == 6 and len(res["per_frame"]) == 6
    assert 0.9 < res["mean_flow_px"] < 2.0                         # ≈ 0.8 · |(1, 3)| / 2 = 1.26 px
    assert res["mean_M_px"] >= 0 and "M_vs_flow_error_px" in res["per_frame"][0]
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    assert ok and frame.shape[1] == 3 * 64                         # input | M | flow
    r = cli("motion", folder / "000.png", "--weights", w, "--json")
    assert r.exit_code == 0 and '"stream": false' in r.output
