"""eval.py / prosg_jax.eval on a tiny trained run."""

from __future__ import annotations

import itertools
import json
import shutil

import jax
import numpy as np
import pytest
from train_fixtures import tiny_config

import prosg_jax as pj
from prosg_jax import tasks
from prosg_jax.config import method_config
from prosg_jax.config_check import EVAL_SPLITS
from prosg_jax.data import mqar
from prosg_jax.errors import UserError
from prosg_jax.eval import evaluation, report, scoring
from prosg_jax.tasks import datasets


@pytest.fixture(scope="module")
def evaluated(trained_run):
    workdir, _ = trained_run
    config = tiny_config()
    config.eval.methods = "none,repeat_prompt,true_grad,prosg"
    config.eval.exact_match = "teacher_forced"  # generation is checked against it below
    config.eval.distractor_facts = "0,50"
    return workdir, evaluation.evaluate(config, workdir)


def test_eval_writes_table_json_and_plot(evaluated):
    workdir, results = evaluated
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    methods = ["none", "repeat_prompt", "true_grad", "prosg"]
    for key, columns in (
        ("prompt_retention", ["16", "32"]),
        ("prompt_retention_b50", ["16", "32"]),
        ("mqar", ["l32_kv4_voc64"]),
    ):
        assert list(results[key]) == methods
        for m in methods:
            assert list(results[key][m]) == columns
            for c in columns:
                assert 0.0 <= results[key][m][c] <= 1.0
                assert results[f"{key}_std"][m][c] >= 0.0
                assert np.isfinite(results["perplexity"][key][m][c])
                assert results["perplexity"][key][m][c] > 1.0
    # The facts-only score is the all-answers score without the closing word (1 of 3).
    for m, c, kind in itertools.product(
        methods, ("16", "32"), ("prompt_retention", "prompt_retention_b50")
    ):
        facts = results[f"{kind}_facts"][m][c]
        assert 0.0 <= facts <= 1.0 and results[f"{kind}_facts_std"][m][c] >= 0.0
        all_answers = results[kind][m][c]
        assert facts * 2 / 3 - 1e-9 <= all_answers <= facts * 2 / 3 + 1 / 3 + 1e-9
    # 2 seeds x 2 examples x (2 facts + closing word); MQAR: 4 keys each.
    assert results["n_answers"] == {
        "prompt_retention": {"16": 12, "32": 12},
        "prompt_retention_b50": {"16": 12, "32": 12},
        "mqar": {"l32_kv4_voc64": 16},
    }
    assert results["config"]["distractor_facts"] == [0, 50]
    assert results["config"]["seeds"] == [0, 1]
    table = (workdir / "results.md").read_text()
    assert "| true_grad |" in table and "| 16 | 32 |" in table
    assert "facts only (closing word excluded)" in table
    assert "prompt_retention (f2, 50% distractor facts)" in table
    assert (workdir / "recall_vs_distance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_and_table_of_an_mqar_distance_curve(tmp_path):
    mqar = ["l128_kv8_voc256_d0", "l128_kv8_voc256_d64", "l128_kv8_voc256_d1024"]
    assert report.mqar_distances(mqar) == dict(zip(mqar, [0, 64, 1024], strict=True))
    assert report.mqar_distances(["l128_kv8_voc256", "l64_kv4_voc256_d64"]) == {}
    assert report.mqar_distances(["l128_kv8_voc256"]) == {}
    row = {c: 0.5 for c in mqar}
    results = {
        "config": {"distances": [], "num_facts": 4, "mqar": mqar, "seeds": [0], "num_examples": 2},
        "prompt_retention": {},
        "mqar": {"none": row, "prosg": row},
        "mqar_std": {"none": row, "prosg": row},
        "perplexity": {"prompt_retention": {}, "mqar": {"none": row, "prosg": row}},
        "n_answers": {"prompt_retention": {}, "mqar": dict.fromkeys(mqar, 16)},
    }
    results["config"]["seed_meaning"] = "-"
    table = report.results_table(results)  # MQAR only: no empty prompt_retention tables
    assert "prompt_retention" not in table and "| prosg | 50.0% ± 50.0% |" in table
    assert table.rstrip().endswith("l128_kv8_voc256_d1024: 16")
    report.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results["config"]["mqar"] = mqar[:1]  # no curve and no prompt_retention: no plot
    report.plot(results, tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def test_generation_agrees_with_teacher_forcing(trained_run):
    run = pj.load_run(trained_run[0])
    for name, method in (
        ("prompt_retention/d32_f2_n0_val0_t4", "prosg"),
        ("mqar/l32_kv4_voc64_n0_val0_t4", "repeat_prompt"),
    ):
        es = scoring.load_eval_set(
            name, 2, (0, 1), str(trained_run[0] / "tfds"), tokenizer=run.tokenizer
        )
        _, _, tf_hits, tf_first = scoring.teacher_forced(run, es, method, 8)
        assert np.array_equal(scoring.exact_match(run, es, method, 8), tf_hits)
        # The first generated token is the teacher-forced argmax after the context.
        gen = scoring.complete_batch(
            run,
            es.prompts,
            es.prompt_lengths,
            es.contexts,
            context_lengths=es.context_lengths,
            max_new_tokens=3,
            method=method,
        )
        np.testing.assert_array_equal(gen[:, 0], tf_first, err_msg=name)


def test_block_reading_equals_one_pass(trained_run):
    """Reading the continuation in blocks with the state carried is the one-pass forward."""
    run = pj.load_run(trained_run[0])
    es = scoring.load_eval_set(
        "prompt_retention/d32_f2_n0_val0_t4",
        2,
        (0, 1),
        str(trained_run[0] / "tfds"),
        tokenizer=run.tokenizer,
    )
    for method in ("none", "prosg"):  # the two readers: without deltas and with them
        cfg = method_config(run.prosg_cfg, method)
        sg = run.sg_params if method == "prosg" else None
        arrays = datasets.make_prosg_batch(
            es.examples,
            prompt_len=max(len(e["prompt"]) for e in es.examples),
            cont_len=max(len(e["cont"]) for e in es.examples),
            loss_on="answers",
            answer_weight=1.0,
        )
        logits, _, _ = pj.prosg.continuation_logits(
            run.model_cfg, run.params, sg, cfg, batch=datasets.to_batch(arrays)
        )
        logp = np.asarray(jax.nn.log_softmax(logits, -1))
        targets = arrays["targets"]
        want_nll = -(np.take_along_axis(logp, targets[..., None], -1)[..., 0] * arrays["loss_mask"])
        want_hits = []
        for e, ex in enumerate(es.examples):
            pred = logp[e].argmax(-1)
            for a, b in zip(ex["answer_start"], ex["answer_end"], strict=True):
                want_hits.append(np.array_equal(pred[a:b], ex["cont"][a:b]))
        for block in (16, 512):  # many blocks, one
            nll, count, hits, _ = scoring.teacher_forced(run, es, method, 3, block=block)
            np.testing.assert_allclose(nll, want_nll.sum(-1), rtol=1e-5, err_msg=method)
            np.testing.assert_array_equal(count, arrays["loss_mask"].sum(-1))
            np.testing.assert_array_equal(hits, want_hits, err_msg=f"{method} block {block}")


def test_eval_compiles_a_handful_of_programs(evaluated):
    """One prompt program per method, the block readers shared by every distance."""
    timing = evaluated[1]["eval_timing"]
    # 4 methods x (prompt_retention, MQAR prompt widths) derive programs + the readers
    assert 0 < timing["programs"] <= 12, timing
    assert {"compile_s", "data_s", "derive_s", "read_s"} <= set(timing)


def test_eval_user_errors(trained_run, tmp_path):
    config = tiny_config()
    with pytest.raises(UserError, match="no trained run"):
        evaluation.evaluate(config, tmp_path)
    config.eval.methods = "none,beam"
    with pytest.raises(UserError, match="config.eval.methods"):
        evaluation.evaluate(config, trained_run[0])
    config = tiny_config()
    config.eval.split = "train"  # never scored: it is what the model saw
    with pytest.raises(UserError, match="config.eval.split"):
        evaluation.evaluate(config, trained_run[0])
    for bad in ("0,0", "150", "-5"):
        config = tiny_config()
        config.eval.distractor_facts = bad
        with pytest.raises(UserError, match="distractor_facts"):
            evaluation.evaluate(config, trained_run[0])
    for bad in (-1, 3):  # the prompts hold 2 facts
        config = tiny_config()
        config.eval.num_queries = bad
        with pytest.raises(UserError, match="num_queries"):
            evaluation.evaluate(config, trained_run[0])


def test_eval_one_question_per_prompt(trained_run, tmp_path):
    """eval.num_queries=1 scores one fact and the closing word per prompt."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_run[0], workdir)  # eval writes results into its workdir
    config = tiny_config()
    config.eval.methods = "none"
    config.eval.exact_match = "teacher_forced"
    config.eval.distances = "16"
    config.eval.mqar = ""
    config.eval.num_queries = 1
    results = evaluation.evaluate(config, workdir)
    assert results["n_answers"]["prompt_retention"] == {"16": 8}  # 2 seeds x 2 examples x 2
    assert results["config"]["num_queries"] == 1
    assert "prompt_retention (f2, 1 question)" in (workdir / "results.md").read_text()


def test_eval_split_selects_the_examples(trained_run):
    """Tuning on validation scores the validation records, not the test ones."""
    run = pj.load_run(trained_run[0])
    directory = str(trained_run[0] / "tfds")
    base = "mqar/l32_kv4_voc64"
    spec = tasks.parse_dataset(base)
    prompts = {}
    for split in EVAL_SPLITS:
        name = scoring.eval_name(base, 4, split)
        es = scoring.load_eval_set(name, 2, (0, 1), directory, tokenizer=run.tokenizer, split=split)
        prompts[split] = [e["prompt"].tolist() for e in es.examples]
        want = [mqar.make_example(spec.config, split, i)["tokens"][:8].tolist() for i in range(4)]
        assert prompts[split] == want, split
    assert prompts["validation"] != prompts["test"]


def test_eval_rows_on_named_bases(trained_run, tmp_path):
    """``method@init`` / ``method@name`` score that base checkpoint, not the trained run."""
    import jax

    workdir = tmp_path / "run"
    shutil.copytree(trained_run[0], workdir)
    run = pj.load_run(workdir)
    init = tmp_path / "init.safetensors"
    shutil.copy(workdir / "base.safetensors", init)  # the very weights of the run
    info = json.loads((workdir / "run.json").read_text())
    assert info["init_from"] == ""  # the fixture trained its base from scratch
    info["init_from"] = str(init)  # as if it had started from init.safetensors
    (workdir / "run.json").write_text(json.dumps(info))
    control = pj.save_rwkv(  # other weights of the same shape
        tmp_path / "control.safetensors",
        run.model_cfg,
        jax.tree.map(lambda x: x * 0.5, run.params),
    )
    config = tiny_config()
    config.init_from = str(init)
    config.eval.models = f"control={control}"
    config.eval.methods = "none@init,none,repeat_prompt@control,none@control,prosg"
    config.eval.exact_match = "teacher_forced"
    config.eval.distances = ""
    results = evaluation.evaluate(config, workdir)
    labels = ["none@init", "none", "repeat_prompt@control", "none@control", "prosg"]
    assert list(results["mqar"]) == labels
    assert results["config"]["models"] == {"init": str(init), "control": str(control)}
    ppl = {m: results["perplexity"]["mqar"][m]["l32_kv4_voc64"] for m in labels}
    assert ppl["none@init"] == ppl["none"]  # the same weights give the same numbers
    assert ppl["none@control"] != ppl["none"]
    assert ppl["repeat_prompt@control"] != ppl["none@control"]
    table = (workdir / "results.md").read_text()
    assert "| none@init |" in table and f"`@control` = `{control}`" in table


def test_eval_row_errors(trained_run, tmp_path):
    base = str(trained_run[0] / "base.safetensors")
    cases = {
        "prosg@init": "only the trained run has an SG module",
        "none@control": "names no model",
        "none,none": "distinct rows",
        "": "distinct rows",
        "greedy@init": "choose methods from",
    }
    for methods, message in cases.items():
        config = tiny_config()
        config.init_from = base
        config.eval.methods = methods
        with pytest.raises(UserError, match=message):
            evaluation.evaluate(config, trained_run[0])
    config = tiny_config()
    config.eval.methods = "none@init"  # no init_from: @init names nothing
    with pytest.raises(UserError, match="set config.init_from"):
        evaluation.evaluate(config, trained_run[0])
    config.init_from = base  # but the run was trained from scratch (run.json says so)
    with pytest.raises(UserError, match="started from 'scratch'.*drop the '@init' rows"):
        evaluation.evaluate(config, trained_run[0])
    for models, message in {
        "control": "is not name=path",
        "control=": "is not name=path",
        "init=" + base: "named twice",
        f"control={tmp_path}/missing.safetensors": "no such file",
    }.items():
        config = tiny_config()
        config.init_from = base
        config.eval.models = models
        with pytest.raises(UserError, match=message):
            evaluation.evaluate(config, trained_run[0])
