"""What one training step of a config costs, from XLA's analyses of the compiled steps: floating-
point operations and memory (arguments: parameters, optimiser state, batch; temporaries:
activations and gradients), for the teacher step and the CURE step at the config's batch sizes.
The steps are compiled, not run, so a small machine can size a run for a large one.

    python tools/step_cost.py --config casia_ir100 [--set key=value ...]

The figures are those of the backend that compiles (XLA:CPU here): another backend fuses and
assigns buffers its own way, so read them as an estimate of what a GPU needs, not a measurement
of it. FLOPs count multiply and add separately.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import cure_jax  # noqa: F401  (sets XLA flags before the backend starts)
from cure_jax import config as config_lib
from cure_jax import optim, teacher
from cure_jax.methods import cure
from cure_jax.models.backbone import build_model, split_model

MIB = 2**20


def compiled_cost(step, *args) -> dict:
    """{"compile_s", "gflop", "arguments_mib", "temporaries_mib", "outputs_mib"} of `step`."""
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    memory = compiled.memory_analysis()
    return {"compile_s": seconds, "gflop": cost.get("flops", float("nan")) / 1e9,
            "arguments_mib": memory.argument_size_in_bytes / MIB,
            "temporaries_mib": memory.temp_size_in_bytes / MIB,
            "outputs_mib": (memory.output_size_in_bytes - memory.alias_size_in_bytes) / MIB}


def images(batch: int, size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


def teacher_cost(config, num_classes: int) -> dict:
    model = build_model(config.model, num_classes=num_classes,
                        image_size=config.data.image_size, seed=0)
    graphs, params, stats = split_model(model)
    tx = optim.make_optimizer(config.teacher, 100)
    step = teacher.make_train_step(graphs.train, tx, config.model,
                                   optim.lr_schedule(config.teacher, 100))
    batch = config.teacher.batch_size
    return compiled_cost(step, teacher.init_state(params, stats, tx),
                         {"image": images(batch, config.data.image_size),
                          "label": jax.ShapeDtypeStruct((batch,), jnp.int32)},
                         jax.random.key(0))


def cure_cost(config, num_forget: int) -> dict:
    """The CURE step: student forward and backward over a forget and a retain batch."""
    model = build_model(config.model, num_classes=2, image_size=config.data.image_size, seed=0)
    graphs, backbone = teacher.Teacher(*split_model(model)).backbone()
    dim, per_side = config.model.embedding_dim, config.student.batch_size
    tx = optim.make_optimizer(config.student, 100)
    params = {"backbone": backbone.params,
              "head": jnp.zeros((config.cure.forget_clusters, dim), jnp.float32)}
    state = cure.CureState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=backbone.batch_stats,
        opt_state=tx.init(params), forget_centroids=params["head"],
        pseudo_labels=jnp.zeros(num_forget, jnp.int32),
        retain_centroids=jnp.zeros((config.cure.retain_clusters, dim), jnp.float32),
        groups=jnp.zeros(num_forget, jnp.int32))
    side = {"image": images(per_side, config.data.image_size),
            "target": jax.ShapeDtypeStruct((per_side, dim), jnp.float32),
            "index": jax.ShapeDtypeStruct((per_side,), jnp.int32)}
    step = cure.make_cure_step(graphs, tx, config.cure, optim.lr_schedule(config.student, 100),
                               batch_norm=config.unlearn.batch_norm)
    return compiled_cost(step, state, {"forget": side, "retain": side}, jax.random.key(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--classes", type=int, default=10_572,
                        help="identities of the teacher's margin head (CASIA-WebFace: 10,572)")
    parser.add_argument("--forget-images", type=int, default=45_000,
                        help="forget-set size (only the pseudo-label table depends on it)")
    args = parser.parse_args()
    config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    rows = [(f"teacher step (batch {config.teacher.batch_size}, {args.classes} classes)",
             config.teacher.batch_size, teacher_cost(config, args.classes)),
            (f"CURE step ({config.student.batch_size} forget + {config.student.batch_size} "
             "retain)", 2 * config.student.batch_size, cure_cost(config, args.forget_images))]
    size = config.data.image_size
    print(f"config {args.config} {' '.join(args.overrides)}: {config.model.depth} width "
          f"{config.model.width}, {size}x{size}, embedding {config.model.embedding_dim}; "
          f"compiled by XLA:{jax.devices()[0].platform.upper()} {jax.__version__}")
    print("| step | images | GFLOP per step | GFLOP per image | arguments MiB | temporaries MiB "
          "| outputs MiB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, count, cost in rows:
        print(f"| {name} | {count} | {cost['gflop']:,.1f} | {cost['gflop'] / count:.2f} | "
              f"{cost['arguments_mib']:,.0f} | {cost['temporaries_mib']:,.0f} | "
              f"{cost['outputs_mib']:,.0f} | {cost['compile_s']:.0f} |")


if __name__ == "__main__":
    main()
