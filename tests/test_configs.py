"""Every experiment config builds its objects (model, ProSG, optimizer, data) without training."""

from __future__ import annotations

import jax
import pytest
from train_fixtures import ROOT, load_config

from prosg_jax import prosg, tasks
from prosg_jax.models import init_params
from prosg_jax.train import data as data_lib
from prosg_jax.train import experiment, optim

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    config = load_config(name)
    exp = experiment.build(config)  # model/ProSG configs, stages, curricula, optimizers
    assert exp.stages and exp.prosg.targets(exp.model)
    params = jax.eval_shape(lambda: init_params(jax.random.key(0), exp.model))
    sg = jax.eval_shape(lambda: prosg.init(jax.random.key(0), exp.model, exp.prosg))
    for stage in exp.stages:
        opt, lr = optim.make_optimizer(config.train, config.train[stage])
        trainable = {"base": params, "prosg": sg, "joint": {"base": params, "sg": sg}}[stage]
        jax.eval_shape(opt.init, trainable)
        assert float(lr(0)) >= 0
        for phase in exp.curricula[stage]:
            for dataset, weight in phase.mixture:
                assert tasks.parse_dataset(dataset).name == dataset and weight > 0
    for d in experiment.int_list(config.eval.distances, "eval.distances"):
        for share in experiment.int_list(config.eval.distractor_facts, "eval.distractor_facts"):
            tasks.parse_dataset(
                f"prompt_retention/d{d}_f{config.eval.num_facts}_b{share}_n0_val0_t8"
            )


def test_overrides_are_validated():
    config = load_config()
    config.prosg.pooling = "mean"
    with pytest.raises(experiment.UserError, match="config.prosg"):
        experiment.build(config)
    config = load_config()
    config.data.train_mixture = "prompt_retention/d64_f4:1,mqar/l128_kv8"  # vocab 8192 > 258
    with pytest.raises(experiment.UserError, match="_voc"):
        experiment.build(config)


def test_dataset_grammar():
    spec = tasks.parse_dataset("prompt_retention/d128_f4_n2000_t50")
    assert (spec.config.distance, spec.config.num_facts) == (128, 4)
    assert (spec.config.num_train, spec.config.num_test) == (2000, 50)
    assert tasks.parse_dataset("prompt_retention/d64_f4_b50").config.distractor_facts == 50
    assert tasks.parse_dataset("mqar/l256_kv16").config.vocab_size == 8192  # predefined
    assert tasks.parse_dataset("mqar/l64_kv4_voc128").vocab_size == 128
    assert tasks.parse_dataset("mqar/l64_kv4_voc128_d512_t8").config.distance == 512
    assert tasks.parse_dataset("mqar/l128_kv8_voc20_k3").config.key_tokens == 3
    assert tasks.parse_dataset("mqar/l192_kv8_voc20_k3_g4").config.pair_len == 8
    for bad in (
        "prompt_retention/d12",
        "prompt_retention/d64_f4_x3",
        "prompt_retention/d64_f4_b101",
        "mqar/l128_kv8_voc20_k3_d2",  # the distractor is whole 4-token pairs
        "lm1b/x",
    ):
        with pytest.raises(experiment.UserError):
            tasks.parse_dataset(bad)
    phases = data_lib.parse_curriculum(
        "0=prompt_retention/d64_f4;30=prompt_retention/d64_f4:1,mqar/l64_kv4:3"
    )
    assert [p.start for p in phases] == [0, 30]
    assert phases[1].mixture[1] == ("mqar/l64_kv4", 3.0)
    assert data_lib.phase_index(phases, 29) == 0 and data_lib.phase_index(phases, 30) == 1


def test_decay_mask_spares_norms_embeddings_and_scales():
    from prosg_jax.config import ProSGConfig, RWKVConfig

    cfg = RWKVConfig.rwkv7(vocab_size=16, d_model=32, n_layer=1, head_size=16)
    params = jax.eval_shape(lambda: init_params(jax.random.key(0), cfg))
    mask = optim.decay_mask(params)
    assert not mask["emb"]["weight"] and mask["head"]["weight"]
    assert not mask["blocks"][0]["ln1"]["weight"] and mask["blocks"][0]["att"]["key"]["weight"]
    assert not mask["blocks"][0]["att"]["x_r"]  # a vector
    sg = jax.eval_shape(lambda: prosg.init(jax.random.key(0), cfg, ProSGConfig(rank=2)))
    sg_mask = optim.decay_mask(sg)["blocks.0.att.value"]
    assert sg_mask["w_in"] and not sg_mask["scale"] and not sg_mask["ln"]["weight"]
