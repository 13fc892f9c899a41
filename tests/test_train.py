"""train.py / prosg_jax.train.trainer: stages, loss, resume, exports, mesh, loud failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from train_fixtures import PR_TRAIN, ROOT, read_metrics, tiny_config

import prosg_jax as pj
from prosg_jax import tasks
from prosg_jax.config_check import check_config
from prosg_jax.errors import UserError
from prosg_jax.train import metrics as metrics_lib
from prosg_jax.train import trainer


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_base_and_prosg_stages_write_a_run_that_load_run_reads(trained_run):
    workdir, params = trained_run
    lines = read_metrics(workdir)
    assert [(m["stage"], m["step"]) for m in lines] == [
        ("base", 1),
        ("base", 2),
        ("prosg", 1),
        ("prosg", 2),
    ]
    for m in lines:
        assert np.isfinite(m["loss"]) and 0 <= m["answer_acc"] <= 1
        assert m["tokens_per_s"] > 0 and m["lr"] > 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["base", "prosg"]
    assert list((workdir / "tensorboard" / "prosg").iterdir())  # event files
    env = json.loads((workdir / "run.json").read_text())["environment"]
    assert env["packages"]["jax"] == jax.__version__
    assert env["jax"]["backend"] == jax.default_backend()
    run = pj.load_run(workdir)
    assert isinstance(run, pj.Run)
    assert run.model_cfg.d_model == 32 and run.prosg_cfg.rank == 4
    assert run.tokenizer.vocab_size == 258
    _leaves_equal(run.params, params.base)
    _leaves_equal(run.sg_params, params.sg)
    # The SG module trained: its delta scales left zero.
    assert any(float(v["scale"]) != 0 for v in run.sg_params.values())
    # The export is an official-layout checkpoint.
    cfg, base = pj.load_rwkv(workdir / "base.safetensors")
    assert cfg == run.model_cfg
    _leaves_equal(base, params.base)


def test_joint_stage_trains_base_and_sg(trained_run, tmp_path):
    workdir, params = trained_run
    config = tiny_config(joint=1)
    config.train.stages = "joint"
    config.train.joint.mixture = PR_TRAIN  # one batch shape: one compile
    config.init_from = str(workdir / "base.safetensors")
    out = trainer.train(config, tmp_path)
    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(out.base), jax.tree.leaves(params.base), strict=True)
    ]
    assert any(changed)
    assert read_metrics(tmp_path)[-1]["stage"] == "joint"
    assert (tmp_path / "prosg.safetensors").is_file()


def test_joint_stage_with_lora_moves_each_target_by_rank_r_and_nothing_else(trained_run, tmp_path):
    workdir, params = trained_run
    config = tiny_config(joint=2)
    config.train.stages = "joint"
    config.train.joint.mixture = PR_TRAIN
    config.train.lora_rank = 2
    config.init_from = str(workdir / "base.safetensors")
    out = trainer.train(config, tmp_path)
    targets = {
        "blocks.0.att.value",
        "blocks.0.ffn.value",
        "blocks.1.att.value",
        "blocks.1.ffn.value",
    }
    moved = set()
    flat_out = dict(jax.tree_util.tree_flatten_with_path(out.base)[0])
    for path, before in jax.tree_util.tree_flatten_with_path(params.base)[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        diff = np.asarray(flat_out[path], np.float64) - np.asarray(before, np.float64)
        if name.removesuffix(".weight") in targets:
            sigma = np.linalg.svd(diff, compute_uv=False)
            # Rank 2 up to the float32 rounding of the merged weight (half an ulp an entry).
            rounding = np.finfo(np.float32).eps * np.linalg.norm(np.asarray(flat_out[path]))
            assert sigma[1] > 10 * rounding, (name, sigma)
            assert np.linalg.norm(sigma[2:]) <= rounding, (name, sigma)
            moved.add(name.removesuffix(".weight"))
        else:
            assert not diff.any(), name  # the base itself stays frozen
    assert moved == targets
    run = pj.load_run(tmp_path)  # the export is the merged base
    _leaves_equal(run.params, out.base)
    assert run.sg_params is not None
    adapter = json.loads((tmp_path / "run.json").read_text())["adapter"]
    # rank 2 on four 32x32 / 32x64 matrices of the tiny model: 2 * (64 + 96) * 2
    assert adapter["rank"] == 2 and adapter["parameters"] == 2 * (2 * 64 + 2 * 96)
    assert adapter["base_parameters"] == sum(np.size(x) for x in jax.tree.leaves(out.base))
    # Rerunning the finished stage exports the same merge, not a second one on top.
    again = trainer.train(config, tmp_path)
    _leaves_equal(again.base, out.base)


def test_lora_rank_without_a_joint_stage_is_refused():
    config = tiny_config()
    config.train.lora_rank = 4
    with pytest.raises(UserError, match="lora_rank=4: adapts the base in the joint stage"):
        check_config(config)


def test_prosg_on_a_frozen_init_from_base(trained_run, tmp_path):
    workdir, params = trained_run
    config = tiny_config(prosg=1)
    config.train.stages = "prosg"
    config.data.train_mixture = PR_TRAIN
    config.init_from = str(workdir / "base.safetensors")
    trainer.train(config, tmp_path)
    run = pj.load_run(tmp_path)  # the frozen base is exported too: the workdir stands alone
    _leaves_equal(run.params, params.base)
    assert run.sg_params is not None


def test_sg_from_starts_the_sg_module_from_a_run(trained_run, tmp_path):
    workdir, params = trained_run
    config = tiny_config(joint=0)
    config.train.stages = "joint"
    config.init_from = str(workdir / "base.safetensors")
    config.sg_from = str(workdir)  # a run directory; its prosg.safetensors is read
    trainer.train(config, tmp_path)
    run = pj.load_run(tmp_path)
    _leaves_equal(run.sg_params, params.sg)  # 0 steps: the export is what was read
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["sg_from"] == str(workdir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank": 8}, "config.sg_from=.*shape"),
        ({"matrices": "att.key"}, "config.sg_from=.*target"),
    ],
)
def test_sg_from_built_for_another_config_is_refused(trained_run, tmp_path, change, message):
    workdir, _ = trained_run
    config = tiny_config(prosg=1)
    config.train.stages = "prosg"
    config.init_from = str(workdir / "base.safetensors")
    config.sg_from = str(workdir / "prosg.safetensors")
    for k, v in change.items():
        config.prosg[k] = v
    with pytest.raises(UserError, match=message):
        trainer.train(config, tmp_path)


def test_sg_from_missing_is_one_line(tmp_path):
    config = tiny_config(prosg=1)
    config.train.stages = "prosg"
    config.sg_from = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="config.sg_from: SG checkpoint not found"):
        trainer.train(config, tmp_path / "w")


def test_base_loss_falls(tmp_path):
    config = tiny_config(base=30)
    config.train.stages = "base"
    config.train.base.lr = 1e-2
    config.train.checkpoint_every = 100
    trainer.train(config, tmp_path)
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_sigterm_saves_and_resume_is_bit_identical(tmp_path, monkeypatch):
    def run(workdir, stop_at=None):
        config = tiny_config(base=3, prosg=4)
        config.train.checkpoint_every = 100  # only the SIGTERM and final saves
        if stop_at is not None:
            original = metrics_lib.MetricsWriter.advance

            def advance(self, n=1):
                original(self, n)
                if self.stage == stop_at[0] and self.step == stop_at[1]:
                    os.kill(os.getpid(), signal.SIGTERM)

            monkeypatch.setattr(metrics_lib.MetricsWriter, "advance", advance)
        try:
            return trainer.train(config, workdir)
        finally:
            monkeypatch.undo()

    straight = run(tmp_path / "a")
    with pytest.raises(trainer.Preempted, match="after step 2 of the prosg stage"):
        run(tmp_path / "b", stop_at=("prosg", 2))
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints" / "prosg")) == ["2"]
    resumed = run(tmp_path / "b")
    a = [(m["stage"], m["step"], m["loss"]) for m in read_metrics(tmp_path / "a")]
    b = [(m["stage"], m["step"], m["loss"]) for m in read_metrics(tmp_path / "b")]
    assert a == b  # bit-identical losses, the resumed steps included
    _leaves_equal(straight.sg, resumed.sg)


def test_nan_loss_stops_naming_the_step_and_last_checkpoint(tmp_path):
    config = tiny_config(base=6)
    config.train.stages = "base"
    config.train.base.lr = 1e30
    config.train.base.warmup_steps = 0
    config.train.grad_clip = 1e30
    with pytest.raises(UserError, match=r"loss is (nan|inf) at step \d+.*Last good checkpoint"):
        trainer.train(config, tmp_path)


def test_config_that_contradicts_the_checkpoint_fails_before_any_step(trained_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(trained_run[0], workdir)
    config = tiny_config()
    config.prosg.rank = 8
    with pytest.raises(UserError, match="config.prosg does not match the checkpoint"):
        trainer.train(config, workdir)
    config = tiny_config()
    config.model.d_model = 64
    with pytest.raises(UserError, match="d_model=64 .it has 32."):
        trainer.train(config, workdir)
    assert len(read_metrics(workdir)) == 4  # nothing ran


def _script(args, **env):
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_user_errors_are_one_line(script, trained_run, tmp_path):
    workdir = trained_run[0]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (["--config.foo=1", f"--workdir={tmp_path}"], "unknown config field"),
        ([f"--workdir={blocker}/sub"], "not writable"),
        (["--config.model.d_model=64", f"--workdir={workdir}"], "d_model=64"),
    ]
    for args, message in cases:
        proc = _script([script, "--config=configs/tiny_cpu.py", *args])
        assert proc.returncode != 0, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if f"{script}: error:" in line]
        assert len(errors) == 1 and message in errors[0], (args, proc.stderr[-2000:])


_MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    sys.path.insert(0, "tests")
    from train_fixtures import tiny_config
    from prosg_jax import prosg
    from prosg_jax.models import init_params
    from prosg_jax import experiment
    from prosg_jax.train import optim, data as data_lib, mesh as mesh_lib
    from prosg_jax.train.steps import TrainState, make_train_step
    from prosg_jax.data.tokenizers import get_tokenizer
    assert jax.device_count() == 8
    config = tiny_config()
    config.data.train_mixture = sys.argv[2]  # one dataset: one batch shape per stage
    exp = experiment.build(config)
    workdir = sys.argv[1]
    settings = data_lib.DataSettings(
        directory=workdir, tokenizer=get_tokenizer("byte"), batch_size=8, seq_len=256,
        prompt_len=0, cont_len=0, loss_on="all", answer_weight=4.0, seed=0)
    base = jax.tree.map(np.asarray, init_params(jax.random.key(0), exp.model))
    sg = jax.tree.map(np.asarray, prosg.init(jax.random.key(1), exp.model, exp.prosg))
    out = {}
    for stage, trainable, frozen in (("base", base, None), ("prosg", sg, base)):
        it = data_lib.phase_iterator(stage, exp.curricula[stage][0], 0, settings)
        batches = [next(it) for _ in range(2)]
        keys = ("inputs", "targets", "positions", "loss_mask", "answer_mask") if stage == "base" \\
            else ("prompts", "prompt_lengths", "targets", "loss_mask", "answer_mask")
        opt, _ = optim.make_optimizer(config.train, config.train[stage])
        for data, fsdp in ((1, 1), (2, 4)):  # one device; 2-way data x 4-way FSDP
            mesh = mesh_lib.make_mesh(data, fsdp, devices=jax.devices()[: data * fsdp])
            init = lambda p: TrainState(np.int32(0), p, opt.init(p))
            sh = mesh_lib.tree_shardings(mesh, jax.eval_shape(init, trainable))
            state = jax.jit(init, out_shardings=sh)(trainable)
            fsh = None if frozen is None else mesh_lib.tree_shardings(mesh, frozen)
            fz = None if frozen is None else jax.device_put(frozen, fsh)
            train_step = make_train_step(
                stage,
                exp.model,
                exp.prosg,
                opt,
                mesh=mesh,
                state_shardings=sh,
                frozen_shardings=fsh,
            )
            losses = []
            for b in batches:
                batch = mesh_lib.put_batch(mesh, {k: b[k] for k in keys})
                state, m = train_step(state, fz, batch)
                losses.append(float(m["loss"]))
            if fsdp > 1:
                assert any(len(set(s.spec) - {None}) for s in jax.tree.leaves(sh.params))
            leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
            flat = np.concatenate(leaves).tolist()
            out[f"{stage}/{data}x{fsdp}"] = {"loss": losses, "params": flat}
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_data_parallel_and_fsdp_steps_match_one_device(tmp_path):
    from train_fixtures import MQAR_TRAIN, PR_TRAIN

    from prosg_jax.tasks import datasets

    for name in (PR_TRAIN, MQAR_TRAIN):
        datasets.prepare(tasks.parse_dataset(name), str(tmp_path))
    proc = _script(
        ["-c", _MESH_SCRIPT, str(tmp_path), PR_TRAIN],
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for stage in ("base", "prosg"):
        ref = out[f"{stage}/1x1"]
        for layout in ("2x4",):
            got = out[f"{stage}/{layout}"]
            # Same math, different reduction order across devices: float32 rounding only.
            np.testing.assert_allclose(
                got["loss"], ref["loss"], rtol=1e-5, err_msg=f"{stage} {layout}"
            )
            np.testing.assert_allclose(
                got["params"], ref["params"], rtol=1e-4, atol=1e-6, err_msg=f"{stage} {layout}"
            )


def test_schedule_warmup_stable_decay():
    """decay_frac=1 is optax's warmup + cosine; a smaller one holds the peak, then decays."""
    import types

    import optax

    from prosg_jax.train import optim

    stage = types.SimpleNamespace(steps=100, lr=3e-3, warmup_steps=20)
    train = types.SimpleNamespace(grad_accum=1, min_lr_ratio=0.1, decay_frac=1.0)
    cosine = optax.warmup_cosine_decay_schedule(3e-3 / 21, 3e-3, 20, 100, 3e-4)
    full = optim.schedule(train, stage)
    np.testing.assert_allclose([full(i) for i in range(101)], [cosine(i) for i in range(101)])
    train.decay_frac = 0.25  # 80 updates after warmup: 60 at the peak, 20 of cosine
    wsd = optim.schedule(train, stage)
    np.testing.assert_allclose([wsd(i) for i in range(20, 81)], 3e-3, rtol=1e-6)
    assert 3e-4 < wsd(81) < 3e-3 and 3e-4 < wsd(99) < wsd(90)
    np.testing.assert_allclose(wsd(100), 3e-4, rtol=1e-6)
    train.decay_frac = 0.0
    with pytest.raises(ValueError, match="decay_frac"):
        optim.schedule(train, stage)


def test_forget_frac_continues_the_leading_rows_from_an_empty_state():
    """The ProSG loss with forget_frac is continuation_loss with the leading rows forgotten."""
    import jax.numpy as jnp

    from prosg_jax import experiment, prosg
    from prosg_jax.models import init_params
    from prosg_jax.train.steps import forget_rows, loss_fn

    exp = experiment.build(tiny_config())
    rng = np.random.default_rng(0)
    # Perturbed away from init, where zero-initialised outputs hide the state.
    base = jax.tree.map(
        lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
        init_params(jax.random.key(0), exp.model),
    )
    sg = prosg.init(jax.random.key(1), exp.model, exp.prosg)
    targets = rng.integers(1, 258, (4, 6)).astype(np.int32)
    lengths = np.asarray([5, 3, 4, 5], np.int32)
    prompts = rng.integers(1, 258, (4, 5)).astype(np.int32) * (np.arange(5) < lengths[:, None])
    batch = {
        "prompts": prompts.astype(np.int32),
        "prompt_lengths": lengths,
        "targets": targets,
        "loss_mask": np.ones((4, 6), np.float32),
        "answer_mask": np.ones((4, 6), np.float32),
    }
    assert forget_rows(4, 0.0) is None and forget_rows(4, 0.1) is None
    np.testing.assert_array_equal(forget_rows(4, 0.5), [True, True, False, False])
    with pytest.raises(ValueError, match="forget_frac"):
        forget_rows(4, 1.5)
    kept, _ = loss_fn("prosg", exp.model, exp.prosg, sg, frozen=base, batch=batch)
    losses = {}
    for state in ("empty", "other"):
        losses[state], _ = loss_fn(
            "prosg",
            exp.model,
            exp.prosg,
            sg,
            frozen=base,
            batch=batch,
            forget_frac=0.5,
            forget_state=state,
        )
        want, _ = prosg.continuation_loss(
            exp.model,
            base,
            sg,
            exp.prosg,
            batch=prosg.Batch(*(batch[f] for f in prosg.Batch._fields)),
            forget=jnp.asarray([True, True, False, False]),
            forget_state=state,
        )
        np.testing.assert_allclose(losses[state], want, rtol=1e-6)
        assert abs(float(losses[state]) - float(kept)) > 1e-4
    assert abs(float(losses["other"]) - float(losses["empty"])) > 1e-4


def test_metrics_print_one_line_per_logged_step_without_a_bar(tmp_path, capsys):
    writer = metrics_lib.MetricsWriter(tmp_path, "base", start=0, total=10, bar=False)
    writer.write(10, {"loss": 0.5, "answer_acc": 0.25, "grad_norm": 1.0})
    writer.close()
    assert capsys.readouterr().err.splitlines() == ["base step 10: loss=0.5 answer_acc=0.25"]
    assert read_metrics(tmp_path)[0]["grad_norm"] == 1.0
