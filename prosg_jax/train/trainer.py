"""Training entry point called by ``train.py``: the stages of one experiment.

Stages (``config.train.stages``, run in order):

* ``base`` — the language model itself: next-token loss on packed rows from
  the grain pipeline (state reset where ``positions == 0``). Starts from
  ``config.init_from`` when set (0 steps allowed: the model is just exported).
* ``prosg`` — the SG module on the frozen base: continuation loss with the
  prompt's deltas applied (:func:`prosg_jax.prosg.continuation_loss`).
* ``joint`` — both together (``ProSGConfig.train_base``).

Each stage checkpoints with orbax under ``<workdir>/checkpoints/<stage>``
and resumes from its latest complete checkpoint when run again with the same
command; a finished stage is skipped. After every checkpoint the workdir
holds ``base.safetensors``, ``prosg.safetensors`` and ``run.json``, which
:func:`prosg_jax.load_run` reads.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import jax
import ml_collections

from prosg_jax import experiment, tasks
from prosg_jax.checkpoint import load_rwkv
from prosg_jax.config import RWKVConfig
from prosg_jax.data.tokenizers import get_tokenizer
from prosg_jax.errors import UserError
from prosg_jax.models import init_params
from prosg_jax.run import BASE_FILE, check_workdir, read_run_info
from prosg_jax.tasks import datasets
from prosg_jax.train import mesh as mesh_lib
from prosg_jax.train.loop import Context, Params, Preempted, StopFlag, host_params, run_stage

__all__ = ["Params", "Preempted", "train"]


def start_distributed() -> None:
    """Joins the job's processes: ``jax.distributed.initialize`` (one line if there is no job).

    Under SLURM, Open MPI and the other launchers JAX detects, everything comes
    from their environment. Elsewhere (e.g. several processes on one host) set
    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``.
    """
    kwargs = {}
    for name, key in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if os.environ.get(key, "").strip():
            try:
                kwargs[name] = int(os.environ[key])
            except ValueError:
                raise UserError(f"{key}={os.environ[key]!r} is not an integer") from None
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise UserError(
            f"--config.distributed=True: no cluster to join ({str(e).strip()}); start one "
            "process per host under SLURM or Open MPI, or set JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID"
        ) from e


def _load_base(path: str, exp: experiment.Experiment, what: str) -> dict:
    """Float32 master weights from an official-layout file, checked against config.model."""
    cfg, params = load_rwkv(path)
    experiment.check_same_shape(exp.model, cfg, what)
    return host_params(params)


def _check_workdir_model(workdir: Path, exp: experiment.Experiment) -> None:
    """A config whose model shape contradicts the run already in the workdir is an error."""
    info = read_run_info(workdir)
    if info is None:
        return
    experiment.check_same_shape(exp.model, RWKVConfig.from_dict(info["model"]), str(workdir))


def initial_base(config, workdir: Path, exp: experiment.Experiment, first_stage: str) -> dict:
    """The base parameters a run starts from.

    ``base`` as first stage: ``init_from`` or a fresh initialisation (its own
    checkpoint, if any, takes over in the stage). Otherwise: ``init_from``,
    else ``<workdir>/base.safetensors``.
    """
    if config.init_from:
        return _load_base(config.init_from, exp, config.init_from)
    if first_stage == "base":
        return host_params(init_params(jax.random.key(config.seed), exp.model))
    existing = workdir / BASE_FILE
    if existing.is_file():
        return _load_base(str(existing), exp, str(existing))
    raise UserError(
        f"the {first_stage} stage needs a base model: add 'base' to config.train.stages, "
        "set config.init_from, or use a --workdir that has base.safetensors"
    )


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Params:
    """Runs ``config.train.stages`` in ``workdir``, resuming where a previous run stopped.

    Returns:
      The final parameters (host numpy): ``.base`` (the LM) and ``.sg`` (the
      SG module; None without a ProSG stage) — what :func:`prosg_jax.load_run`
      reads back from the workdir.

    Raises:
      UserError: a problem to fix in the config, command line or workdir.
      Preempted: SIGTERM arrived (a checkpoint was written first).
    """
    exp = experiment.build(config)
    workdir = check_workdir(workdir)
    if config.distributed:
        start_distributed()
    _check_workdir_model(workdir, exp)
    sg = experiment.sg_from(config, exp.model)  # checked before any dataset is built
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
    tokenizer = get_tokenizer(config.tokenizer)  # fits the vocabulary: check_config
    directory = datasets.data_dir(config, workdir)
    for phases in exp.curricula.values():  # build every dataset before the first step
        for phase in phases:
            for name, _ in phase.mixture:
                datasets.prepare(tasks.parse_dataset(name), directory)

    stop = StopFlag()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        del signum, frame
        stop.requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        ctx = Context(
            config=config,
            workdir=workdir,
            exp=exp,
            mesh=mesh,
            tokenizer=tokenizer,
            data_dir=directory,
            stop=stop,
            stages_done=[],
        )
        params = Params(
            base=initial_base(config, workdir, exp, exp.stages[0]),
            sg=None if sg is None else host_params(sg),
        )
        for stage in exp.stages:
            params = run_stage(ctx, stage, params)
            ctx.stages_done.append(stage)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return params
