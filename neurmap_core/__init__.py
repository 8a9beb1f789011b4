"""neurmap.core: the NeurMAP networks, reblur module, losses, data, training and evaluation.

Public API::

    from neurmap.core import build_model, load_weights, reblur
    model = build_model("dmphn_1_2_4_8")          # fresh, [0, 1] in / out, any H x W
    model, meta = load_weights("default")         # checkpoint file, official DMPHN folder or shipped name
    blurry = reblur(sharp, motion)                # motion (B, 2, H, W) = (dy, dx) in units of 20 px
"""
from __future__ import annotations

from torch import nn

from .checkpoint import load_motion, load_weights, save_weights
from .errors import CheckpointError, InputError, NeurmapError
from .models import MODELS, build_network
from .models.wrapper import DeblurModel, MotionModel
from .reblur import canonical_motion, reblur


def build_model(name: str) -> nn.Module:
    """A freshly initialised network by name: deblur nets and the motion net come wrapped to take
    [0, 1] images of any size; the discriminator comes bare."""
    net = build_network(name)
    role = MODELS[name].role
    if role == "deblur":
        return DeblurModel(net, "0,1", name)
    if role == "motion":
        return MotionModel(net)
    return net


__all__ = ["build_model", "load_weights", "load_motion", "save_weights", "reblur", "canonical_motion",
           "DeblurModel", "MotionModel", "MODELS", "NeurmapError", "InputError", "CheckpointError"]
