"""NeurMAP training loop: config, devices (CPU / CUDA+AMP / torchrun DDP), checkpoints, exact resume.

Every random draw is a function of (seed, iteration, rank), and checkpoints hold all state that changes
(three nets, three optimisers and schedulers, μ_sharp pool, grad scaler, RNG states, iteration), so a run
that stops and resumes takes bit-for-bit the same path as one that never stopped.

The data (sources from the config, batches as a function of the iteration) lives in :mod:`.train_data`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import atomic_write, load_weights, save_weights
from .errors import CheckpointError, ConfigError, NeurmapError, from_known_keys
from .models import build_network
from .models.compact import FOLDABLE
from .models.wrapper import DeblurModel, MotionModel
from .step import LossWeights, NeurMAPStep
# the data part, re-exported: ``from neurmap.core.train import BatchSampler, build_source`` keeps working
from .train_data import BatchSampler, _Batches, _image, _one_thread, _seed_epoch, build_source  # noqa: F401

CKPT_GLOB = "ckpt_*.pt"


@dataclass
class TrainConfig:
    """Everything a run needs; defaults are SPEC's (official semi-supervised synthetic config)."""

    backbone: str = "dmphn_1_2_4_8"
    init_weights: str | None = None          # checkpoint, official DMPHN folder or shipped name
    init_motion: str | None = None           # a checkpoint carrying a motion net
    # > 0: M's closed-form blur prior (models/blur_prior.py) on at this length scale; an M that had it off starts
    # with a zeroed output conv, as exactly the prior, and learns a correction to it. 0: off. null: as loaded
    motion_prior: float | None = None
    output_dir: str = "runs/neurmap"
    iterations: int = 1000                   # deblur-net (G) iterations
    warmup_iterations: int = 0               # before them: M and D steps only, G frozen (see Trainer)
    batch_paired: int = 2
    batch_unpaired: int = 2
    crop: int = 256
    lr_G: float = 5e-5
    lr_M: float = 1e-4
    lr_D: float = 1e-4
    grad_clip: float | str | None = "auto"   # G/M gradient-norm clip; "auto": 0.01 for MPRNet, off otherwise
    official_compat: str | bool = False      # off | synthetic | real: the official iteration of that config (step.py)
    loss_weights: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # paired / unpaired_blurry / unpaired_sharp source specs
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    image_every: int = 200
    seed: int = 0
    device: str = "auto"                     # auto | cpu | cuda
    precision: str = "auto"                  # auto | fp32 | bf16 | fp16
    channels_last: bool = True              # measured 1.2x per iteration on CPU (bench/train_step.py)
    tensorboard: bool = True
    paired_only: bool = False                # baseline: content loss on the paired data only
    motion_only: bool = False                # only M trains, on motion targets (NeurMAPStep.motion_only)
    lr_schedule: str = "linear"              # G's lr (motion_only: M's): linear decay to 0, or cosine to lr·lr_min_ratio
    lr_warmup: int = 0                       # G iterations (M's under motion_only) of linear lr warm-up from 0
    lr_min_ratio: float = 0.0                # cosine floor, as a fraction of the lr
    ema_decay: float = 0.0                   # > 0: keep an EMA of G's (motion_only: M's) weights; final holds it
    workers: int = 0                         # > 0: batches synthesized in that many worker processes
    # cpu: workers make the paired pairs whole; cuda: workers cut windows and draw parameters, the main process
    # renders the blur in batch on the training device (data/device_synthesis.py; with device=cpu the same torch
    # code on the CPU); auto: cuda when training on a GPU
    synthesis_device: str = "cpu"
    teacher: str | None = None               # a stronger deblur net (weights); loss_weights.G_teacher > 0 uses it

    def __post_init__(self) -> None:
        # The official code clips G's and M's gradient norm at 0.01 only for MPRNet; DMPHN (G's norm ~500 at the
        # start) and the others train unclipped there, so "auto" follows the backbone (SPEC: where we differ).
        if self.grad_clip == "auto":
            self.grad_clip = 0.01 if str(self.backbone).startswith("mprnet") else None
        elif isinstance(self.grad_clip, str):
            raise ConfigError(f"grad_clip={self.grad_clip!r}: give a positive number, null (off) or auto "
                              "(0.01 for MPRNet, off for the others, as the official code does)")
        # official_compat reproduces the official iteration (NeurMAPStep's ``official``); off = ours
        oc = "off" if self.official_compat in (False, None) else self.official_compat
        if oc not in ("off", "synthetic", "real"):
            raise ConfigError(f"official_compat={self.official_compat!r}: use off, synthetic (D's real images all "
                              "sharp, as config_semi_syn.yaml) or real (sharp/blurry mix, the real-blur configs)")
        self.official_compat = oc
        if self.synthesis_device not in ("cpu", "auto", "cuda"):
            raise ConfigError(f"synthesis_device={self.synthesis_device!r}: use cpu (worker processes), cuda "
                              "(rendered on the training device) or auto (cuda when training on a GPU)")
        if self.motion_prior is not None and not (isinstance(self.motion_prior, (int, float))
                                                  and 0 <= self.motion_prior <= 4):
            raise ConfigError(f"motion_prior={self.motion_prior!r}: give the prior's length scale (a number in "
                              "(0, 4], e.g. 0.7), 0 to turn it off, or null to keep the loaded motion net's")
        if self.paired_only and self.motion_only:
            raise ConfigError("paired_only and motion_only exclude each other: paired_only trains only G, "
                              "motion_only only M; set one of them")
        official_clip = 0.01 if str(self.backbone).startswith("mprnet") else None
        if oc != "off" and self.grad_clip != official_clip:
            raise ConfigError(f"official_compat={oc} clips as the official code does ({official_clip} for "
                              f"{self.backbone}), not grad_clip={self.grad_clip}; set grad_clip: auto")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        cfg = from_known_keys(cls, d, "config keys")
        LossWeights.from_dict(cfg.loss_weights)  # validate early
        return cfg

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A YAML config (or a run's ``config.json``, read as JSON) plus ``key=value`` overrides (dotted keys reach
    into dicts, values parsed as YAML); every value is checked against :class:`TrainConfig`'s field types."""
    import yaml

    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise NeurmapError(f"config {p} not found; start from configs/neurmap_gopro.yaml")
        # JSON is not YAML 1.1 for numbers: PyYAML reads json.dumps(5e-5) == "5e-05" as a string
        if p.suffix.lower() == ".json":
            try:
                raw = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"config {p} is not valid JSON ({e}); pass the original YAML config too: "
                                  "neurmap train CONFIG --resume RUN_DIR") from None
        else:
            try:
                raw = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                raise NeurmapError(f"config {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {p} holds a {type(raw).__name__}, not key: value settings; "
                              "start from configs/neurmap_gopro.yaml")
    for item in overrides:
        if "=" not in item:
            raise NeurmapError(f"override {item!r} is not key=value (e.g. iterations=200 or loss_weights.G_reblur=10)")
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a group of settings; drop the '.' part")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[leaf] = value                      # kept as text; the type check below names the key
    return TrainConfig.from_dict(raw)


def lr_factor(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """G's lr multiplier at step i: ``lr_warmup`` linear steps up, then linear decay to 0 or cosine to
    ``lr_min_ratio``."""
    import math

    if cfg.lr_schedule not in ("linear", "cosine"):
        raise NeurmapError(f"lr_schedule {cfg.lr_schedule!r} unknown; use linear or cosine")
    warm, floor = max(int(cfg.lr_warmup), 0), float(cfg.lr_min_ratio)

    def f(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        t = min(max((i - warm) / max(total - warm, 1), 0.0), 1.0)
        if cfg.lr_schedule == "linear":
            return 1.0 - t
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return f


# --- devices -----------------------------------------------------------------------------------------

@dataclass
class Runtime:
    device: torch.device
    rank: int
    world: int
    autocast: Callable
    scaler: torch.amp.GradScaler | None
    precision: str


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick device and precision; join a torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise NeurmapError("device=cuda was asked for but no CUDA GPU is visible; use device=cpu or auto")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if use_cuda else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise NeurmapError(f"precision {precision!r} unknown; use auto, fp32, bf16 or fp16")
    if precision == "fp16" and not use_cuda:
        raise NeurmapError("fp16 training needs a CUDA GPU; on CPU use precision=bf16 (if the CPU has it) or fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return Runtime(device, rank, world, autocast, scaler, precision)


# --- checkpoints -------------------------------------------------------------------------------------

def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def save_checkpoint(run_dir: Path, it: int, step: NeurMAPStep, scheds: list, cfg: TrainConfig, keep: int) -> Path:
    """All training state at iteration ``it``, written atomically; older ones beyond ``keep`` removed."""
    state = {"iteration": it, "config": cfg.as_dict(),
             "G": _unwrap(step.G).state_dict(), "M": _unwrap(step.M).state_dict(), "D": _unwrap(step.D).state_dict(),
             "opt_G": step.opt_G.state_dict(), "opt_M": step.opt_M.state_dict(), "opt_D": step.opt_D.state_dict(),
             "sched": [s.state_dict() for s in scheds], "pool": step.pool.state_dict(),
             "scaler": step.scaler.state_dict() if step.scaler is not None else None,
             "ema": step.ema.state_dict() if getattr(step, "ema", None) is not None else None,
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    path = atomic_write(run_dir / f"ckpt_{it:07d}.pt", lambda tmp: torch.save(state, tmp))
    for old in sorted(run_dir.glob(CKPT_GLOB))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: Path, log: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """Newest checkpoint that loads; a corrupt or truncated one is reported and the previous one used."""
    for path in sorted(run_dir.glob(CKPT_GLOB), reverse=True):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, bad pickle opcodes, ...
            log(f"checkpoint {path.name} is unreadable ({str(e).splitlines()[0][:80]}); trying the previous one")
    return None


# --- the loop ----------------------------------------------------------------------------------------

def build_nets(cfg: TrainConfig) -> tuple[DeblurModel, MotionModel, nn.Module]:
    """G from init_weights (or fresh), M from init_motion (or fresh), D fresh — all on CPU."""
    if cfg.init_weights:
        G, meta = load_weights(cfg.init_weights)
        if meta["architecture"] != cfg.backbone:
            net = build_network(cfg.backbone)
            if not (hasattr(net, "grow_from") and net.grow_from(G.net)):
                raise NeurmapError(f"init_weights hold a {meta['architecture']} but backbone is {cfg.backbone}; "
                                   "set backbone to match (or to a deeper variant of the same net, which grows "
                                   "from it, e.g. compact -> compact_deep)")
            G = DeblurModel(net, G.input_range, cfg.backbone)   # starts as exactly the smaller net
        G.train()
    else:
        net = build_network(cfg.backbone)
        if hasattr(net, "init_identity"):    # compact nets start as the identity (see CompactDeblur)
            net.init_identity()
        G = DeblurModel(net, "0,1", cfg.backbone)
    if cfg.init_motion:
        from .checkpoint import load_motion
        M = load_motion(cfg.init_motion).train()
    else:
        M = MotionModel(build_network("motion"))
    if cfg.motion_prior is not None:
        net = M.net
        if cfg.motion_prior > 0 and float(net.prior_scale) == 0:
            nn.init.zeros_(net.conv_out_0.weight)       # M = the prior exactly; the net learns a correction to it
            nn.init.zeros_(net.conv_out_0.bias)
        net.prior_scale.fill_(float(cfg.motion_prior))
    return G, M, build_network("discriminator")


def inference_model(G: DeblurModel) -> DeblurModel:
    """What gets saved: re-parameterised training blocks folded into plain convs (``compact_rep`` is
    saved as ``compact``, ``compact_low_rep`` as ``compact_low``, ``compact_repx`` as ``compact``: loadable
    and exportable like any other compact net)."""
    if getattr(G.net, "block", None) in FOLDABLE:
        plain = G.name.rsplit("_rep", 1)[0] if "_rep" in G.name else "compact"
        return DeblurModel(G.net.fold(), G.input_range, plain)
    return G


class Trainer:
    """Runs a NeurMAP training from a config; ``resume`` continues a run directory exactly."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, log: Callable[[str], None] = print) -> None:
        self.cfg, self.log = cfg, log
        self.rt = setup_runtime(cfg)
        self.run_dir = Path(resume) if resume else Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)
        G, M, Dn = build_nets(cfg)
        nets = [n.to(self.rt.device) for n in (G, M, Dn)]
        if cfg.channels_last:
            nets = [n.to(memory_format=torch.channels_last) for n in nets]
        if self.rt.world > 1:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            nets = [nn.parallel.DistributedDataParallel(n, device_ids=ids) for n in nets]
        self.step = NeurMAPStep(*nets, weights=LossWeights.from_dict(cfg.loss_weights), lr_G=cfg.lr_G,
                                lr_M=cfg.lr_M, lr_D=cfg.lr_D, grad_clip=cfg.grad_clip,
                                autocast=self.rt.autocast, scaler=self.rt.scaler,
                                official=None if cfg.official_compat == "off" else cfg.official_compat)
        # each net decays linearly to 0 at the end on its own lr; G's schedule counts only its own steps.
        # motion_only: M is the net that trains, so it takes G's schedule keys (lr_schedule, lr_warmup, ...)
        g_total, md_total = max(cfg.iterations, 1), max(self.total_iterations, 1)
        linear = lambda i: max(0.0, 1.0 - i / md_total)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(self.step.opt_G, lr_factor(cfg, g_total))]
        self.scheds += [torch.optim.lr_scheduler.LambdaLR(self.step.opt_M, lr_factor(cfg, md_total)
                                                          if cfg.motion_only else linear),
                        torch.optim.lr_scheduler.LambdaLR(self.step.opt_D, linear)]
        self.step.ema = None
        if cfg.ema_decay > 0:     # averaged weights generalise better than the last iterate (NAFNet, BasicSR)
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.step.ema = AveragedModel(self._trained_net(), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                                          use_buffers=True)
        self.teacher = None
        if cfg.teacher:
            self.teacher = load_weights(cfg.teacher)[0].to(self.rt.device).eval().requires_grad_(False)
        self.sampler = BatchSampler(cfg, self.rt.rank, self.rt.world, device=self.rt.device)
        self.start = 0
        if resume:
            found = latest_checkpoint(self.run_dir, log)
            if found is None:
                raise CheckpointError(f"no readable checkpoint in {self.run_dir}; start without --resume")
            path, state = found
            self._restore(state)
            log(f"resumed {path} at iteration {self.start}")

    def _restore(self, s: dict) -> None:
        _unwrap(self.step.G).load_state_dict(s["G"])
        _unwrap(self.step.M).load_state_dict(s["M"])
        _unwrap(self.step.D).load_state_dict(s["D"])
        for name in ("opt_G", "opt_M", "opt_D"):
            getattr(self.step, name).load_state_dict(s[name])
        for sch, st in zip(self.scheds, s["sched"]):
            sch.load_state_dict(st)
        self.step.pool.load_state_dict(s["pool"])
        if self.step.scaler is not None and s.get("scaler"):
            self.step.scaler.load_state_dict(s["scaler"])
        if self.step.ema is not None and s.get("ema") is not None:
            self.step.ema.load_state_dict(s["ema"])
        torch.set_rng_state(s["rng_cpu"])
        if s.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng_cuda"])
        self.start = int(s["iteration"])

    @property
    def is_main(self) -> bool:
        return self.rt.rank == 0

    def _trained_net(self) -> nn.Module:
        """The net whose EMA is kept: M under motion_only, else G."""
        return _unwrap(self.step.M if self.cfg.motion_only else self.step.G)

    @property
    def total_iterations(self) -> int:
        """Warm-up (M and D only) + G iterations; the paired-only baseline has no M or D to warm up.

        Why a warm-up: a freshly initialised M predicts almost no motion, so m_rel ≈ 0, R(Ŝ, 0) = Ŝ and the
        reblur term asks for Ŝ = B (undo the deblurring); a fresh D likewise judges nothing useful yet.
        """
        return self.cfg.iterations + (0 if self.cfg.paired_only or self.cfg.motion_only else self.cfg.warmup_iterations)

    def iterations(self) -> Iterator[tuple[int, dict[str, float]]]:
        """Run to ``total_iterations``, yielding (iteration, losses, batch); checkpoints as configured."""
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(cfg.as_dict(), indent=2)       # atomically: --resume reads it back
            atomic_write(self.run_dir / "config.json", lambda t: Path(t).write_text(text))
        dev = self.rt.device
        total, warmup = self.total_iterations, self.total_iterations - cfg.iterations
        batches: Any = (self.sampler.batch(it) for it in range(self.start, total))
        if cfg.workers > 0 and total > self.start:
            batches = torch.utils.data.DataLoader(_Batches(self.sampler, self.start, total), batch_size=None,
                                                  num_workers=cfg.workers, worker_init_fn=_one_thread,
                                                  prefetch_factor=4, persistent_workers=False)
        for it, cpu_batch in zip(range(self.start, total), batches):
            batch = self.sampler.to_device(cpu_batch, dev)
            if cfg.channels_last:
                batch = [b.contiguous(memory_format=torch.channels_last) for b in batch]
            named = dict(zip(self.sampler.names, batch))
            if cfg.motion_only:
                losses, stepped = self.step.motion_only(**named), self.scheds[1:2]
            elif cfg.paired_only:
                target = None
                if self.teacher is not None:
                    with torch.no_grad(), self.rt.autocast():
                        target = self.teacher(batch[0]).float().clamp(0, 1)
                losses, stepped = self.step.content_only(*batch[:2], teacher_out=target), self.scheds[:1]
            elif it < warmup:
                losses, stepped = self.step(**named, update_G=False), self.scheds[1:]   # G frozen
            else:
                losses, stepped = self.step(**named), self.scheds
            for s in stepped:
                s.step()
            if self.step.ema is not None and (cfg.paired_only or it >= warmup):
                self.step.ema.update_parameters(self._trained_net())
            done = it + 1
            if self.is_main and (done % cfg.checkpoint_every == 0 or done == total):
                save_checkpoint(self.run_dir, done, self.step, self.scheds, cfg, cfg.keep_checkpoints)
            yield done, {k: float(v) for k, v in losses.items()}, batch
        if self.is_main:
            ema = self.step.ema.module if self.step.ema is not None else None
            G, M = _unwrap(self.step.G), _unwrap(self.step.M)
            if cfg.motion_only:     # G as init_weights gave it; M trained
                M = ema if ema is not None else M
            else:
                G = ema if ema is not None else G
            save_weights(self.run_dir / "final.safetensors", inference_model(G), M,
                         provenance={"trained_by": "neurmap train", "iterations": cfg.iterations,
                                     "trained": "motion net" if cfg.motion_only else "deblur net",
                                     "weights": "ema" if ema is not None else "last",
                                     "config": cfg.as_dict()})

    def visuals(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """One image row per unpaired sample: blurry | deblurred | reblurred | motion (flow colour wheel)."""
        from .flow_motion import flow_to_color
        from .reblur import canonical_motion, reblur
        G, M = _unwrap(self.step.G), _unwrap(self.step.M)
        names = self.sampler.names
        with torch.no_grad():
            b = batch[names.index("unpaired_blurry") if "unpaired_blurry" in names else 0][:2].float()
            s = G(b).clamp(0, 1)
            m_rel = canonical_motion(M(b)) - canonical_motion(M(s))
            rb = reblur(s, m_rel).clamp(0, 1)
        rows = [torch.cat((b[i], s[i], rb[i], flow_to_color(m_rel[i])), dim=-1) for i in range(b.shape[0])]
        return torch.cat(rows, dim=-2)


def run_training(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> Path:
    """The ``neurmap train`` body: loop, progress bar, TensorBoard, stop cleanly on non-finite losses."""
    trainer = Trainer(cfg, resume)
    writer = None
    if trainer.is_main and cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(trainer.run_dir / "tb"))
        except ImportError:
            print("tensorboard is not installed (pip install 'neurmap-edge[tensorboard]'); logging to log.jsonl only")
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    cols = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}")]
    show = progress and trainer.is_main
    log_path = trainer.run_dir / "log.jsonl"
    t0, n0 = time.perf_counter(), trainer.start
    with Progress(*cols, disable=not show, transient=False) as bar:
        task = bar.add_task("train", total=trainer.total_iterations, completed=trainer.start, speed="", losses="")
        try:
            for it, losses, batch in trainer.iterations():
                rate = (it - n0) / max(time.perf_counter() - t0, 1e-9)
                key = {k: losses[k] for k in ("G_total", "M_total", "D") if k in losses}
                bar.update(task, completed=it, speed=f"{rate:.2f} it/s",
                           losses=" ".join(f"{k}={v:.3g}" for k, v in key.items()))
                if trainer.is_main and (it % cfg.log_every == 0 or it == trainer.total_iterations):
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"iteration": it, **losses}) + "\n")
                    if writer is not None:
                        for k, v in losses.items():
                            writer.add_scalar(f"loss/{k}", v, it)
                        writer.add_scalar("lr/G", trainer.scheds[0].get_last_lr()[0], it)
                if writer is not None and it % cfg.image_every == 0:
                    writer.add_image("blurry|deblurred|reblurred|motion", trainer.visuals(batch), it)
        except FloatingPointError as e:
            raise FloatingPointError(f"{e}. Training stopped; the last good state is the newest checkpoint in "
                                     f"{trainer.run_dir} (resume with --resume {trainer.run_dir})") from None
        finally:
            if writer is not None:
                writer.close()
    return trainer.run_dir
