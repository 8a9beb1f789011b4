#!/usr/bin/env python
"""Write the deblur weights of a training checkpoint (its EMA where the run keeps one) as a safetensors
file, folded for inference — to score or ship a run before it has finished.

    python scripts/export_checkpoint.py runs/default/ckpt_0005000.pt out.safetensors [--last]
"""
from __future__ import annotations

import argparse

import torch

from neurmap.core.checkpoint import save_weights
from neurmap.core.train import TrainConfig, build_nets, inference_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("output")
    ap.add_argument("--last", action="store_true", help="the last iterate instead of the EMA")
    args = ap.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    cfg = TrainConfig.from_dict(state["config"])
    G, M, _ = build_nets(cfg)
    if state.get("ema") is not None and not args.last:
        ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
        G.load_state_dict(ema)
    else:
        G.load_state_dict(state["G"])
    M.load_state_dict(state["M"])
    save_weights(args.output, inference_model(G), M,
                 provenance={"trained_by": "neurmap train", "iterations": int(state["iteration"]),
                             "weights": "last" if args.last or state.get("ema") is None else "ema",
                             "config": state["config"]})
    print(f"wrote {args.output} (iteration {state['iteration']})")


if __name__ == "__main__":
    main()
