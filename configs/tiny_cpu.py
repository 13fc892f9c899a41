"""The embedded default: a tiny byte-level RWKV-7 and its ProSG module, on a 2-core CPU.

``python train.py --config configs/tiny_cpu.py --workdir W`` starts from the
shipped base (``init_from``: pretrained on two CPU cores by
``pretrained/tiny_rwkv7_mqar_base.sh``, an MQAR warm-up and then text; ``base``
stage 0 steps here), trains the SG module on it (``prosg`` stage, 800 steps,
70% of each batch continuing from an empty state), then both together
(``joint`` stage, 1,000 steps: the base learns to read the deltas);
``python eval.py --config configs/tiny_cpu.py --workdir W`` measures recall vs
distance, with filler distractors and with distractor facts. Together they take
about 25 minutes on two quiet CPU cores. Every field can be overridden from the
command line, e.g. ``--config.train.prosg.steps=50``.

Dataset names (``data.train_mixture``, ``eval.*``) are TFDS names of the
generated datasets; names that are not predefined are built on the fly, e.g.
``prompt_retention/d128_f4_n2000`` (distance 128, 4 facts, 2,000 training
examples) or ``mqar/l128_kv8_voc256`` (vocabulary 256, so it fits the byte
model). See ``prosg_jax.tasks.parse_dataset`` for the grammar.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # seeds parameter init, data shuffling and the SG module
    config.tokenizer = "byte"  # "byte" (258 ids) or "world" (65,536 ids)
    # A base model to start from (.pth/.safetensors in the official layout, e.g. a
    # shipped pretrained/*.safetensors); "" trains the base from scratch.
    config.init_from = "pretrained/tiny_rwkv7_mqar_base.safetensors"  # its .json: how it was made
    # SG params to start from (a run directory or a prosg.safetensors): the ProSG stages
    # train on from them, and eval.py without a workdir run evaluates them on init_from.
    # "" = a fresh SG module.
    config.sg_from = ""
    config.distributed = False  # call jax.distributed.initialize() (multi-host runs)

    # Device mesh: batches are split over data*fsdp devices, params over fsdp.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # data-parallel axis size; -1 = all devices not used by fsdp
    config.mesh.fsdp = 1  # parameter-sharding axis size; -1 = all devices not used by data

    # Model shape, turned once into a frozen prosg_jax.RWKVConfig. With init_from set,
    # every field must agree with the checkpoint (it is checked before any step).
    config.model = ml_collections.ConfigDict()
    config.model.version = 7  # model family: 4 or 7 (RWKV), or "mamba2"
    config.model.vocab_size = 258  # the byte tokenizer's vocabulary
    config.model.d_model = 64  # residual width C
    config.model.n_layer = 2  # number of blocks L
    config.model.head_size = 32  # RWKV-7 head size N (C = H * N): 2 heads
    config.model.d_ffn = 0  # FFN width; 0 = 4 * d_model (Mamba-2: inner width, 0 = 2 * d_model)
    # Mamba-2 only (RWKV refuses other values): SSM state size N, B/C groups, conv width.
    config.model.d_state = 0
    config.model.n_groups = 1
    config.model.d_conv = 4
    config.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 master weights
    config.model.wkv_impl = "auto"  # time recurrence: auto (fastest here) | scan | chunked

    # The ProSG module, turned into a frozen prosg_jax.ProSGConfig.
    config.prosg = ml_collections.ConfigDict()
    config.prosg.method = "prosg"  # the run's own method: none|prosg|true_grad|repeat_prompt
    config.prosg.rank = 8  # rank r of every delta (>= facts per prompt for an exact memory)
    config.prosg.matrices = "att.value,att.output,ffn.value"  # target matrices in a block
    config.prosg.layers = ""  # target layers, e.g. "2,3"; "" = every layer
    config.prosg.sg_hidden = 64  # hidden width of the SG predictor
    config.prosg.key_dim = 32  # width of the pooling keys (pooling="query")
    config.prosg.pooling = "query"  # rank-r compression: query|sketch|power
    config.prosg.power_iters = 2  # subspace iterations (pooling="power", true_grad)
    config.prosg.sketch_seed = 0  # seed of the fixed sketch / power-iteration start
    config.prosg.true_grad_steps = 1  # SGD steps of the true_grad ablation
    config.prosg.true_grad_lr = 1.0  # step size of the true_grad ablation
    config.prosg.sg_match_weight = 0.0  # weight of the synthetic-gradient matching loss
    config.prosg.sg_lookahead = True  # δ̂_t also reads h_{t+1}: the token a true gradient targets
    config.prosg.sg_match_lr = 1.0  # step size turning the true gradient into a target update
    # λ: (1 - λ) LM loss + λ KL(base without deltas from the prompt's state ‖ model)
    config.prosg.distill_weight = 0.0
    config.prosg.segment_len = (
        0  # > 0: one delta per segment of this many tokens, summed (sessions)
    )

    # Training data (generated locally into data_dir, deterministic, built once).
    config.data = ml_collections.ConfigDict()
    config.data.data_dir = ""  # TFDS data dir; "" = <workdir>/tfds
    # Datasets with mixture weights ("name:weight,..."), optionally a curriculum of
    # phases by stage step ("0=A:1;300=A:1,B:1"). Each batch comes from one dataset.
    config.data.train_mixture = (
        "prompt_retention/d64_f4_n4000:2,prompt_retention/d256_f4_n4000:2,"
        "mqar/l128_kv8_voc256_n4000:1"
    )
    config.data.loss_on = "all"  # "answers": score answer tokens only; "all": every token
    config.data.answer_weight = 4.0  # weight of answer tokens relative to others (loss_on="all")
    config.data.seq_len = 512  # row length of packed base-stage batches
    config.data.prompt_len = 0  # ProSG prompt width P (tokens); 0 = from the data
    config.data.cont_len = 0  # ProSG continuation width K; 0 = from the data (longer: cut)
    config.data.num_workers = 0  # grain worker processes (0 = read in the main process)

    # Training: stages run in order; each has its own steps, batch size and schedule.
    config.train = ml_collections.ConfigDict()
    # Any of base (the LM), prosg (SG module), joint (both). The default: the SG module on
    # the frozen shipped base, then both together (the base learns to read the deltas).
    config.train.stages = "base,prosg,joint"
    for name, steps, lr, batch in (("base", 0, 3e-3, 8), ("prosg", 800, 3e-3, 8)):
        stage = ml_collections.ConfigDict()
        stage.steps = steps  # optimizer micro-steps (batches) of this stage; 0 = skip training
        stage.lr = lr  # peak learning rate
        stage.warmup_steps = 20  # linear warmup, then (constant and) cosine to min_lr_ratio * lr
        stage.batch_size = batch  # global batch: packed rows (base) or examples (prosg/joint)
        stage.mixture = ""  # this stage's datasets/curriculum; "" = data.train_mixture
        config.train[name] = stage
    config.train.joint = config.train.prosg.copy_and_resolve_references()
    config.train.joint.steps = 1000  # base + SG module; 0 leaves the shipped base frozen
    config.train.min_lr_ratio = 0.1  # final learning rate of the cosine, relative to lr
    config.train.decay_frac = 1.0  # cosine over this last share of steps; lr at peak before
    # ProSG stages: this share of each batch continues from an empty recurrent state, so
    # the deltas alone must carry the prompt (as after a long generation). 0.7 chosen on
    # validation (facts, D=64/1024/4096): 59.4/59.9/51.6% vs 55.7/55.2/48.4% (0.9) and
    # 64.1/59.9/30.2% (0.5).
    config.train.forget_frac = 0.7
    # What those rows continue from: "empty", or "other" (the state another example's
    # prompt left, which holds other facts, as after a generation that wrote some).
    config.train.forget_state = "empty"
    # Joint stage: 0 trains the whole base with the SG module; r > 0 keeps the base frozen
    # and trains a rank-r LoRA on the ProSG target matrices instead (merged on export).
    config.train.lora_rank = 0
    config.train.weight_decay = 0.01  # AdamW decay on matrices (not norms/embeddings/scales)
    config.train.b1 = 0.9  # Adam beta1
    config.train.b2 = 0.99  # Adam beta2
    config.train.eps = 1e-8  # Adam epsilon
    config.train.grad_clip = 1.0  # global-norm gradient clipping
    config.train.grad_accum = 1  # micro-batches per optimizer update (optax.MultiSteps)
    config.train.log_every = 10  # steps between metrics lines (jsonl, TensorBoard, bar)
    config.train.checkpoint_every = 50  # steps between orbax checkpoints
    config.train.keep_checkpoints = 2  # checkpoints kept per stage
    config.train.progress_bar = True  # tqdm bar with ETA on stderr

    # Evaluation (eval.py): recall vs distance on the prompt_retention test split.
    config.eval = ml_collections.ConfigDict()
    # Rows compared: a method on the trained run, or "method@model" on a base checkpoint
    # without an SG module: @init = init_from, @name = eval.models' name (true_grad,
    # per-example backprop over the prompt, is the slow one).
    config.eval.methods = "none,repeat_prompt,true_grad,prosg"
    config.eval.models = ""  # more base checkpoints for rows, "name=path,..."
    # "generate": greedy generation per answer; "teacher_forced": the same score from
    # one teacher-forced pass per example (exact for greedy decoding, ~5x cheaper).
    config.eval.exact_match = "generate"
    config.eval.distances = "64,256,1024,4096"  # distractor lengths D: every built one
    config.eval.num_facts = 4  # facts per prompt in the evaluated datasets
    # Facts asked per prompt: 0 asks all, in random order, so the last answer follows
    # from the others (elimination); 1 asks one, which only the names can answer.
    config.eval.num_queries = 0
    # Share (%) of distractor sentences that are facts about other names (0 = filler only).
    config.eval.distractor_facts = "0,50"
    config.eval.mqar = "l128_kv8_voc256"  # MQAR configs evaluated ("" = none)
    config.eval.split = "test"  # report on test; "validation" to tune (choose configs) on
    config.eval.num_examples = 8  # examples per distance and seed
    config.eval.seeds = "0,1,2"  # seed s scores examples [s*n, (s+1)*n) of the split
    config.eval.batch_size = 32  # rows per jitted generation batch
    return config
