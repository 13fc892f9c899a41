"""Every experiment config builds its objects (model, ProSG, optimizer, data) without training."""

from __future__ import annotations

import json

import jax
import pytest
from train_fixtures import ROOT, load_config

import prosg_jax as pj
from prosg_jax import experiment, prosg, tasks
from prosg_jax.models import init_params
from prosg_jax.tasks import datasets
from prosg_jax.train import optim

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
    phases = datasets.parse_curriculum(
        "0=prompt_retention/d64_f4;30=prompt_retention/d64_f4:1,mqar/l64_kv4:3"
    )
    assert [p.start for p in phases] == [0, 30]
    assert phases[1].mixture[1] == ("mqar/l64_kv4", 3.0)
    assert datasets.phase_index(phases, 29) == 0 and datasets.phase_index(phases, 30) == 1


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


@pytest.mark.parametrize(
    "model",
    [
        pj.RWKVConfig.rwkv4(vocab_size=64, d_model=32, n_layer=2, d_ffn=96, dtype="bfloat16"),
        pj.RWKVConfig.rwkv7(vocab_size=64, d_model=64, n_layer=3, head_size=16, wkv_impl="scan"),
    ],
    ids=["rwkv4", "rwkv7"],
)
def test_from_dict_reads_a_run_record_and_a_config_section_alike(model):
    import dataclasses

    assert pj.RWKVConfig.from_dict(dataclasses.asdict(model)) == model
    section = {"version": model.version, "vocab_size": 64, "d_model": model.d_model}
    section |= {"n_layer": model.n_layer, "d_ffn": None, "head_size": model.head_size}
    preset = pj.RWKVConfig.from_dict(section)
    assert preset.d_ffn == 4 * model.d_model and preset.d_decay_lora == model.d_decay_lora
    pc = pj.ProSGConfig(matrices=("att.value", "ffn.value"), layers=(0, 2), rank=4)
    record = json.loads(json.dumps(dataclasses.asdict(pc)))  # tuples become lists
    assert pj.ProSGConfig.from_dict(record) == pc
    text = {**record, "matrices": "att.value, ffn.value", "layers": "0,2"}
    assert pj.ProSGConfig.from_dict(text) == pc
    assert pj.ProSGConfig.from_dict({**record, "layers": ""}).layers is None
    with pytest.raises(ValueError, match="comma-separated integers"):
        pj.ProSGConfig.from_dict({**record, "layers": "0,x"})
