"""Side by side with PyTorch: the teacher step, the CURE step and the dispersion step of a config,
in cure_jax and in a PyTorch twin of the same model, in one run with interleaved rounds.

    python tools/bench_torch.py [--config default] [--rounds 5] [--steps 3] [--compile]
                                [--torch-threads 2,1] [--kinds teacher,cure,dispersion]
                                [--precisions float32,bfloat16] [--peak-tflops T]
                                [--set key=value ...]
    tools/bench_paper_size.sh r100      # IResNet-100 at 112 px, 128 + 128, both precisions

Needs PyTorch (`pip install -e ".[torch]"`), an optional extra: the package never imports it.

The twin is `tools/torch_iresnet.TorchIResNet` (arcface_torch's IResNet) built from the config's
`model.*`, with the JAX model's weights copied in (`iresnet_state_dict`, the `.pth` exporter's
mapping); its trainable parameter count must equal the JAX backbone's, or the tool stops. Its
variants: eager with channels-last tensors, with `--compile` the same under `torch.compile`
(the loss function with the backbone inside, so forward and backward are compiled; the
optimiser step stays eager, on `foreach` kernels), and with `--precisions ...,bfloat16` automatic
mixed precision (the backbone's forward under `torch.autocast` in bfloat16, its embeddings cast
to float32 for the losses; no loss scaling, which bfloat16 does not need) against cure_jax's
`model.dtype=bfloat16` (the same float32 weights, computing in bfloat16, float32 embeddings and
losses). The torch steps do the work of ours:

- teacher step: backbone forward and backward in training mode, the margin head of `model.head`
  (CosFace or ArcFace, with arcface_torch's straight-through margin when set), softmax
  cross-entropy, one update of `teacher.optimizer` (SGD with momentum and coupled weight decay
  by default), on `teacher.batch_size` images;
- CURE step: one student forward and backward over a forget and a retain batch together
  (`student.batch_size` each, batch norm as `unlearn.batch_norm` says), the six CURE terms
  against cached teacher embeddings with the pseudo-label head, one update of
  `student.optimizer` (AdamW by default) of backbone and head;
- dispersion step: the `dispersion` method's step: CURE's retain terms scaled by
  `dispersion.retain_weight` plus the dispersion term of `dispersion.kind` over P x K groups.

The losses are tools/torch_losses.py, written term for term from the JAX ones; without padding
masks (every row of these batches is real) and with the uniformity form assuming a same-group
pair in the batch (a P x K batch always has them). Before timing, both frameworks take two steps
from the same weights on the same inputs and the tool prints the largest loss difference, of the
total and of every term; it stops when a float32 first-step loss differs by more than 1e-4
(relative above 1, absolute below; 1e-2 on a GPU, where both sides multiply float32 in TF32). In
bfloat16 the two sides round differently by design: their differences are printed, not checked
(on the smoke config about 1e-2 relative). The torch twin returns to its first weights after
each check. Not mirrored on the torch side: the finiteness check on the updated
parameters that every JAX step returns (one reduction per array, small next to the backbone).

Timing: every round runs each step of each framework for one untimed step and `--steps` timed ones,
the frameworks in turn (their order reversed every other round), so that a load that comes and goes
on the machine reaches all of them alike. The table gives the median time per step over the rounds
(with its range), the median of the rounds' ratios cure_jax / torch at the same precision (above 1:
cure_jax is slower; the two times of a ratio saw the same load) and GFLOP/s, all from the FLOP
count of XLA's cost analysis of the compiled float32 JAX step (multiply and add counted
separately), so that the columns' GFLOP/s compare the same work; on a device whose dense bfloat16
peak is known (`BF16_PEAK_TFLOPS`, or `--peak-tflops`) also each column's share of it. Inputs are
random, one fixed batch per step, on one device: the torch twin runs where JAX runs (its CPU, or
CUDA when JAX's backend is a GPU), and each torch time ends with `torch.cuda.synchronize()` there.
`--torch-threads 2,1` times torch eager at each thread count in the same rounds (on a CPU): on a
machine where other work holds the cores, torch's OpenMP threads wait for one another at every
operator (`OMP_WAIT_POLICY=PASSIVE` in the environment softens it) and one thread can beat two,
while XLA's thread pool (all cores) suffers less. The batch norms' running statistics are those of
one batch (the student's frozen batch norm reads them); the learning rates follow the configured
schedules (100 steps per epoch).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import optim, teacher
from cure_jax.methods import cure
from cure_jax.methods.dispersion import dispersion_optim, without_forget_terms
from cure_jax.models.backbone import build_model, split_model
from cure_jax.models.convert.torch_state import iresnet_state_dict, variables_by_key

try:
    import torch
except ImportError:
    sys.exit("tools/bench_torch.py needs PyTorch, an optional extra: pip install -e '.[torch]'")

import torch_losses  # noqa: E402  (tools/, beside this script)
from torch_iresnet import TorchIResNet, count_trainable  # noqa: E402

STEPS_PER_EPOCH = 100  # for the schedules, as tools/bench_cure.py
# First-step losses, same weights, same inputs, float32 on both sides. On a GPU both frameworks
# multiply float32 in TF32 (XLA's default; torch is set to match below), whose 10-bit mantissa
# moves a loss by about 1e-3 of itself: a wrong term still moves it by far more.
PARITY_RTOL = {"cpu": 1e-4, "cuda": 1e-2}
CHANNELS_LAST = torch.channels_last
PRECISIONS = ("float32", "bfloat16")
# Dense bfloat16 peak (TFLOP/s, without sparsity) by JAX device kind, from NVIDIA's data sheets
# (SXM parts); `--peak-tflops` names it for any other device.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}


class Spec(NamedTuple):
    """One step kind: its JAX steps by precision (compiled step, state, batch) and its torch
    side."""

    name: str
    images: int
    jax: dict  # precision -> JaxStep
    torch: object

    @property
    def gflop(self) -> float:
        """XLA's FLOP count of the step (float32's where timed: the same work either way)."""
        return next(iter(self.jax.values())).gflop


class JaxStep:
    """The compiled JAX step with its (donated) state and fixed batch."""

    def __init__(self, step, state, batch):
        self.key = jax.random.key(0)
        start = time.perf_counter()
        self.compiled = step.lower(state, batch, self.key).compile()
        self.compile_s = time.perf_counter() - start
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        self.gflop = cost.get("flops", float("nan")) / 1e9
        self.state, self.batch = state, batch

    def __call__(self):
        self.state, metrics = self.compiled(self.state, self.batch, self.key)
        return metrics

    @staticmethod
    def losses(metrics) -> dict[str, float]:
        """{"loss", and each term by its torch name} as floats."""
        out = {"loss": float(metrics["loss"])}
        out.update({k[2:]: float(v) for k, v in metrics.items() if k.startswith("L_")})
        return out


class Device(NamedTuple):
    """Where the torch twin runs: the kind of device JAX runs on."""

    torch: str  # "cpu" or "cuda"

    def sync(self, _out=None) -> None:
        if self.torch == "cuda":
            torch.cuda.synchronize()

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.torch)


def pick_device() -> Device:
    """The torch device matching JAX's backend; stops when torch cannot follow it."""
    backend = jax.default_backend()
    if backend == "cpu":
        return Device("cpu")
    if backend == "gpu" and torch.cuda.is_available():
        # XLA multiplies float32 in TF32 on NVIDIA GPUs by default; cuDNN's convolutions do too,
        # torch's matrix products do not unless told: the same arithmetic on both sides.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return Device("cuda")
    sys.exit(f"JAX runs on {backend} ({jax.devices()[0].device_kind}) but this torch "
             f"{torch.__version__} cannot (CUDA available: {torch.cuda.is_available()}): install a "
             "torch build for that device, or run both on the CPU with JAX_PLATFORMS=cpu")


def bf16_peak_tflops(device_kind: str, given: float | None) -> float | None:
    """The dense bfloat16 peak of the device, `--peak-tflops` first; None where unknown."""
    if given is not None:
        return given
    return next((v for name, v in BF16_PEAK_TFLOPS.items() if name in device_kind), None)


class TorchTrainer:
    """A twin and its optimiser; `step(objective)` runs one training step of `objective` (eager or
    compiled, same parameters) with the learning rates of the JAX schedule."""

    def __init__(self, twin, head, optim_config, schedule, inputs, *, train_mode: bool):
        self.twin = twin.train(train_mode)
        backbone = [p for p in twin.parameters() if p.requires_grad]
        scale = optim_config.backbone_lr_scale
        groups = [{"params": backbone, "scale": scale}, {"params": [head], "scale": 1.0}]
        if optim_config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=0.0, foreach=True,
                                               weight_decay=optim_config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=optim_config.momentum,
                                             weight_decay=optim_config.weight_decay,
                                             foreach=True)
        # The schedule as numbers, read by index: an optax call per step would dispatch to JAX.
        self.lrs = np.asarray(jax.vmap(schedule)(jnp.arange(20_000)), np.float64)
        self.inputs, self.count = inputs, 0

    def snapshot(self):
        """The weights, optimiser state and step count, to `restore` later."""
        return (copy.deepcopy(self.twin.state_dict()),
                copy.deepcopy(self.optimizer.state_dict()),
                [p.detach().clone() for p in self.optimizer.param_groups[1]["params"]],
                self.count)

    def restore(self, snapshot) -> None:
        twin_state, optimizer_state, head, self.count = snapshot
        self.twin.load_state_dict(twin_state)
        self.optimizer.load_state_dict(optimizer_state)
        with torch.no_grad():
            for p, saved in zip(self.optimizer.param_groups[1]["params"], head, strict=True):
                p.copy_(saved)

    def step(self, objective):
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lrs[min(self.count, len(self.lrs) - 1)]) * group["scale"]
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms = objective(*self.inputs)
        loss.backward()
        self.optimizer.step()
        self.count += 1
        return loss.detach(), {k: v.detach() for k, v in terms.items()}


class TorchSide:
    """The torch variants of one step kind, sharing one trainer: "eager" (float32), "amp" (the
    backbone under `torch.autocast` in bfloat16, its embeddings and the losses in float32, as
    `model.dtype=bfloat16` does) and "compile" (eager's objective under `torch.compile`).

    `make_objective(backbone)` builds the step's objective around a backbone callable.
    """

    def __init__(self, trainer: TorchTrainer, make_objective, device: Device, *,
                 use_compile: bool, use_amp: bool):
        self.trainer = trainer
        twin = trainer.twin
        self.variants = {"eager": make_objective(twin)}
        if use_amp:
            def autocast_twin(x):
                with torch.autocast(device_type=device.torch, dtype=torch.bfloat16):
                    out = twin(x)
                return out.float()

            self.variants["amp"] = make_objective(autocast_twin)
        if use_compile:
            self.variants["compile"] = torch.compile(self.variants["eager"])

    def runner(self, variant: str, threads: int | None):
        objective = self.variants[variant]

        def run():
            if threads:
                torch.set_num_threads(threads)
            return self.trainer.step(objective)

        return run


def to_torch(nhwc: np.ndarray, device: Device) -> torch.Tensor:
    """NHWC images as an NCHW tensor in channels-last memory (the same bytes), on the device."""
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous(memory_format=CHANNELS_LAST)
    return device.put(nchw)


def make_twin(model_config, image_size: int, state: dict[str, np.ndarray], *,
              dropout: float, device: Device | None = None) -> TorchIResNet:
    twin = TorchIResNet(model_config.depth, width=model_config.width, input_size=image_size,
                        embedding_dim=model_config.embedding_dim, dropout=dropout)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                         strict=True)
    twin = twin.to(memory_format=CHANNELS_LAST)
    return twin.to(device.torch) if device else twin


class Setup(NamedTuple):
    """What every step kind starts from: the config, the model's graphs by precision (one set
    of float32 weights), the twin's weights, the torch device and the variants asked for."""

    config: object
    graphs: dict  # precision -> Graphs of the whole model
    params: object
    stats: object
    centres: np.ndarray
    twin_state: dict
    device: Device
    use_compile: bool
    use_amp: bool

    def copies(self):
        """Fresh copies of the parameters and statistics (every step donates its state)."""
        return jax.tree.map(jnp.copy, (self.params, self.stats))


def teacher_spec(setup: Setup, rng) -> Spec:
    config, device = setup.config, setup.device
    size, classes = config.data.image_size, config.data.num_identities
    batch = config.teacher.batch_size
    images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    tx = optim.make_optimizer(config.teacher, STEPS_PER_EPOCH, setup.params)  # its structure
    schedule = optim.lr_schedule(config.teacher, STEPS_PER_EPOCH)
    jax_batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    jax_steps = {}
    for precision, graphs in setup.graphs.items():
        step = teacher.make_train_step(graphs.train, tx, config.model, schedule)
        jax_steps[precision] = JaxStep(step, teacher.init_state(*setup.copies(), tx), jax_batch)

    twin = make_twin(config.model, size, setup.twin_state, dropout=config.model.dropout,
                     device=device)
    head = torch.nn.Parameter(device.put(torch.from_numpy(setup.centres)))
    m = config.model

    def make_objective(backbone):
        def objective(images_t, labels_t):
            cos = torch_losses.l2_normalize(backbone(images_t)) @ torch_losses.l2_normalize(head).T
            loss = torch_losses.margin_loss(cos, labels_t, kind=m.head, scale=m.scale,
                                            margin=m.margin, straight_through=m.straight_through)
            return loss, {}

        return objective

    trainer = TorchTrainer(twin, head, config.teacher, schedule,
                           (to_torch(images, device), device.put(torch.from_numpy(labels).long())),
                           train_mode=True)
    return Spec(f"teacher step (batch {batch}, {m.head}, {classes} classes)", batch, jax_steps,
                TorchSide(trainer, make_objective, device, use_compile=setup.use_compile,
                          use_amp=setup.use_amp))


def unlearn_spec(setup: Setup, rng, *, dispersion: bool) -> Spec:
    """The CURE step, or (`dispersion`) the `dispersion` method's step."""
    config, device = setup.config, setup.device
    size, dim = config.data.image_size, config.model.embedding_dim
    cure_config, optim_config = config.cure, config.student
    disp = config.dispersion if dispersion else None
    if dispersion:
        cure_config = without_forget_terms(config.cure, disp.retain_weight)
        optim_config = dispersion_optim(config.student, disp)
    n = optim_config.batch_size
    k_f, k_r = cure_config.forget_clusters, cure_config.retain_clusters

    def unit(rows):
        x = rng.normal(size=(rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    forget_images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    retain_images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    forget_target = rng.normal(size=(n, dim)).astype(np.float32)
    retain_target = rng.normal(size=(n, dim)).astype(np.float32)
    index = np.arange(n, dtype=np.int32)
    pseudo_labels = rng.integers(0, k_f, n).astype(np.int32)
    # P x K: images_per_group consecutive images share a group (dispersion's batches).
    groups = (index // (disp.images_per_group if disp else 4)).astype(np.int32)
    head, retain_centroids = unit(k_f), unit(k_r)
    batch = jax.tree.map(jnp.asarray, {
        "forget": {"image": forget_images, "target": forget_target, "index": index},
        "retain": {"image": retain_images, "target": retain_target, "index": index}})
    schedule = optim.lr_schedule(optim_config, STEPS_PER_EPOCH)

    jax_steps = {}
    for precision, graphs in setup.graphs.items():
        # The student's backbone, as unlearning starts from the teacher.
        backbone_graphs, backbone = teacher.Teacher(graphs, *setup.copies()).backbone()
        params = {"backbone": backbone.params, "head": jnp.asarray(head)}
        tx = optim.make_optimizer(optim_config, STEPS_PER_EPOCH,
                                  {"backbone": backbone.params, "head": jnp.zeros(())})
        state = cure.CureState(
            step=jnp.zeros((), jnp.int32), params=params, batch_stats=backbone.batch_stats,
            opt_state=tx.init(params), forget_centroids=jnp.asarray(head),
            pseudo_labels=jnp.asarray(pseudo_labels),
            retain_centroids=jnp.asarray(retain_centroids), groups=jnp.asarray(groups))
        step = cure.make_cure_step(backbone_graphs, tx, cure_config, schedule,
                                   batch_norm=config.unlearn.batch_norm, dispersion=disp)
        jax_steps[precision] = JaxStep(step, state, batch)

    twin = make_twin(config.model, size, setup.twin_state, dropout=0.0,  # none in unlearning
                     device=device)
    head_t = torch.nn.Parameter(device.put(torch.from_numpy(head)))
    pseudo_t = device.put(torch.from_numpy(pseudo_labels).long())
    groups_t = device.put(torch.from_numpy(groups).long())
    retain_centroids_t = device.put(torch.from_numpy(retain_centroids))
    c = cure_config
    weights = {name: getattr(c, f"w_{name}") for name in torch_losses.TERMS}
    use_disp = disp is not None and disp.weight != 0.0

    def make_objective(backbone):
        def objective(forget_x, retain_x, forget_t, retain_t, index_t):
            emb = backbone(torch.cat([forget_x, retain_x]))  # one pass: one set of statistics
            student_forget, student_retain = emb[:n], emb[n:]
            total, terms = torch_losses.cure_loss(
                weights, student_forget=student_forget, teacher_forget=forget_t,
                head_logits=torch_losses.l2_normalize(student_forget) @ head_t.T,
                pseudo_labels=pseudo_t[index_t], student_retain=student_retain,
                teacher_retain=retain_t, retain_centroids=retain_centroids_t,
                temperature_pl=c.temperature_pl, temperature_fd=c.temperature_fd,
                margin=c.margin, retain_mode=c.contrastive_retain,
                feature_match_on=c.feature_match_on)
            if use_disp:
                terms["disp"] = torch_losses.dispersion_loss(
                    student_forget, groups_t[index_t], kind=disp.kind, t=disp.uniformity_t)
                total = total + disp.weight * terms["disp"]
            return total, terms

        return objective

    inputs = (to_torch(forget_images, device), to_torch(retain_images, device),
              *(device.put(torch.from_numpy(a)) for a in (forget_target, retain_target)),
              device.put(torch.from_numpy(index).long()))
    trainer = TorchTrainer(twin, head_t, optim_config, schedule, inputs,
                           train_mode=config.unlearn.batch_norm == "train")
    name = (f"dispersion step ({disp.groups_per_batch} x {disp.images_per_group} forget, {n} "
            f"retain, {disp.kind})" if dispersion else f"CURE step ({n} forget + {n} retain)")
    return Spec(name, 2 * n, jax_steps,
                TorchSide(trainer, make_objective, device, use_compile=setup.use_compile,
                          use_amp=setup.use_amp))


def first_two_losses(spec: Spec, precision: str) -> tuple[list[dict], list[dict]]:
    """Two steps of each framework at `precision` from the same weights: their losses. Each
    JAX precision has its own state; the torch twin returns to its weights after its two."""
    jax_losses = [JaxStep.losses(spec.jax[precision]()) for _ in range(2)]
    trainer = spec.torch.trainer
    saved = trainer.snapshot()
    run = spec.torch.runner("eager" if precision == "float32" else "amp", None)
    torch_losses_ = []
    for _ in range(2):
        loss, terms = run()
        torch_losses_.append({"loss": float(loss), **{k: float(v) for k, v in terms.items()}})
    trainer.restore(saved)
    return jax_losses, torch_losses_


def check_parity(spec: Spec, precision: str = "float32") -> float:
    """Prints the loss differences of the first two steps and returns the largest relative
    difference of the first step's total and terms."""
    jax_losses, torch_losses_ = first_two_losses(spec, precision)
    first = [(k, jax_losses[0][k], torch_losses_[0][k]) for k in torch_losses_[0]]
    diffs = {k: abs(a - b) for k, a, b in first}
    # Relative to the value, absolute below 1: a term near 0 (a hinge) has no relative scale.
    worst_rel = max(abs(a - b) / max(abs(a), 1.0) for _, a, b in first)
    second = abs(jax_losses[1]["loss"] - torch_losses_[1]["loss"])
    print(f"parity, {spec.name}, {precision}: loss {jax_losses[0]['loss']:.6f} (cure_jax) vs "
          f"{torch_losses_[0]['loss']:.6f} (torch{' AMP' if precision != 'float32' else ''}); "
          f"max |diff| of the loss and terms, step 1: {max(diffs.values()):.2e} (relative "
          f"{worst_rel:.2e}); after one update, step 2: {second:.2e}")
    if len(diffs) > 1:
        print("  terms, step 1 |diff|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()
                                                     if k != "loss"))
    return worst_rel


def time_block(run, steps: int, sync) -> float:
    """Seconds per step of `steps` calls of `run`, after one untimed call."""
    sync(run())
    start = time.perf_counter()
    for _ in range(steps):
        out = run()
    sync(out)
    return (time.perf_counter() - start) / steps


def parity_count(model, twin_state, config) -> int:
    """Trainable parameters of the JAX backbone; stops unless the twin has as many."""
    _, params, _ = split_model(model.backbone)
    ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    twin = make_twin(config.model, config.data.image_size, twin_state, dropout=0.0)
    theirs = count_trainable(twin)
    if ours != theirs:
        sys.exit(f"parameter counts differ: cure_jax {ours:,}, torch twin {theirs:,}")
    return ours


def calibrate_batch_norm(model, config, rng, device: Device) -> None:
    """Sets every batch norm's running statistics of `model` (in place) to their values on one
    batch of images, as training leaves them: at a fresh network's unit statistics the frozen
    student's raw embeddings reach the thousands and feature matching the millions."""
    size = config.data.image_size
    twin = make_twin(config.model, size, iresnet_state_dict(model.backbone), dropout=0.0,
                     device=device)
    for module in twin.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, its statistics
    images = rng.uniform(-1, 1, (config.teacher.batch_size, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        twin.train()(to_torch(images, device))
    variables = variables_by_key(model.backbone)
    for key, tensor in twin.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            variables[key].set_value(jnp.asarray(tensor.cpu().numpy()))


def build_specs(config, kinds: list[str], precisions: list[str], device: Device, *,
                use_compile: bool) -> tuple[list[Spec], int]:
    if config.model.pretrained or config.model.dtype != "float32":
        sys.exit("the twin is an IResNet built from model.depth / model.width: model.pretrained "
                 "is not supported here, and bfloat16 is asked for with --precisions, not "
                 "model.dtype")
    size, classes = config.data.image_size, config.data.num_identities
    model = build_model(config.model, num_classes=classes, image_size=size, seed=0)
    rng = np.random.default_rng(0)
    calibrate_batch_norm(model, config, rng, device)
    twin_state = iresnet_state_dict(model.backbone)
    count = parity_count(model, twin_state, config)
    graphs, params, stats = split_model(model)
    all_graphs = {}
    for precision in precisions:
        if precision == "float32":
            all_graphs[precision] = graphs
        else:  # the same variables (float32 weights), computing in bfloat16
            other = dataclasses.replace(config.model, dtype=precision)
            all_graphs[precision] = split_model(build_model(
                other, num_classes=classes, image_size=size, seed=0))[0]
    setup = Setup(config, all_graphs, params, stats, np.array(model.head.centres[...]),
                  twin_state, device, use_compile, "bfloat16" in precisions)
    specs = []
    if "teacher" in kinds:
        specs.append(teacher_spec(setup, rng))
    for kind in ("cure", "dispersion"):
        if kind in kinds:
            specs.append(unlearn_spec(setup, rng, dispersion=kind == "dispersion"))
    return specs, count


class Column(NamedTuple):
    label: str
    framework: str  # "jax" or "torch"
    precision: str
    variant: str | None = None  # torch's: eager, amp, compile
    threads: int | None = None  # torch's intra-op threads (CPU only)


def make_columns(precisions, threads, device: Device, use_compile: bool) -> list[Column]:
    """cure_jax at each precision, then torch eager (float32) and AMP (bfloat16) at each thread
    count, then torch.compile; channels-last (CL) tensors throughout."""
    short = {"float32": "", "bfloat16": " bf16"}
    columns = [Column(f"cure_jax{short[p]}", "jax", p) for p in precisions]
    counts = threads if device.torch == "cpu" else [None]
    for n in counts:
        at = f" {n}t" if n else ""
        if "float32" in precisions:
            columns.append(Column(f"torch eager CL{at}", "torch", "float32", "eager", n))
        if "bfloat16" in precisions:
            columns.append(Column(f"torch AMP bf16 CL{at}", "torch", "bfloat16", "amp", n))
    if use_compile:
        at = f" {counts[0]}t" if counts[0] else ""
        columns.append(Column(f"torch.compile CL{at}", "torch", "float32", "compile", counts[0]))
    return columns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and column")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile (slow to compile on a small CPU)")
    parser.add_argument("--kinds", default="teacher,cure,dispersion")
    parser.add_argument("--precisions", default="float32",
                        help="comma-separated, of float32 (cure_jax and torch eager) and "
                             "bfloat16 (cure_jax with model.dtype=bfloat16 and torch AMP)")
    parser.add_argument("--torch-threads", default="",
                        help="on a CPU, torch's intra-op threads, a column per count for eager, "
                             "e.g. 2,1 (the first also for torch.compile; default: torch's own)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's dense bfloat16 peak, for the share-of-peak columns "
                             f"(known: {', '.join(BF16_PEAK_TFLOPS)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - {"teacher", "cure", "dispersion"}
    if unknown:
        sys.exit(f"unknown --kinds {sorted(unknown)}; valid: teacher, cure, dispersion")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - set(PRECISIONS):
        sys.exit(f"--precisions {args.precisions!r}: valid are {', '.join(PRECISIONS)}")
    precisions = [p for p in PRECISIONS if p in precisions]  # float32 first: FLOPs, parity
    device = pick_device()
    torch.manual_seed(0)
    threads = [int(t) for t in args.torch_threads.split(",") if t.strip()]
    threads = threads or [torch.get_num_threads()]
    torch.set_num_threads(threads[0])
    specs, count = build_specs(config, kinds, precisions, device, use_compile=args.compile)
    print(f"trainable backbone parameters: {count:,} in cure_jax and in the torch twin")
    if "float32" in precisions:
        worst = max(check_parity(spec) for spec in specs)
        if worst > PARITY_RTOL[device.torch]:
            sys.exit(f"first-step losses differ by {worst:.2e} relative (> "
                     f"{PARITY_RTOL[device.torch]}): the two sides do not compute the same thing")
    if "bfloat16" in precisions:  # rounding apart by design: shown, not checked
        for spec in specs:
            check_parity(spec, "bfloat16")

    columns = make_columns(precisions, threads, device, args.compile)
    compile_s = {}
    for spec in specs:  # torch.compile compiles on the first call: keep it out of the rounds
        if args.compile:
            start = time.perf_counter()
            spec.torch.runner("compile", threads[0])()
            device.sync()
            compile_s[spec.name] = time.perf_counter() - start
    times = {(spec.name, col.label): [] for spec in specs for col in columns}
    for r in range(args.rounds):
        order = columns if r % 2 == 0 else columns[::-1]
        for spec in specs:
            for col in order:
                if col.framework == "jax":
                    seconds = time_block(spec.jax[col.precision], args.steps,
                                         jax.block_until_ready)
                else:
                    seconds = time_block(spec.torch.runner(col.variant, col.threads), args.steps,
                                         device.sync)
                times[(spec.name, col.label)].append(seconds)
        print(f"round {r + 1}/{args.rounds}: " + "; ".join(
            f"{spec.name.split(' (')[0]} " + " / ".join(
                f"{1000 * times[(spec.name, c.label)][-1]:.0f}" for c in columns)
            for spec in specs) + " ms", flush=True)
    peak = bf16_peak_tflops(jax.devices()[0].device_kind, args.peak_tflops)
    print_table(args, config, specs, columns, times, compile_s, peak)


def print_table(args, config, specs, columns, times, compile_s, peak) -> None:
    """The markdown table: median ms per column, cure_jax / torch for each pair of the same
    precision, GFLOP/s (and with `peak` the share of the bfloat16 peak) per column."""
    median = {key: statistics.median(values) for key, values in times.items()}
    m = config.model
    device = jax.devices()[0]
    print(f"\nconfig {args.config} {' '.join(args.overrides)}: {m.depth} width {m.width}, "
          f"{config.data.image_size}x{config.data.image_size}, embedding {m.embedding_dim}; "
          f"jax {jax.__version__} on {len(jax.devices())} {device.platform} device(s) "
          f"({device.device_kind}), torch {torch.__version__}, Nt: N intra-op threads"
          + (f" (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})"
             if "OMP_WAIT_POLICY" in os.environ else "") + f"; {args.rounds} "
          f"rounds x {args.steps} steps; ms: median (min-max) over rounds; cure_jax / torch: "
          "median of the rounds' ratios"
          + (f"; % of peak: of {peak:g} TFLOP/s dense bfloat16" if peak else ""))
    pairs = [(a, b) for a in columns if a.framework == "jax"
             for b in columns if b.framework == "torch" and b.precision == a.precision]
    header = ([f"{c.label} ms" for c in columns]
              + [f"{a.label} / {b.label.removeprefix('torch ')}" for a, b in pairs]
              + [f"{c.label} GFLOP/s" for c in columns]
              + ([f"{c.label} % of peak" for c in columns] if peak else []))
    print("| step | images | GFLOP (XLA) | " + " | ".join(header) + " |")
    print("|---|---|---|" + "---|" * len(header))
    for spec in specs:
        cells = []
        for c in columns:
            values = [1000 * t for t in times[(spec.name, c.label)]]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        for a, b in pairs:
            ratio = statistics.median(x / y for x, y in zip(
                times[(spec.name, a.label)], times[(spec.name, b.label)], strict=True))
            cells.append(f"{ratio:.2f}x")
        rates = [spec.gflop / median[(spec.name, c.label)] for c in columns]
        cells += [f"{g:.0f}" for g in rates]
        if peak:
            cells += [f"{100 * g / (1000 * peak):.1f}" for g in rates]
        print(f"| {spec.name} | {spec.images} | {spec.gflop:.1f} | " + " | ".join(cells) + " |")
    print("\ncompile s: " + "; ".join(
        f"{spec.name.split(' (')[0]}: " + ", ".join(
            f"XLA {p} {step.compile_s:.1f}" for p, step in spec.jax.items())
        + (f", torch.compile {compile_s[spec.name]:.1f}" if spec.name in compile_s else "")
        for spec in specs))


if __name__ == "__main__":
    main()
