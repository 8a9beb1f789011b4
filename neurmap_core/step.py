"""One NeurMAP training iteration: the motion-net step, the discriminator step, the deblur-net step.

The three networks take turns, each with its own Adam optimiser, as in the official code (M, then D,
then G). Every network is run on its whole batch in one call (B, Ŝ and S stacked on the batch axis), and
networks that a step must not change are frozen for that step, so gradients flow only where SPEC's sg[·]
allows.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import losses as L
from .errors import ConfigError, from_known_keys
from .reblur import canonical_motion, reblur


@dataclass
class LossWeights:
    """λ's of SPEC; defaults = the official semi-supervised synthetic config."""

    G_content: float = 100.0
    G_reblur: float = 100.0
    G_f_sharp: float = 0.5
    G_Itv: float = 0.0
    G_global: float = 1.0
    M_reblur: float = 1.0
    M_tv: float = 0.002
    M_sharp: float = 0.002
    M_blur: float = 0.001
    M_f_sharp: float = 0.001
    M_never_blurrier: float = 1.0
    G_fft: float = 0.0           # ours: frequency L1 on the paired half (paired-only training)
    G_teacher: float = 0.0       # ours: L1 to a teacher net's output on the paired blurry inputs
    # ours (issue #13), in M's step beside SPEC's terms; 0 = SPEC's step unchanged:
    M_supervised: float = 0.0    # sign-invariant L1(M(B_P), known motion) on pairs that carry one (photos, gopro240)
    M_video: float = 0.0         # sign-invariant L1(M(B_U), flow-derived blur) on unpaired blurry video (video_flow)
    G_anchor: float = 0.0        # ours (#13), in G's step: B_U shrunk 4x must pass G unchanged (sharp_anchor_loss)
    G_reblur_flow: float = 0.0   # ours (#13), in G's step: ℓ_rb(R(Ŝ_U, m_flow), B_U) in linear light on unpaired
                                 # video, its flow-derived blur as absolute motion (as the stream path adapts)

    @classmethod
    def real_blur(cls) -> "LossWeights":
        """SPEC's real-blur config (use with lr_G 1e-5)."""
        return cls(G_reblur=10.0, G_Itv=1.0, M_tv=0.02)

    @classmethod
    def from_dict(cls, d: dict) -> "LossWeights":
        return from_known_keys(cls, d, "loss weights")

    def as_dict(self) -> dict:
        return asdict(self)


# mean |k/7| over the 15 taps: TV of the 15 tap-offset maps = this × TV of the full motion in pixels
_MEAN_ABS_TAP = sum(abs(k) / 7 for k in range(-7, 8)) / 15


def offsets_tv(m_rel: torch.Tensor) -> torch.Tensor:
    """TV of the reblur module's tap offsets (in pixels), the smoothness prior on M's motion."""
    return _MEAN_ABS_TAP * L.total_variation(20.0 * m_rel)


@contextlib.contextmanager
def frozen(*nets: nn.Module):
    """Parameters of ``nets`` take no gradient inside the block (their weights cannot change)."""
    saved = [(p, p.requires_grad) for n in nets for p in n.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


class NeurMAPStep:
    """Holds G, M, D, their optimisers and μ_sharp; :meth:`__call__` runs one iteration.

    ``grad_clip`` clips G's and M's gradient norm (``None`` disables it); the official code clips at 0.01 only
    for MPRNet, so ``TrainConfig.grad_clip="auto"`` picks 0.01 for MPRNet and ``None`` for DMPHN and the others.
    ``autocast`` is a context factory (e.g. ``lambda: torch.autocast("cuda", torch.bfloat16)``).

    ``official`` (``TrainConfig.official_compat``): ``None`` runs ours; ``"synthetic"`` or ``"real"`` runs the
    official ``DeblurNet.optimize()`` iteration of that config (SPEC, "Where the official code differs"):
    ℓ_rb with the official MS-SSIM in the official argument order (finite where it is NaN), D's real images
    all sharp (synthetic config) or the sharp/blurry mix (real), μ_sharp over an image pool of the last 50
    sharp motion maps, and M's lr taken from ``lr_D``. Ours stays the default where it is better founded:
    the standard per-image MS-SSIM, M on its own ``lr_M``; the mix for D and the batch pool are equivalent
    choices kept from before.
    """

    def __init__(self, G: nn.Module, M: nn.Module, D: nn.Module, weights: LossWeights | None = None,
                 lr_G: float = 5e-5, lr_M: float = 1e-4, lr_D: float = 1e-4, grad_clip: float | None = 0.01,
                 autocast=contextlib.nullcontext, scaler: torch.amp.GradScaler | None = None,
                 official: str | None = None) -> None:
        if official not in (None, "synthetic", "real"):
            raise ConfigError(f"official={official!r}: use None (ours), 'synthetic' or 'real' (the official config "
                              "whose iteration to reproduce)")
        self.official = official
        self.G, self.M, self.D = G, M, D
        self.w = weights or LossWeights()
        self.opt_G = torch.optim.Adam(G.parameters(), lr=lr_G, betas=(0.9, 0.999))
        self.opt_M = torch.optim.Adam(M.parameters(), lr=lr_D if official else lr_M, betas=(0.9, 0.999))
        self.opt_D = torch.optim.Adam(D.parameters(), lr=lr_D, betas=(0.9, 0.999))
        self.pool = L.SharpMotionImagePool(50) if official else L.SharpMotionPool(50)
        self.grad_clip, self.autocast, self.scaler = grad_clip, autocast, scaler

    def _motion(self, x: torch.Tensor) -> torch.Tensor:
        return canonical_motion(self.M(x).float())

    def _update(self, loss: torch.Tensor, opt: torch.optim.Optimizer, net: nn.Module, clip: bool) -> None:
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip and self.grad_clip:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            self.scaler.step(opt)
        else:
            loss.backward()
            if clip and self.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            opt.step()

    def __call__(self, paired_blurry: torch.Tensor, paired_sharp: torch.Tensor,
                 unpaired_blurry: torch.Tensor, unpaired_sharp: torch.Tensor,
                 update_G: bool = True, paired_motion: torch.Tensor | None = None,
                 unpaired_motion: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One iteration on a paired half (B_P, S_P) and an unpaired half (B_U, independent sharp S_U).

        ``update_G=False`` runs only the motion-net and discriminator steps (G frozen): the warm-up that
        lets a fresh M and D learn from the starting G before their gradients reach it.
        ``paired_motion`` (known blur of B_P) and ``unpaired_motion`` (flow-derived blur of B_U) feed the
        optional ``M_supervised`` / ``M_video`` terms; they are read only when their weight is > 0. A target
        image that is all NaN has no motion (an unpaired mix of video and other blur): its term skips it.
        """
        n_p = paired_blurry.shape[0]
        blurry = torch.cat((paired_blurry, unpaired_blurry))
        sharp = torch.cat((paired_sharp, unpaired_sharp))
        n = blurry.shape[0]
        out: dict[str, torch.Tensor] = {}

        with self.autocast(), torch.set_grad_enabled(update_G and torch.is_grad_enabled()):
            deblurred = self.G(blurry)                          # Ŝ, graph kept for G's step
        fake = deblurred.detach().float()

        # --- motion-net step (Ŝ detached; D untouched) -------------------------------------------
        with self.autocast():
            m_all = self._motion(torch.cat((blurry, fake, sharp)))
        m_b, m_f, m_s = m_all[:n], m_all[n:2 * n], m_all[2 * n:]
        m_rel = m_b - m_f
        b_hat = reblur(fake, m_rel)
        out["M_reblur"] = L.reblur_loss_official(b_hat, blurry) if self.official else L.reblur_loss(b_hat, blurry)
        out["M_tv"] = offsets_tv(m_rel)
        out["M_sharp"] = L.sharp_zero_motion_loss(m_s)
        out["M_blur"] = L.blurry_large_motion_loss(m_b)
        out["M_f_sharp"] = L.residual_blur_loss(m_f, m_b)
        out["M_never_blurrier"] = L.never_blurrier_loss(m_f, m_b)
        loss_M = sum(getattr(self.w, k) * out[k] for k in
                     ("M_reblur", "M_tv", "M_sharp", "M_blur", "M_f_sharp", "M_never_blurrier"))
        for key, target, rows in (("M_supervised", paired_motion, slice(0, n_p)),
                                  ("M_video", unpaired_motion, slice(n_p, n))):
            if getattr(self.w, key):
                t = self._target(key, target)
                valid = torch.isfinite(t).flatten(1).all(1)       # NaN rows: images without a motion target
                out[key] = L.sign_invariant_l1(m_b[rows], t.nan_to_num(0.0), valid)
                loss_M = loss_M + getattr(self.w, key) * out[key]
        out["M_total"] = loss_M
        self._check_finite(out, "motion net")
        self._update(loss_M, self.opt_M, self.M, clip=True)
        self.pool.update(m_s)

        # --- discriminator step: Ŝ is fake; half sharp, half blurry images are real ---------------
        # (the official synthetic config: all sharp images are real)
        real = sharp if self.official == "synthetic" else torch.cat((sharp[0::2], blurry[1::2]))
        with self.autocast():
            d_out = self.D(torch.cat((fake, real)))
        out["D"] = L.discriminator_loss([d[:n].float() for d in d_out], [d[n:].float() for d in d_out])
        self._check_finite(out, "discriminator")
        self._update(out["D"], self.opt_D, self.D, clip=False)
        if not update_G:
            if self.scaler is not None:
                self.scaler.update()
            return {k: v.detach() for k, v in out.items()}

        # --- deblur-net step (M and D frozen; m_rel is a constant) --------------------------------
        with frozen(self.M, self.D):
            with self.autocast():
                m_f_g = self._motion(deblurred)
                with torch.no_grad():
                    m_b_g = self._motion(blurry)
                d_fake = self.D(deblurred)
            s_hat = deblurred.float()
            m_rel_g = (m_b_g - m_f_g).detach()
            out["G_content"] = L.content_loss(s_hat[:n_p], paired_sharp)
            b_hat = reblur(s_hat[n_p:], m_rel_g[n_p:])
            out["G_reblur"] = (L.reblur_loss_official(unpaired_blurry, b_hat) if self.official
                               else L.reblur_loss(b_hat, unpaired_blurry))
            out["G_f_sharp"] = L.sharpness_prior_loss(m_f_g, self.pool.mean(blurry.device))
            out["G_Itv"] = L.total_variation(s_hat[n_p:])
            out["G_global"] = L.generator_adversarial_loss([d.float() for d in d_fake])
            loss_G = sum(getattr(self.w, k) * out[k] for k in
                         ("G_content", "G_reblur", "G_f_sharp", "G_Itv", "G_global"))
            if self.w.G_reblur_flow:
                t = self._target("G_reblur_flow", unpaired_motion)
                valid = torch.isfinite(t).flatten(1).all(1)      # video items only: the others carry no flow
                out["G_reblur_flow"] = (L.reblur_objective(s_hat[n_p:][valid], t[valid], unpaired_blurry[valid])
                                        if valid.any() else s_hat.new_zeros(()))
                loss_G = loss_G + self.w.G_reblur_flow * out["G_reblur_flow"]
            if self.w.G_anchor:
                with self.autocast():
                    scale = max(2, L.anchor_shrink(min(unpaired_blurry.shape[-2:])))
                    out["G_anchor"] = L.sharp_anchor_loss(self.G, unpaired_blurry, scale)
                loss_G = loss_G + self.w.G_anchor * out["G_anchor"]
            out["G_total"] = loss_G
            self._check_finite(out, "deblur net")
            self._update(loss_G, self.opt_G, self.G, clip=True)
        if self.scaler is not None:
            self.scaler.update()
        return {k: v.detach() for k, v in out.items()}

    def content_only(self, paired_blurry: torch.Tensor, paired_sharp: torch.Tensor,
                     teacher_out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Paired-only training: G's content loss (+ the frequency and teacher terms when weighted);
        M and D untouched. ``teacher_out``: a stronger net's output on ``paired_blurry``."""
        with self.autocast():
            s_hat = self.G(paired_blurry).float()
        out = {"G_content": L.content_loss(s_hat, paired_sharp)}
        out["G_total"] = self.w.G_content * out["G_content"]
        if self.w.G_fft:
            out["G_fft"] = L.frequency_loss(s_hat, paired_sharp)
            out["G_total"] = out["G_total"] + self.w.G_fft * out["G_fft"]
        if self.w.G_teacher and teacher_out is not None:
            out["G_teacher"] = L.content_loss(s_hat, teacher_out.float())
            out["G_total"] = out["G_total"] + self.w.G_teacher * out["G_teacher"]
        self._check_finite(out, "deblur net")
        self._update(out["G_total"], self.opt_G, self.G, clip=True)
        if self.scaler is not None:
            self.scaler.update()
        return {k: v.detach() for k, v in out.items()}

    def motion_only(self, paired_blurry: torch.Tensor, paired_sharp: torch.Tensor, paired_motion: torch.Tensor,
                    unpaired_blurry: torch.Tensor | None = None,
                    unpaired_motion: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Motion-net-only training (``TrainConfig.motion_only``): M learns to read blur from targets, G and D
        untouched. ``M_supervised`` against the known motion of the pairs, SPEC's ``M_sharp`` on their sharp
        halves, ``M_video`` against the flow-derived blur of unpaired blurry video (when given); one M call."""
        n_p = paired_blurry.shape[0]
        parts = [paired_blurry, paired_sharp] + ([unpaired_blurry] if unpaired_blurry is not None else [])
        with self.autocast():
            m = self._motion(torch.cat(parts))
        out = {"M_supervised": L.sign_invariant_l1(m[:n_p], paired_motion.float()),
               "M_sharp": L.sharp_zero_motion_loss(m[n_p:2 * n_p])}
        if unpaired_blurry is not None:
            out["M_video"] = L.sign_invariant_l1(m[2 * n_p:], self._target("M_video", unpaired_motion))
        out["M_total"] = sum(getattr(self.w, k) * v for k, v in out.items())
        self._check_finite(out, "motion net")
        self._update(out["M_total"], self.opt_M, self.M, clip=True)
        if self.scaler is not None:
            self.scaler.update()
        return {k: v.detach() for k, v in out.items()}

    @staticmethod
    def _target(key: str, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise ConfigError(f"loss_weights.{key} > 0 needs its motion target: give "
                              + ("paired sources that carry motion (photos / gopro240 with motion: true, kernel)"
                                 if key == "M_supervised" else "an unpaired_blurry video_flow source")
                              + f", or set {key}: 0")
        return target.float()

    @staticmethod
    def _check_finite(values: dict[str, torch.Tensor], who: str) -> None:
        bad = [k for k, v in values.items() if not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(f"non-finite loss in the {who} step: {', '.join(bad)} — "
                                     "the step was not applied; lower the learning rate or check the input data")

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "M": self.M.state_dict(), "D": self.D.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_M": self.opt_M.state_dict(),
                "opt_D": self.opt_D.state_dict(), "pool": self.pool.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, s: dict) -> None:
        self.G.load_state_dict(s["G"])
        self.M.load_state_dict(s["M"])
        self.D.load_state_dict(s["D"])
        self.opt_G.load_state_dict(s["opt_G"])
        self.opt_M.load_state_dict(s["opt_M"])
        self.opt_D.load_state_dict(s["opt_D"])
        self.pool.load_state_dict(s["pool"])
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
