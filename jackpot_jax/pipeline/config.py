"""The defaults every config starts from (`configs/*.py` override what differs).

Search defaults are the official code's: SGD lr 0.1, momentum 0.9, no Nesterov,
cosine to 0 stepped per epoch, weight decay on the scores, batch 256, scores 1.0/0.95 from the
magnitude mask, |scores| ranked, one global magnitude threshold fixing per-layer counts.
"""

import ml_collections
from ml_collections import config_dict

from jackpot_jax import method as jm


def _sgd(lr, epochs, weight_decay, momentum=0.9):
    # optimizer: "sgd" (torch's SGD: weight decay added to the gradient, momentum, the official
    # code) or "adamw" (optax.adamw: decoupled weight decay, betas b1 / b2; momentum and
    # nesterov unused); schedule: "cosine_epoch" (cosine stepped once per epoch, the official
    # code) or "cosine_step" (the same cosine stepped every optimiser step); batch_size: this
    # mode's global batch (0 = the config's batch_size)
    return ml_collections.ConfigDict(
        dict(
            optimizer="sgd",
            lr=lr,
            epochs=epochs,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            schedule="cosine_epoch",
            batch_size=0,
        )
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "search"  # pretrain | search | finetune | eval
    c.model = "lenet5"  # a name of jackpot_jax.models.MODEL_NAMES
    c.model_options = ml_collections.ConfigDict()  # e.g. {'width': 2}; num_classes from data
    c.dataset = "fashion_mnist"  # fashion_mnist | cifar10 | cifar100 | imagenet_folder | imagenet2012 | synthetic:<name>
    c.data_dir = ""  # where the dataset files are ("" = standard places)
    c.data_workers = -1  # loader processes; 0 = main process; -1 = one per core for
    # decoded files (image folders, tfds), 0 for in-memory arrays
    c.data_prefetch = 2  # batches made and placed on the devices ahead of the step
    c.image_size = 0  # ImageNet-style data only: crop size (0 = 224)
    c.val_examples = 5000  # held out of the training set for model selection
    c.split_seed = 0
    c.train_subset = 0  # 0 = all (a small number for smoke runs)
    c.test_subset = 0
    c.seed = 0
    c.batch_size = 256  # global batch, split across devices
    c.eval_batch_size = 1000
    c.label_smoothing = 0.0
    c.num_devices = 0  # 0 = all devices
    c.compute_dtype = "float32"  # | bfloat16: activations and masked weights (training steps)
    c.conv_impl = "auto"  # | xla | explicit: convolution gradients (jackpot_jax.kernels)
    # Multi-process (jax.distributed): set the three below, or distributed=True alone to let
    # JAX detect them (SLURM, Open MPI, Kubernetes). Empty = JAX's own detection.
    c.distributed = False
    c.coordinator_address = ""  # 'host:port' of process 0
    c.num_processes = config_dict.placeholder(int)
    c.process_id = config_dict.placeholder(int)
    c.resume = True  # False: move an existing run in --workdir aside, start over

    c.sparsity = 0.9  # fraction of prunable weights removed
    c.pretrained = ""  # checkpoint dir; "" = pretrain into <workdir>/pretrain
    c.checkpoint = ""  # eval: checkpoint dir, run workdir or jackpot.npz

    c.prune = ml_collections.ConfigDict()
    c.prune.include = ()  # regexes over '/'-joined param paths; () = every kernel
    c.prune.exclude = tuple(jm.DEFAULT_EXCLUDE)  # the classifier stays dense (official code)

    c.pretrain = _sgd(lr=0.1, epochs=200, weight_decay=5e-4)

    c.search = _sgd(lr=0.1, epochs=30, weight_decay=5e-4)
    c.search.init = "magnitude"  # warm-up mask: magnitude | snip | grasp | random | kaiming (none)
    c.search.score_kept = 1.0  # two-level score init (official code)
    c.search.score_pruned = 0.95
    c.search.use_abs = True
    c.search.distribution = "global_magnitude"  # | uniform | erk | global
    c.search.weights = "pretrained"  # | random (Fig. 2: search in a randomly initialised net)
    # How the mask follows the scores: "topk" (recomputed every step, the 2022 code) or "swap"
    # (a persistent mask updated after every step by balanced swaps, the 2023 code; set
    # use_abs=False for its raw-score ranking). swap_schedule "official" swaps every eligible
    # pair; "poly" a fraction swap_rate * (1 - epoch/epochs) ** swap_power of them.
    c.search.mask_update = "topk"
    c.search.swap_schedule = "official"
    c.search.swap_rate = 1.0
    c.search.swap_power = 4.0
    # N:M masks, e.g. "2:4": n kept of every m weights along each kernel's input axis, in the
    # search, its warm-up, fine-tuning baselines; replaces sparsity/distribution ("" = top-k).
    c.search.pattern = ""

    c.finetune = _sgd(lr=0.01, epochs=10, weight_decay=0.0)
    c.finetune.mask = "jackpot"  # | magnitude | snip | grasp | random (weight-tuning baselines)
    c.finetune.jackpot = ""  # search workdir or jackpot.npz; "" = search into <workdir>/search
    c.finetune.weights = "pretrained"  # | random (with mask='snip': SNIP + training from init)

    c.criteria = ml_collections.ConfigDict()
    c.criteria.snip_batches = 1
    c.criteria.grasp_per_class = 10  # GraSP code: 10 samples per class on CIFAR-10
    c.criteria.grasp_temperature = 200.0

    # mode='lm': a causal LM (pipeline/lm.py). The budget is sparsity (per output row, or per
    # layer with unstructured='layer') or search.pattern ('2:4'); the optimiser is search's.
    c.lm = ml_collections.ConfigDict()
    c.lm.source = ""  # "" = pretrained (a converted dir); 'smollm2', a .gguf or an HF dir
    c.lm.converter = "jackpot_jax.interop.lm_source:convert_lm_source"  # module:function
    c.lm.dataset = "shakespeare"  # | text (lm.path: a folder of .txt files or one file)
    c.lm.path = ""
    c.lm.seq_len = 256
    c.lm.max_train_tokens = 0  # 0 = all
    c.lm.max_eval_tokens = 0  # 0 = all of each held-out split
    c.lm.eval_batch_size = 4
    c.lm.calibration_samples = 128  # Wanda / SparseGPT: 128 windows (of 2048 in the papers)
    c.lm.calibration_batch = 8
    c.lm.baselines = ("magnitude", "wanda", "sparsegpt", "sparsegpt_update")
    c.lm.prior = "wanda"  # the search's warm-up mask: magnitude | wanda | sparsegpt
    c.lm.unstructured = "row"  # without a pattern: per output row (Wanda's count) | layer
    c.lm.steps = 0  # search steps; 0 = from lm.tokens
    c.lm.tokens = 0  # search budget in training tokens (rounded up to whole steps)
    c.lm.eval_every = 0  # steps between validation perplexities (0 = only at the end)
    c.lm.remat = False  # rematerialise each block in the backward pass
    c.lm.blocksize = 128  # SparseGPT
    c.lm.percdamp = 0.01
    c.lm.train = (
        "scores"  # scores (jackpot search) | weights (tune the prior's kept weights) | none
    )
    c.lm.evaluate_test = True  # False: no test perplexity (selection runs)
    c.lm.dense = True  # the dense model's perplexity
    c.lm.prior_masks = ""  # a folder with masks_<prior>.npz from another run
    c.lm.save_masks = ()  # baselines whose masks are saved as masks_<name>.npz
    c.lm.export = True  # False: final_mask.npz only, no jackpot.npz
    c.lm.keep_checkpoints = True
    return c


def cifar_config(model: str, dataset: str) -> ml_collections.ConfigDict:
    """The paper's CIFAR setting: batch 256, 200 pretraining epochs, 30 search epochs
    (the paper's "30(S)"; 10 also reported), weight decay 5e-4 on the scores, 90% sparsity."""
    c = base_config()
    c.model = model
    c.dataset = dataset
    c.batch_size = 256
    c.pretrain.epochs = 200
    c.search.epochs = 30
    c.search.weight_decay = 5e-4
    c.sparsity = 0.9
    return c
