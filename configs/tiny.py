"""The default demo: a small causal hybrid on the built-in story corpus, byte tokens, CPU-sized
(about 9 minutes on 2 CPU cores; see the README for what it reaches).

    python train.py --config configs/tiny.py
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every key a config has; the other configs start from this and change what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0                        # parameters' initialisation and every training batch (batch s of seed)
    c.out_dir = "out"                 # the run directory: checkpoints/, metrics.jsonl
    c.init_from = "scratch"           # or a checkpoint: a model dir, a run dir or a published .pth
    c.tune = "all"                    # what trains: all, "state" (RWKV-5/6/7: an initial WKV state per layer only) or "lora" (adapters only)
    c.lora_rank = 8                   # tune="lora": the adapters' rank r (W + a @ b, a [in, r], b [r, out])
    c.lora_targets = ("blocks/*",)    # tune="lora": globs over parameter names; the linear maps' matrices they match get adapters
    c.eval_only = False               # True: score the checkpoint on the held-out data, train nothing
    c.num_train_steps = 650           # about 9 minutes on 2 CPU cores for the tiny hybrid
    c.max_train_minutes = ml_collections.FieldReference(None, field_type=float)   # stop early after this
    c.batch_size = 8                  # global batch, split over devices and processes
    c.grad_accum_steps = 1            # micro-batches per step (each batch_size / grad_accum_steps rows)
    c.learning_rate = 5e-3            # AdamW peak, after a linear warmup (3e-3 ended 3% higher here)
    c.min_learning_rate = 3e-4        # the end of the cosine decay
    c.warmup_steps = 30               # steps of linear warmup to learning_rate
    c.weight_decay = 0.1              # on the matrices of linear maps only
    c.beta1 = 0.9                     # AdamW's first-moment decay
    c.beta2 = 0.99                    # AdamW's second-moment decay
    c.grad_clip = 1.0                 # global gradient-norm clipping
    c.moe_aux_weight = 0.01           # weight of the MoE load-balancing loss
    # Logits alive at a time in the fused head loss (None: 2^23 on CPU, 2^28 on GPU).
    c.loss_chunk_elements = ml_collections.FieldReference(None, field_type=int)
    c.eval_every = 100                # steps between evaluations (loss and, on stories, valid stories)
    c.eval_batches = 4                # validation windows scored per eval: eval_batches * batch_size
    c.valid_story_samples = 64        # stories sampled per eval on the built-in corpus (0: none)
    c.log_every = 10                  # steps between metrics.jsonl lines
    c.checkpoint_every = 100          # steps between checkpoints (an evaluation also saves one)
    c.keep_checkpoints = 3            # the newest ones kept, plus the best by validation loss
    c.peak_flops = ml_collections.FieldReference(None, field_type=float)   # for MFU; known GPUs are detected
    # JAX's persistent compilation cache (microrwkv_jax/compilation_cache.py says where): a repeated
    # or resumed run loads its compiled steps instead of compiling them again.
    c.compilation_cache = True
    c.tokenizer = "byte"              # byte, gpt2, world (RWKV-5/6/7) or a tokenizer.json path
    c.dataset = "stories"             # the built-in corpus, a path/glob of .txt/.jsonl/.parquet, or tfds:NAME
    c.data = ml_collections.ConfigDict()
    c.data.num_train_stories = 40000  # built-in corpus: stories generated for training
    c.data.num_val_stories = 400      # built-in corpus: held-out stories (their entropy floor is exact)
    c.data.story_seed = 1234          # built-in corpus: the grammar's random seed
    c.data.val_fraction = 0.02        # other sources: the part held out (a text's last 2%, or 1 document in 50)
    # Local files: the held-out text or documents as their own path/glob (then nothing of `dataset`
    # is held out), or None to hold out `val_fraction` of `dataset`.
    c.data.val_dataset = ml_collections.FieldReference(None, field_type=str)
    # .txt files: "stream" reads them as written, one continuous stream of bytes (blank lines, line
    # ends, everything kept), held out by position; "eot" splits them into documents at each
    # <|endoftext|>, "blank_lines" at each blank line (separators dropped, documents held out by index).
    c.data.txt_split = "stream"
    c.data.text_field = "text"        # .jsonl and TFDS sources: the field holding the text
    c.data.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)   # TFDS: where it was prepared
    c.data.tfds_val_split = "validation"   # TFDS: the held-out split
    c.data.cache_dir = "data_cache"   # tokenised token files, made once and reused
    # Training windows start at a document boundary (end-of-text), so that every window holds a
    # whole story from its first token, as a sample does (False: anywhere in the stream). On this
    # corpus it takes the tiny hybrid from +33% to +12% above the floor at 650 steps (README).
    c.data.document_windows = True
    # The device mesh (microrwkv_jax/sharding.py): data x fsdp x tensor = the device count, -1 on
    # one axis for "the rest". data: batch split, parameters replicated. fsdp: batch split and every
    # parameter and its optimizer state split too (a model larger than one device). tensor: heads
    # and hidden units split. The default is plain data parallelism over every device.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # On a CPU: split it into this many devices for the mesh (e.g. 2 on 2 cores: XLA runs most of a
    # small model's operations on one thread, so data parallelism over one device per core keeps
    # both busy). None: one CPU device.
    c.cpu_devices = ml_collections.FieldReference(None, field_type=int)
    # Multi-host training (jax.distributed; or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ml_collections.FieldReference(None, field_type=str)   # HOST:PORT of process 0
    c.distributed.num_processes = ml_collections.FieldReference(None, field_type=int)   # processes in the job
    c.distributed.process_id = ml_collections.FieldReference(None, field_type=int)      # this process, 0 .. N-1
    c.model = ml_collections.ConfigDict()
    c.model.family = "hybrid"         # a preset of the registry: hybrid, rwkv, gpt (causal), published, gpt2, rwkv4
    c.model.layers = ml_collections.FieldReference(None, field_type=tuple)   # the causal block's sub-layers (None: the preset's)
    c.model.vocab_size = ml_collections.FieldReference(None, field_type=int)   # None: the tokenizer's, padded to 64
    c.model.block_size = 384          # context length of training windows (tokens)
    c.model.n_layer = 4               # blocks
    c.model.n_embd = 128              # width C
    c.model.n_head = 4                # heads of the WKV and of attention
    c.model.n_kv_head = 1             # key/value heads of grouped-query attention
    c.model.swa_window = 64           # tokens the sliding-window attention sees, itself included
    c.model.gqa_window = ml_collections.FieldReference(None, field_type=int)   # GQA's window (None: global causal)
    c.model.num_experts = 4           # MoE experts
    c.model.num_active_experts = 2    # MoE top-k
    c.model.expert_dim = 128          # hidden width of each expert
    c.model.mlp_ratio = 4             # the GPT baseline's MLP width, a multiple of n_embd
    c.model.bias = False              # biases on the RWKV linear layers and the final LayerNorm
    c.model.chunk_size = 32           # tokens per chunk of the chunked WKV operator
    c.model.rope_base = 10000.0       # rotary embedding base of the attention layers
    c.model.dtype = "auto"            # compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU), float32, bfloat16
    c.model.remat = False             # recompute each block's activations in the backward pass (less memory, one more forward pass)
    return c


def get_config():
    return base_config()
