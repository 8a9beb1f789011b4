"""Registry of every network: one file per architecture, built by name."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from torch import nn

from ..errors import NeurmapError


@dataclass(frozen=True)
class ModelSpec:
    """How to build one network and what it is for ("deblur", "motion" or "discriminator")."""

    name: str
    target: str  # "module:Class"
    role: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""
    #: convs ONNX Runtime INT8 keeps in float by default (``neurmap export --exclude-budget``), measured per net:
    #: DMPHN 1-2-4 12 of 90 (0.09 dB loss; bench/results/export.json); the compact nets 0 — with no conv in float
    #: they lose 0.01-0.03 dB and run 2.1x faster than with 12 (bench/results/int8_budget.json)
    int8_float_convs: int = 12


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("dmphn_1_2_4", "dmphn:DMPHN", "deblur", {"levels": 3}, "DMPHN 1-2-4 (the paper's DMPHN)"),
    ModelSpec("dmphn_1_2_4_8", "dmphn:DMPHN", "deblur", {"levels": 4}, "DMPHN 1-2-4-8 (what the NeurMAP code trains)"),
    ModelSpec("mprnet", "mprnet:MPRNet", "deblur", {}, "MPRNet, 3-stage deblurring"),
    ModelSpec("compact", "compact:CompactDeblur", "deblur", {}, "CompactDeblur: our real-time U-Net (~29 GMAC at 720p)", 0),
    ModelSpec("compact_rep", "compact:CompactDeblur", "deblur", {"block": "rep"},
              "CompactDeblur with re-parameterisable blocks for training; folds into `compact`", 0),
    ModelSpec("compact_repx", "compact:CompactDeblur", "deblur", {"block": "repx"},
              "compact_rep plus a 2x expand branch (1x1 up, 3x3 down) in every block conv; folds into `compact`", 0),
    ModelSpec("compact_deep", "compact:CompactDeblur", "deblur", {"deep": 256},
              "CompactDeblur with a fourth, 1/16 level (256 channels): twice the receptive field, ~38 GMAC at 720p", 0),
    # two real alternatives at today's budget (issue #12's width vs depth; bench/results/arch_budget.json)
    ModelSpec("compact_low", "compact:CompactDeblur", "deblur", {"blocks": (0, 1, 4, 1, 0)},
              "CompactDeblur with the 1/2-level blocks moved to 1/8: the same 29 GMAC, 2.3x the parameters", 0),
    ModelSpec("compact_low_rep", "compact:CompactDeblur", "deblur", {"blocks": (0, 1, 4, 1, 0), "block": "rep"},
              "compact_low with re-parameterisable blocks for training; folds into `compact_low`", 0),
    ModelSpec("compact_wide", "compact:CompactDeblur", "deblur", {"channels": (36, 72, 144)},
              "CompactDeblur 36/72/144 channels wide (~36 GMAC at 720p)", 0),
    ModelSpec("compact_wide_rep", "compact:CompactDeblur", "deblur", {"channels": (36, 72, 144), "block": "rep"},
              "compact_wide with re-parameterisable blocks for training; folds into `compact_wide`", 0),
    ModelSpec("compact_gated", "compact:CompactDeblur", "deblur", {"block": "gated"},
              "CompactDeblur with NAFNet-style gated blocks (SimpleGate + channel attention)", 0),
    ModelSpec("motion", "motion:MotionNet", "motion", {}, "NeurMAP motion net (OffsetNet)"),
    ModelSpec("discriminator", "discriminator:MultiscaleDiscriminator", "discriminator", {},
              "2-scale PatchGAN natural-image discriminator"),
]}


def int8_float_budget(name: str) -> int:
    """The measured default of convs kept in float for INT8 (:attr:`ModelSpec.int8_float_convs`); 12 for a net
    the registry does not know."""
    return MODELS[name].int8_float_convs if name in MODELS else 12


def build_network(name: str) -> nn.Module:
    """The bare network (native value range, no padding wrapper), Xavier-initialised as SPEC says."""
    if name not in MODELS:
        import difflib
        near = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise NeurmapError(f"unknown network {name!r}{hint}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    module, cls = spec.target.split(":")
    net = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(**spec.kwargs)
    xavier_init(net)
    return net


def xavier_init(net: nn.Module) -> nn.Module:
    """Xavier-normal (gain 1) weights and zero biases on every conv, as the official init_net."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net
