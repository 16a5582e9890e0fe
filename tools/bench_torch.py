"""Side by side with PyTorch: the teacher step, the CURE step and the dispersion step of a config,
in cure_jax and in a PyTorch twin of the same model, in one run with interleaved rounds.

    python tools/bench_torch.py [--config default] [--rounds 5] [--steps 3] [--compile]
                                [--torch-threads 2,1] [--kinds teacher,cure,dispersion]
                                [--set key=value ...]

Needs PyTorch (`pip install -e ".[torch]"`), an optional extra: the package never imports it.

The twin is `tools/torch_iresnet.TorchIResNet` (arcface_torch's IResNet) built from the config's
`model.*`, with the JAX model's weights copied in (`iresnet_state_dict`, the `.pth` exporter's
mapping); its trainable parameter count must equal the JAX backbone's, or the tool stops. Its
variants: eager with channels-last tensors, and with `--compile` the same under `torch.compile`
(the loss function with the backbone inside, so forward and backward are compiled; the
optimiser step stays eager, on `foreach` kernels). The torch steps do the work of ours:

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
total and of every term; it stops when a first-step loss differs by more than 1e-4 (relative
above 1, absolute below). Not mirrored on the torch side: the finiteness check on the updated
parameters that every JAX step returns (one reduction per array, small next to the backbone).

Timing: every round runs each step of each framework for one untimed step and `--steps` timed
ones, the frameworks in turn (their order reversed every other round), so that a load that comes
and goes on the machine reaches all of them alike. The table gives the median time per step over
the rounds (with its range), the median of the rounds' ratios cure_jax / torch (above 1:
cure_jax is slower; the two times of a ratio saw the same load) and GFLOP/s, all from the FLOP
count of XLA's cost analysis of the compiled JAX step (multiply and add counted separately), so
that the columns' GFLOP/s compare the same work. Inputs are random, one fixed batch per step, on
one device. `--torch-threads 2,1` times torch eager at each thread count in the same rounds: on a
machine where other work holds the cores, torch's OpenMP threads wait for one another at every
operator (`OMP_WAIT_POLICY=PASSIVE` in the environment softens it) and one thread can beat two,
while XLA's thread pool (all cores) suffers less. The batch norms' running statistics are those
of one batch (the student's frozen batch norm reads them); the learning rates follow the
configured schedules (100 steps per epoch).
"""

from __future__ import annotations

import argparse
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
PARITY_RTOL = 1e-4  # first-step losses: same weights, same inputs, float32 on both sides
CHANNELS_LAST = torch.channels_last


class Spec(NamedTuple):
    """One step kind: its JAX side (compiled step, state, batch), its FLOPs and its torch side."""

    name: str
    images: int
    jax: object
    gflop: float
    compile_s: float
    torch: object


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
    """The torch variants of one step kind, sharing one trainer."""

    def __init__(self, trainer: TorchTrainer, objective, use_compile: bool):
        self.trainer = trainer
        self.variants = {"eager": objective}
        if use_compile:
            self.variants["compile"] = torch.compile(objective)

    def runner(self, variant: str, threads: int):
        objective = self.variants[variant]

        def run():
            torch.set_num_threads(threads)
            return self.trainer.step(objective)

        return run


def to_torch(nhwc: np.ndarray) -> torch.Tensor:
    """NHWC images as an NCHW tensor in channels-last memory (the same bytes)."""
    return torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous(memory_format=CHANNELS_LAST)


def make_twin(model_config, image_size: int, state: dict[str, np.ndarray], *,
              dropout: float) -> TorchIResNet:
    twin = TorchIResNet(model_config.depth, width=model_config.width, input_size=image_size,
                        embedding_dim=model_config.embedding_dim, dropout=dropout)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                         strict=True)
    return twin.to(memory_format=CHANNELS_LAST)


def teacher_spec(config, model, graphs, params, stats, twin_state, rng, use_compile) -> Spec:
    size, classes = config.data.image_size, config.data.num_identities
    batch = config.teacher.batch_size
    images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    centres = np.array(model.head.centres[...])
    tx = optim.make_optimizer(config.teacher, STEPS_PER_EPOCH, params)
    schedule = optim.lr_schedule(config.teacher, STEPS_PER_EPOCH)
    step = teacher.make_train_step(graphs.train, tx, config.model, schedule)
    jax_step = JaxStep(step, teacher.init_state(params, stats, tx),
                       {"image": jnp.asarray(images), "label": jnp.asarray(labels)})

    twin = make_twin(config.model, size, twin_state, dropout=config.model.dropout)
    head = torch.nn.Parameter(torch.from_numpy(centres))
    m = config.model

    def objective(images_t, labels_t):
        cos = torch_losses.l2_normalize(twin(images_t)) @ torch_losses.l2_normalize(head).T
        loss = torch_losses.margin_loss(cos, labels_t, kind=m.head, scale=m.scale,
                                        margin=m.margin, straight_through=m.straight_through)
        return loss, {}

    trainer = TorchTrainer(twin, head, config.teacher, schedule,
                           (to_torch(images), torch.from_numpy(labels).long()), train_mode=True)
    return Spec(f"teacher step (batch {batch}, {m.head}, {classes} classes)", batch, jax_step,
                jax_step.gflop, jax_step.compile_s, TorchSide(trainer, objective, use_compile))


def unlearn_spec(config, backbone_graphs, backbone, twin_state, rng, use_compile, *,
                 dispersion: bool) -> Spec:
    """The CURE step, or (`dispersion`) the `dispersion` method's step."""
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

    tx = optim.make_optimizer(optim_config, STEPS_PER_EPOCH,
                              {"backbone": backbone.params, "head": jnp.zeros(())})
    schedule = optim.lr_schedule(optim_config, STEPS_PER_EPOCH)
    params = {"backbone": jax.tree.map(jnp.copy, backbone.params), "head": jnp.asarray(head)}
    state = cure.CureState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=jax.tree.map(jnp.copy, backbone.batch_stats), opt_state=tx.init(params),
        forget_centroids=jnp.asarray(head), pseudo_labels=jnp.asarray(pseudo_labels),
        retain_centroids=jnp.asarray(retain_centroids), groups=jnp.asarray(groups))
    batch = {"forget": {"image": forget_images, "target": forget_target, "index": index},
             "retain": {"image": retain_images, "target": retain_target, "index": index}}
    step = cure.make_cure_step(backbone_graphs, tx, cure_config, schedule,
                               batch_norm=config.unlearn.batch_norm, dispersion=disp)
    jax_step = JaxStep(step, state, jax.tree.map(jnp.asarray, batch))

    twin = make_twin(config.model, size, twin_state, dropout=0.0)  # no dropout in unlearning
    head_t = torch.nn.Parameter(torch.from_numpy(head))
    pseudo_t, groups_t = torch.from_numpy(pseudo_labels).long(), torch.from_numpy(groups).long()
    retain_centroids_t = torch.from_numpy(retain_centroids)
    c = cure_config
    weights = {name: getattr(c, f"w_{name}") for name in torch_losses.TERMS}
    use_disp = disp is not None and disp.weight != 0.0

    def objective(forget_x, retain_x, forget_t, retain_t, index_t):
        emb = twin(torch.cat([forget_x, retain_x]))  # one pass: one set of BN statistics
        student_forget, student_retain = emb[:n], emb[n:]
        total, terms = torch_losses.cure_loss(
            weights, student_forget=student_forget, teacher_forget=forget_t,
            head_logits=torch_losses.l2_normalize(student_forget) @ head_t.T,
            pseudo_labels=pseudo_t[index_t], student_retain=student_retain,
            teacher_retain=retain_t, retain_centroids=retain_centroids_t,
            temperature_pl=c.temperature_pl, temperature_fd=c.temperature_fd, margin=c.margin,
            retain_mode=c.contrastive_retain, feature_match_on=c.feature_match_on)
        if use_disp:
            terms["disp"] = torch_losses.dispersion_loss(student_forget, groups_t[index_t],
                                                         kind=disp.kind, t=disp.uniformity_t)
            total = total + disp.weight * terms["disp"]
        return total, terms

    inputs = (to_torch(forget_images), to_torch(retain_images), torch.from_numpy(forget_target),
              torch.from_numpy(retain_target), torch.from_numpy(index).long())
    trainer = TorchTrainer(twin, head_t, optim_config, schedule, inputs,
                           train_mode=config.unlearn.batch_norm == "train")
    name = (f"dispersion step ({disp.groups_per_batch} x {disp.images_per_group} forget, {n} "
            f"retain, {disp.kind})" if dispersion else f"CURE step ({n} forget + {n} retain)")
    return Spec(name, 2 * n, jax_step, jax_step.gflop, jax_step.compile_s,
                TorchSide(trainer, objective, use_compile))


def check_parity(spec: Spec) -> float:
    """Two steps of each framework from the same weights; prints the loss differences and
    returns the largest relative difference of the first step's total and terms."""
    jax_losses = [JaxStep.losses(spec.jax()) for _ in range(2)]
    run = spec.torch.runner("eager", torch.get_num_threads())
    torch_losses_ = []
    for _ in range(2):
        loss, terms = run()
        torch_losses_.append({"loss": float(loss), **{k: float(v) for k, v in terms.items()}})
    first = [(k, jax_losses[0][k], torch_losses_[0][k]) for k in torch_losses_[0]]
    diffs = {k: abs(a - b) for k, a, b in first}
    # Relative to the value, absolute below 1: a term near 0 (a hinge) has no relative scale.
    worst_rel = max(abs(a - b) / max(abs(a), 1.0) for _, a, b in first)
    second = abs(jax_losses[1]["loss"] - torch_losses_[1]["loss"])
    print(f"parity, {spec.name}: loss {jax_losses[0]['loss']:.6f} (cure_jax) vs "
          f"{torch_losses_[0]['loss']:.6f} (torch); max |diff| of the loss and terms, step 1: "
          f"{max(diffs.values()):.2e} (relative {worst_rel:.2e}); after one update, step 2: "
          f"{second:.2e}")
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


def calibrate_batch_norm(model, config, rng) -> None:
    """Sets every batch norm's running statistics of `model` (in place) to their values on one
    batch of images, as training leaves them: at a fresh network's unit statistics the frozen
    student's raw embeddings reach the thousands and feature matching the millions."""
    size = config.data.image_size
    twin = make_twin(config.model, size, iresnet_state_dict(model.backbone), dropout=0.0)
    for module in twin.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, its statistics
    images = rng.uniform(-1, 1, (config.teacher.batch_size, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        twin.train()(to_torch(images))
    variables = variables_by_key(model.backbone)
    for key, tensor in twin.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            variables[key].set_value(jnp.asarray(tensor.numpy()))


def build_specs(config, kinds: list[str], use_compile: bool) -> tuple[list[Spec], int]:
    if config.model.pretrained or config.model.dtype != "float32":
        sys.exit("the twin is an IResNet built from model.depth / model.width in float32: "
                 "model.pretrained and model.dtype=bfloat16 are not supported here")
    size, classes = config.data.image_size, config.data.num_identities
    model = build_model(config.model, num_classes=classes, image_size=size, seed=0)
    rng = np.random.default_rng(0)
    calibrate_batch_norm(model, config, rng)
    twin_state = iresnet_state_dict(model.backbone)
    count = parity_count(model, twin_state, config)
    graphs, params, stats = split_model(model)
    # The teacher step donates its state: the student's backbone gets its own copy first.
    backbone_graphs, backbone = teacher.Teacher(graphs, *jax.tree.map(
        jnp.copy, (params, stats))).backbone()
    specs = []
    if "teacher" in kinds:
        specs.append(teacher_spec(config, model, graphs, params, stats, twin_state, rng,
                                  use_compile))
    for kind in ("cure", "dispersion"):
        if kind in kinds:
            specs.append(unlearn_spec(config, backbone_graphs, backbone, twin_state, rng,
                                      use_compile, dispersion=kind == "dispersion"))
    return specs, count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and column")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile (slow to compile on a small CPU)")
    parser.add_argument("--kinds", default="teacher,cure,dispersion")
    parser.add_argument("--torch-threads", default="",
                        help="torch's intra-op threads, a column per count for eager, e.g. 2,1 "
                             "(the first also for torch.compile; default: torch's own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - {"teacher", "cure", "dispersion"}
    if unknown:
        sys.exit(f"unknown --kinds {sorted(unknown)}; valid: teacher, cure, dispersion")
    torch.manual_seed(0)
    threads = [int(t) for t in args.torch_threads.split(",") if t.strip()]
    threads = threads or [torch.get_num_threads()]
    torch.set_num_threads(threads[0])
    specs, count = build_specs(config, kinds, args.compile)
    print(f"trainable backbone parameters: {count:,} in cure_jax and in the torch twin")
    worst = max(check_parity(spec) for spec in specs)
    if worst > PARITY_RTOL:
        sys.exit(f"first-step losses differ by {worst:.2e} relative (> {PARITY_RTOL}): the two "
                 "sides do not compute the same thing")

    # (label, torch variant, threads); channels-last (CL) tensors throughout.
    columns = [("cure_jax", None, 0)] + [(f"torch eager CL {n}t", "eager", n) for n in threads]
    if args.compile:
        columns.append((f"torch.compile CL {threads[0]}t", "compile", threads[0]))
    compile_s = {}
    for spec in specs:  # torch.compile compiles on the first call: keep it out of the rounds
        if args.compile:
            start = time.perf_counter()
            spec.torch.runner("compile", threads[0])()
            compile_s[spec.name] = time.perf_counter() - start
    times = {(spec.name, col[0]): [] for spec in specs for col in columns}
    for r in range(args.rounds):
        order = columns if r % 2 == 0 else columns[::-1]
        for spec in specs:
            for col in order:
                label, variant, n = col
                if variant is None:
                    seconds = time_block(spec.jax, args.steps, jax.block_until_ready)
                else:
                    seconds = time_block(spec.torch.runner(variant, n), args.steps,
                                         lambda out: None)
                times[(spec.name, label)].append(seconds)
        print(f"round {r + 1}/{args.rounds}: " + "; ".join(
            f"{spec.name.split(' (')[0]} " + " / ".join(
                f"{1000 * times[(spec.name, c[0])][-1]:.0f}" for c in columns) for spec in specs)
            + " ms", flush=True)
    print_table(args, config, specs, [c[0] for c in columns], times, compile_s)


def print_table(args, config, specs, columns, times, compile_s) -> None:
    median = {key: statistics.median(values) for key, values in times.items()}
    m = config.model
    print(f"\nconfig {args.config} {' '.join(args.overrides)}: {m.depth} width {m.width}, "
          f"{config.data.image_size}x{config.data.image_size}, embedding {m.embedding_dim}; "
          f"jax {jax.__version__} on {len(jax.devices())} {jax.devices()[0].platform} device(s), "
          f"torch {torch.__version__}, Nt: N intra-op threads"
          + (f" (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})"
             if "OMP_WAIT_POLICY" in os.environ else "") + f"; {args.rounds} "
          f"rounds x {args.steps} steps; ms: median (min-max) over rounds; cure_jax / torch: "
          "median of the rounds' ratios")
    torch_cols = columns[1:]
    print("| step | images | GFLOP (XLA) | " + " | ".join(f"{c} ms" for c in columns) + " | "
          + " | ".join(f"cure_jax / {c.removeprefix('torch ')}" for c in torch_cols) + " | "
          + " | ".join(f"{c} GFLOP/s" for c in columns) + " |")
    print("|---|---|---|" + "---|" * (2 * len(columns) + len(torch_cols)))
    for spec in specs:
        cells = []
        for c in columns:
            values = [1000 * t for t in times[(spec.name, c)]]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        ours = times[(spec.name, "cure_jax")]
        ratios = [statistics.median(a / b for a, b in zip(ours, times[(spec.name, c)],
                                                          strict=True)) for c in torch_cols]
        rates = [spec.gflop / median[(spec.name, c)] for c in columns]
        print(f"| {spec.name} | {spec.images} | {spec.gflop:.1f} | " + " | ".join(cells) + " | "
              + " | ".join(f"{r:.2f}x" for r in ratios) + " | "
              + " | ".join(f"{g:.0f}" for g in rates) + " |")
    print("\ncompile s: " + "; ".join(
        f"{spec.name.split(' (')[0]}: XLA {spec.compile_s:.1f}"
        + (f", torch.compile {compile_s[spec.name]:.1f}" if spec.name in compile_s else "")
        for spec in specs))

if __name__ == "__main__":
    main()
