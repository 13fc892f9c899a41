"""One training stage: build state, resume, step, log, checkpoint, export."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from prosg_jax import experiment, prosg, provenance
from prosg_jax.checkpoint import save_rwkv
from prosg_jax.data.tokenizers import Tokenizer
from prosg_jax.errors import UserError
from prosg_jax.run import BASE_FILE, RUN_FILE, SG_FILE, run_info, save_sg_params, write_json
from prosg_jax.tasks import datasets
from prosg_jax.train import checkpointing, lora, optim
from prosg_jax.train import data as data_lib
from prosg_jax.train import mesh as mesh_lib
from prosg_jax.train.metrics import MetricsWriter
from prosg_jax.train.steps import TrainState, make_train_step

# Batch fields that go to the devices (the rest are host-side counts).
_DEVICE_KEYS = {
    "base": ("inputs", "targets", "positions", "loss_mask", "answer_mask"),
    "prosg": ("prompts", "prompt_lengths", "targets", "loss_mask", "answer_mask"),
}


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the last completed step was written."""


@dataclasses.dataclass
class StopFlag:
    """Set from the SIGTERM handler; the loop checks it between steps."""

    requested: bool = False


@dataclasses.dataclass
class Context:
    """What every stage of one ``train`` call shares."""

    config: ml_collections.ConfigDict
    workdir: Path
    exp: experiment.Experiment
    mesh: jax.sharding.Mesh
    tokenizer: Tokenizer
    data_dir: str
    stop: StopFlag
    stages_done: list


@dataclasses.dataclass
class Params:
    """Host copies of the model's parameters as the stages hand them on."""

    base: dict | None
    sg: dict | None


def _data_settings(ctx: Context, stage: str) -> data_lib.DataSettings:
    c = ctx.config
    return data_lib.DataSettings(
        directory=ctx.data_dir,
        tokenizer=ctx.tokenizer,
        batch_size=c.train[stage].batch_size,
        seq_len=c.data.seq_len,
        prompt_len=c.data.prompt_len,
        cont_len=c.data.cont_len,
        loss_on=c.data.loss_on,
        answer_weight=float(c.data.answer_weight),
        seed=c.seed,
        num_workers=c.data.num_workers,
    )


def stage_meta(ctx: Context, stage: str, prosg_cfg) -> dict:
    """What must not change across a restart of ``stage`` (and the config, for reference)."""
    c = ctx.config
    meta = {
        "model": experiment.shape_of(ctx.exp.model),
        "prosg": None if stage == "base" else dataclasses.asdict(prosg_cfg),
        "data": {
            "curriculum": [
                [p.start, [list(m) for m in p.mixture]] for p in ctx.exp.curricula[stage]
            ],
            "batch_size": c.train[stage].batch_size,
            "seq_len": c.data.seq_len,
            "prompt_len": c.data.prompt_len,
            "cont_len": c.data.cont_len,
            "loss_on": c.data.loss_on,
            "answer_weight": float(c.data.answer_weight),
            "tokenizer": c.tokenizer,
            "seed": c.seed,
            "grad_accum": c.train.grad_accum,
            "processes": jax.process_count(),
        },
        "config": c.to_dict(),
    }
    return json.loads(json.dumps(meta))  # as it reads back from the checkpoint (lists, not tuples)


def _new_window() -> dict:
    """Running sums between two metrics lines."""
    return {
        "tokens": 0,
        "loss": 0.0,
        "n": 0,
        "correct": 0.0,
        "answers": 0.0,
        "t0": time.perf_counter(),
    }


def _export(ctx: Context, stage: str, params: Params, prosg_cfg) -> None:
    """Writes base.safetensors / prosg.safetensors / run.json (process 0)."""
    if jax.process_index() != 0:
        return
    if stage in ("base", "joint") or not (ctx.workdir / BASE_FILE).is_file():
        # A frozen base from init_from is exported once, so the workdir is self-contained.
        save_rwkv(ctx.workdir / BASE_FILE, ctx.exp.model, params.base)
    if stage in ("prosg", "joint"):
        save_sg_params(ctx.workdir / SG_FILE, params.sg)
    done = [*ctx.stages_done, stage] if stage not in ctx.stages_done else ctx.stages_done
    adapter = None
    if "joint" in done and ctx.config.train.lora_rank > 0:
        names = prosg_cfg.targets(ctx.exp.model)
        adapter = lora.describe(ctx.exp.model, names, ctx.config.train.lora_rank, params.base)
    info = run_info(
        ctx.exp.model,
        dataclasses.replace(prosg_cfg, train_base=False),
        ctx.config.tokenizer,
        done,
        init_from=ctx.config.init_from,
        sg_from=ctx.config.sg_from,
        adapter=adapter,
        environment=provenance.environment(),
    )
    write_json(ctx.workdir / RUN_FILE, info)


# The config.train fields a stage's compiled step depends on: optimizer and forget share.
_TRAIN_FIELDS = (
    "min_lr_ratio",
    "decay_frac",
    "weight_decay",
    "b1",
    "b2",
    "eps",
    "grad_clip",
    "grad_accum",
    "forget_frac",
    "forget_state",
)
_STAGE_FIELDS = ("steps", "lr", "warmup_steps")


def _signature(tree):
    """A hashable description of a pytree's structure, shapes and dtypes."""
    if tree is None:
        return None
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves)


@dataclasses.dataclass(frozen=True)
class _Compiled:
    optimizer: object
    lr_fn: object
    shapes: object
    state_sh: object
    frozen_sh: object
    init: object
    train_step: Callable


@functools.lru_cache(maxsize=8)
def _compiled_stage(stage, model_cfg, prosg_cfg, train_key, *, stage_key, mesh, trainable, frozen):
    """The optimizer, shardings and jitted functions of a stage, built once per process.

    Keyed on everything they depend on, so a second ``train`` call in the same
    process (a resumed run in a test or notebook) reuses the compiled steps.
    """
    train_cfg = types.SimpleNamespace(**dict(zip(_TRAIN_FIELDS, train_key, strict=True)))
    stage_cfg = types.SimpleNamespace(**dict(zip(_STAGE_FIELDS, stage_key, strict=True)))
    optimizer, lr_fn = optim.make_optimizer(train_cfg, stage_cfg)

    def init(p):
        return TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p))

    abstract = jax.tree.unflatten(
        trainable[0], [jax.ShapeDtypeStruct(s, d) for s, d in trainable[1]]
    )
    shapes = jax.eval_shape(init, abstract)
    state_sh = mesh_lib.tree_shardings(mesh, shapes)
    frozen_sh = None
    if frozen is not None:
        frozen_sh = jax.tree.unflatten(
            frozen[0], [mesh_lib.leaf_sharding(mesh, s) for s, _ in frozen[1]]
        )
    train_step = make_train_step(
        stage,
        model_cfg,
        prosg_cfg,
        optimizer,
        mesh=mesh,
        state_shardings=state_sh,
        frozen_shardings=frozen_sh,
        forget_frac=train_cfg.forget_frac,
        forget_state=train_cfg.forget_state,
    )
    return _Compiled(
        optimizer=optimizer,
        lr_fn=lr_fn,
        shapes=shapes,
        state_sh=state_sh,
        frozen_sh=frozen_sh,
        init=jax.jit(init, out_shardings=state_sh),
        train_step=train_step,
    )


def _split_trainable(stage: str, trainable, params: Params, frozen_base: dict | None) -> Params:
    """The stage's parameters as later stages see them; ``frozen_base``: the base
    a LoRA joint stage adapts (its merged weights are the new base)."""
    if stage == "base":
        return Params(base=trainable, sg=params.sg)
    if stage == "prosg":
        return Params(base=params.base, sg=trainable)
    if "lora" in trainable:
        merged = mesh_lib.to_host(lora.merge(frozen_base, trainable["lora"]))
        return Params(base=merged, sg=trainable["sg"])
    return Params(base=trainable["base"], sg=trainable["sg"])


def run_stage(ctx: Context, stage: str, params: Params) -> Params:
    """Trains ``stage`` from its latest checkpoint (or from ``params``) to its last step.

    Returns:
      The parameters after the stage, as host numpy trees.

    Raises:
      UserError: config/checkpoint mismatch, or a non-finite loss.
      Preempted: SIGTERM (after writing a checkpoint).
    """
    config, mesh = ctx.config, ctx.mesh
    st = config.train[stage]
    model_cfg = ctx.exp.model
    prosg_cfg = ctx.exp.prosg.replace(train_base=stage == "joint")
    if stage != "base" and params.sg is None:
        params = Params(
            base=params.base,
            sg=mesh_lib.to_host(prosg.init(jax.random.key(config.seed + 1), model_cfg, prosg_cfg)),
        )
    if stage == "base":
        trainable, frozen = params.base, None
    elif stage == "prosg":
        trainable, frozen = params.sg, params.base
    elif config.train.lora_rank > 0:
        names = prosg_cfg.targets(model_cfg)
        adapter = lora.init(
            jax.random.key(config.seed + 2), model_cfg, names, config.train.lora_rank
        )
        trainable, frozen = {"lora": mesh_lib.to_host(adapter), "sg": params.sg}, params.base
        if jax.process_index() == 0:
            size = lora.describe(model_cfg, names, config.train.lora_rank, params.base)
            print(
                f"joint stage: base frozen, a rank-{size['rank']} LoRA on "
                f"{len(adapter)} matrices: {size['parameters']:,} parameters "
                f"({size['parameters'] / size['base_parameters']:.1%} of the base's)",
                file=sys.stderr,
                flush=True,
            )
    else:
        trainable, frozen = {"base": params.base, "sg": params.sg}, None
    frozen_base = frozen if stage == "joint" else None
    if st.batch_size % mesh_lib.batch_size_per_step(mesh):
        raise UserError(
            f"config.train.{stage}.batch_size={st.batch_size} is not divisible by the "
            f"{mesh_lib.batch_size_per_step(mesh)} devices of the mesh"
        )

    ckpt = checkpointing.StageCheckpoints(
        ctx.workdir / "checkpoints" / stage, config.train.keep_checkpoints
    )
    meta = stage_meta(ctx, stage, prosg_cfg)
    latest = ckpt.latest()
    if latest is not None:
        checkpointing.check_meta(ckpt.read_meta(latest), meta, ckpt.directory)
    steps = st.steps
    if steps == 0 and latest is None:
        _export(ctx, stage, params, prosg_cfg)
        ckpt.close()
        return params

    compiled = _compiled_stage(
        stage,
        model_cfg,
        prosg_cfg,
        tuple(config.train[k] for k in _TRAIN_FIELDS),
        stage_key=tuple(st[k] for k in _STAGE_FIELDS),
        mesh=mesh,
        trainable=_signature(trainable),
        frozen=_signature(frozen),
    )
    lr_fn, shapes = compiled.lr_fn, compiled.shapes
    state_sh, frozen_sh = compiled.state_sh, compiled.frozen_sh
    state = compiled.init(trainable)
    frozen = None if frozen is None else jax.device_put(frozen, frozen_sh)

    phases = ctx.exp.curricula[stage]
    settings = _data_settings(ctx, stage)
    start = latest or 0
    phase_no, it = -1, None
    if start < steps:
        phase_no = datasets.phase_index(phases, start)
        it = data_lib.phase_iterator(stage, phases[phase_no], phase_no, settings)
    if latest is not None:
        state = ckpt.restore(latest, checkpointing.abstract(shapes, state_sh), it)
    if start >= steps:  # finished earlier: hand its parameters on
        params = _split_trainable(stage, mesh_lib.to_host(state.params), params, frozen_base)
        _export(ctx, stage, params, prosg_cfg)
        ckpt.close()
        return params

    keys = _DEVICE_KEYS["base" if stage == "base" else "prosg"]
    writer = MetricsWriter(
        ctx.workdir, stage, start=start, total=steps, bar=config.train.progress_bar
    )
    last_saved = latest
    window = _new_window()
    try:
        for step in range(start, steps):
            want = datasets.phase_index(phases, step)
            if want != phase_no:
                phase_no = want
                it = data_lib.phase_iterator(stage, phases[phase_no], phase_no, settings)
            local = next(it)
            batch = mesh_lib.put_batch(mesh, {k: local[k] for k in keys})
            done = step + 1
            log = done % config.train.log_every == 0 or done == steps
            state, metrics = compiled.train_step(state, frozen, batch)
            # One transfer per step for the scalars every step needs (it waits for the step).
            scalars = jax.device_get(
                {k: metrics[k] for k in ("loss", "answer_correct", "answer_count")}
            )
            loss = float(scalars["loss"])
            if not math.isfinite(loss):
                saved = "none" if last_saved is None else f"step {last_saved} in {ckpt.directory}"
                raise UserError(
                    f"{stage} stage: loss is {loss} at step {step + 1}; stopped. "
                    f"Last good checkpoint: {saved}"
                )
            window["loss"] += loss
            window["n"] += 1
            # Accuracy over the whole window: a single logged batch comes from one dataset
            # of the mixture, and the mixture's fixed cycle can pick the same one every time.
            window["correct"] += float(scalars["answer_correct"])
            window["answers"] += float(scalars["answer_count"])
            window["tokens"] += int(
                local["num_tokens"].sum()
                if stage == "base"
                else local["prompt_lengths"].sum() + local["cont_lengths"].sum()
            )
            writer.advance()
            if log:
                elapsed = time.perf_counter() - window["t0"]
                line = {
                    "loss": window["loss"] / window["n"],
                    "answer_acc": window["correct"] / max(window["answers"], 1.0),
                    "tokens_per_s": window["tokens"] * jax.process_count() / max(elapsed, 1e-9),
                    "lr": float(lr_fn((done - 1) // config.train.grad_accum)),
                    "grad_norm": float(metrics["grad_norm"]),
                }
                for k in ("ce", "sg_match", "distill_kl"):
                    if k in metrics:
                        line[k] = float(metrics[k])
                writer.write(done, line)
                window = _new_window()
            stop = ctx.stop.requested
            if done % config.train.checkpoint_every == 0 or done == steps or stop:
                if done < steps and datasets.phase_index(phases, done) != phase_no:
                    # The checkpoint resumes at `done`: save the iterator that feeds it.
                    phase_no = datasets.phase_index(phases, done)
                    it = data_lib.phase_iterator(stage, phases[phase_no], phase_no, settings)
                ckpt.save(done, state, it, meta)
                last_saved = done
                params = _split_trainable(
                    stage, mesh_lib.to_host(state.params), params, frozen_base
                )
                _export(ctx, stage, params, prosg_cfg)
            if stop:
                raise Preempted(
                    f"stopped by SIGTERM after step {done} of the {stage} stage; checkpoint "
                    f"saved in {ckpt.directory} (run the same command to resume)"
                )
    finally:
        writer.close()
        ckpt.close()
    return params


def host_params(tree) -> dict:
    """A float32 numpy copy (the master weights of a freshly loaded or initialised model)."""
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
