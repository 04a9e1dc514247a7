"""The authors' search in PyTorch, written after their released code: the masked layers, the
networks (module names as `jackpot_jax.interop.torch_convert` writes them), our weights, scores
and keep counts loaded into them, and one training step (as written, or in channels-last
memory, through `torch.compile`, under bfloat16 autocast), which bench_step.py times beside
jackpot_jax's step.

A masked layer keeps its frozen ``weight`` and learns scores, called ``mask`` as in the official
code; its forward multiplies the weight by a binary mask of ``|scores|`` keeping exactly
``keep`` entries, passed straight through in the backward pass.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Masks and masked layers
# ---------------------------------------------------------------------------------------------


def sort_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """1 everywhere but on the ``n - keep`` lowest scores (sort order breaks ties), as the
    official code's mask function (which prunes the lowest ``int(p * n)``)."""
    flat = scores.flatten()
    _, idx = flat.sort()
    return torch.ones_like(flat).scatter(0, idx[: flat.numel() - keep], 0.0).view(scores.shape)


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The same count kept with `torch.topk` (equal to `sort_mask` up to ties; ~3x faster than
    a full sort on 2 CPU cores for the mask sizes here)."""
    flat = scores.flatten()
    idx = flat.topk(keep, sorted=False).indices
    return torch.zeros_like(flat).scatter(0, idx, 1.0).view(scores.shape)


class GetMask(torch.autograd.Function):
    """The mask forward (`sort_mask` if ``sort`` else `topk_mask`), the identity backward."""

    @staticmethod
    def forward(ctx, scores, keep, sort):
        return (sort_mask if sort else topk_mask)(scores, keep)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class Scored:
    """What the masked layers add to torch's: frozen weights and a ``mask`` of scores."""

    def setup_scores(self, keep, sort: bool = False):
        self.keep, self.sort = keep, sort
        self.weight.requires_grad_(False)
        self.mask = nn.Parameter(torch.ones_like(self.weight))

    def masked_weight(self):
        return self.weight * GetMask.apply(self.mask.abs(), self.keep, self.sort)


class MaskedConv2d(Scored, nn.Conv2d):
    def forward(self, x):
        w = self.masked_weight()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaskedLinear(Scored, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.masked_weight(), self.bias)


class MaskedQKV(Scored, nn.Linear):
    """timm's fused q/k/v Linear with three masks in one: each (D, D) block of the fused
    (3D, D) weight keeps its own count, as our q, k, v layers do."""

    def setup_scores(self, keep, sort: bool = False):
        super().setup_scores(list(keep), sort)

    def forward(self, x):
        s = self.mask.abs().chunk(3, dim=0)
        m = torch.cat([GetMask.apply(si, k, self.sort) for si, k in zip(s, self.keep)], dim=0)
        return F.linear(x, self.weight * m, self.bias)


def masked(net: nn.Module, counts: dict, sort: bool = False) -> nn.Module:
    """``net`` with the conv/linear modules named in ``counts`` replaced by masked ones keeping
    exactly that many weights (a list of three counts: a fused q/k/v Linear); ``sort``: the
    official full sort instead of `torch.topk`."""
    named = dict(net.named_modules())
    unknown = sorted(set(counts) - set(named))
    if unknown:
        raise ValueError(f"keep counts for modules the torch network lacks: {unknown}")
    for name, keep in counts.items():
        old = named[name]
        if type(old) is nn.Conv2d:
            new = MaskedConv2d(
                old.in_channels,
                old.out_channels,
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                old.groups,
                old.bias is not None,
            )
        elif type(old) is nn.Linear and isinstance(keep, list):
            new = MaskedQKV(old.in_features, old.out_features, old.bias is not None)
        elif type(old) is nn.Linear:
            new = MaskedLinear(old.in_features, old.out_features, old.bias is not None)
        else:
            raise ValueError(f"{name}: {type(old).__name__} cannot be masked")
        new.setup_scores(keep, sort)
        parent, _, attr = name.rpartition(".")
        setattr(named[parent] if parent else net, attr, new)
    return net


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class LeNet5(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.classifier = nn.Linear(500, classes)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.classifier(F.relu(self.fc1(x.flatten(1))))


class Block(nn.Module):
    """CIFAR BasicBlock with the option-A shortcut (strided identity, zero channel padding)."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        if self.pad:
            s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + s)


class CifarResNet(nn.Module):
    """The official layout: stages ``layer1..3``, classifier ``fc`` a 1x1 conv with bias."""

    def __init__(self, classes, n, width):
        super().__init__()
        w = 16 * width
        self.conv1, self.bn1 = nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)
        cin = w
        for stage, planes in enumerate((w, 2 * w, 4 * w)):
            blocks = []
            for i in range(n):
                blocks.append(Block(cin, planes, 2 if stage and not i else 1))
                cin = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Conv2d(cin, classes, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3), keepdim=True)).flatten(1)


class VGGCifar(nn.Module):
    """VGG-19 for CIFAR: conv-BN-ReLU stages, the official 1x1-conv classifier."""

    def __init__(self, classes):
        from jackpot_jax.models import vgg  # the same layer list as ours

        super().__init__()
        layers, cin = [], 3
        for v in vgg.CFGS["vgg19"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, 1, 1, bias=False), nn.BatchNorm2d(v)]
                layers.append(nn.ReLU(inplace=True))
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(512, classes, 1)

    def forward(self, x):
        return self.classifier(self.features(x)).flatten(1)


def resnet50(classes):
    """torchvision's ResNet-50."""
    import torchvision

    return torchvision.models.resnet50(num_classes=classes)


def vit_small(classes):
    """timm's ViT-S/16 (`vit_small_patch16_224`): the layout our converter writes."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_classes=classes
    )


# benchmark model name -> builder(classes)
NETWORKS = {
    "lenet5": LeNet5,
    "resnet20": lambda classes: CifarResNet(classes, 3, 1),
    "resnet32x2": lambda classes: CifarResNet(classes, 5, 2),
    "vgg19_cifar": VGGCifar,
    "resnet50": resnet50,
    "vit_small": vit_small,
}


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


def make_step(
    net,
    x,
    y,
    *,
    search: bool,
    sgd: dict,
    label_smoothing: float,
    device: str,
    compile: bool = False,
    bfloat16: bool = False,
):
    """A function running one training step of ``net`` (already on ``device``, in train mode)
    on the batch ``x``, ``y``; returns (ms, loss). ``search``: only the scores (``*.mask``)
    learn, every weight, bias and BatchNorm affine is frozen; else every parameter learns.
    ``sgd``: `torch.optim.SGD`'s lr, momentum, weight_decay, nesterov. ``compile``: the
    forward through `torch.compile`; ``bfloat16``: under `torch.autocast`, and the function
    then carries ``check_loss0``, the same network's step-0 loss in float32 (eager, no update;
    BatchNorm on the batch's statistics), on which the step is checked."""
    if search:
        for n, p in net.named_parameters():
            p.requires_grad_(n.endswith(".mask"))
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], **sgd)
    forward = torch.compile(net) if compile else net
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        loss.backward()
        opt.step()
        sync()
        return (time.perf_counter() - t0) * 1e3, float(loss.detach())

    if bfloat16:
        # Checked on the network, not on rounding: a bfloat16 loss can move by percents (e.g.
        # ResNet-50 on 2 images of 32x32).
        with torch.no_grad():
            logits = net(x)
        run.check_loss0 = float(F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing))
    return run


# ---------------------------------------------------------------------------------------------
# Our weights in the authors' step
# ---------------------------------------------------------------------------------------------


def weights_from_ours(arch: str, variables, scores=None, budget=None):
    """(state_dict, {torch module name: keep count}) of our network ``arch`` (a registry name)
    through our converter; with ``scores`` and ``budget`` (path-keyed trees) our scores ride
    along as the official ``<layer>.mask`` tensors and the counts are the budget's."""
    from jackpot_jax import method as jm
    from jackpot_jax import utils
    from jackpot_jax.interop import torch_convert

    variables = utils.as_numpy(variables)
    flat = None if scores is None else utils.as_numpy(jm.flatten_paths(scores))
    state_dict = torch_convert.export_to_torch_state_dict(arch, variables, scores=flat)
    counts = {}
    if budget is not None:
        targets = torch_convert.kernel_targets(arch, variables)
        for path, keep in jm.flatten_paths(budget).items():
            if path not in targets:
                raise ValueError(f"budget path {path!r}: expected a '<module>/kernel' path")
            module, part = targets[path]
            if part is None:
                counts[module] = int(keep)
            else:  # a ViT's q, k, v: three counts for the three blocks of one fused weight
                counts.setdefault(module, [None, None, None])[part] = int(keep)
    return state_dict, counts


def runner(
    name: str,
    classes: int,
    weights,
    images,
    labels,
    *,
    channels_last: bool = False,
    sort: bool = False,
    **step,
):
    """`make_step` (``step``: its keyword arguments) of network ``name`` (a key of `NETWORKS`)
    with ``weights`` (from `weights_from_ours`; ``sort``: the official sorted mask) on the
    NHWC batch ``images``, ``labels`` (``channels_last``: network and batch in NHWC memory)."""
    state_dict, counts = weights
    net = masked(NETWORKS[name](classes), counts, sort)
    net.load_state_dict(state_dict, strict=True)
    net = net.to(step["device"]).train()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(step["device"])
    y = torch.from_numpy(labels.astype(np.int64)).to(step["device"])
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return make_step(net, x, y, **step)


# ---------------------------------------------------------------------------------------------
# Language models: transformers' LlamaForCausalLM with straight-through N:M masks
# ---------------------------------------------------------------------------------------------


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """0/1 mask of a Linear weight's scores (out, in): the ``n`` largest of every ``m``
    consecutive entries along the input axis (each row), by `torch.topk` (ties: torch's
    choice; the benchmark's scores have none)."""
    out, inp = scores.shape
    groups = scores.reshape(out, inp // m, m)
    idx = groups.topk(n, dim=-1, sorted=False).indices
    return torch.zeros_like(groups).scatter_(-1, idx, 1.0).reshape(out, inp)


class GetNMMask(torch.autograd.Function):
    """`nm_mask` forward, the identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, scores, n, m):
        return nm_mask(scores, n, m)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class MaskedNMLinear(nn.Linear):
    """A Linear with a frozen ``weight`` and trained ``scores`` of its shape: it computes
    ``x @ (weight * h(|scores|)).T (+ bias)``, ``h`` the straight-through N:M mask."""

    def setup_scores(self, n: int, m: int):
        self.n, self.m = n, m
        self.weight.requires_grad_(False)
        self.scores = nn.Parameter(torch.ones_like(self.weight))

    def masked_weight(self):
        return self.weight * GetNMMask.apply(self.scores.abs(), self.n, self.m)

    def forward(self, x):
        return F.linear(x, self.masked_weight(), self.bias)


def masked_nm(net: nn.Module, names, n: int, m: int) -> nn.Module:
    """``net`` with the Linear modules ``names`` replaced by `MaskedNMLinear` (same weights
    and biases, scores of ones: set them after)."""
    named = dict(net.named_modules())
    missing = sorted(set(names) - set(named))
    if missing:
        raise ValueError(f"scores for modules the torch network lacks: {missing[:4]}")
    for name in names:
        old = named[name]
        if type(old) is not nn.Linear:
            raise ValueError(f"{name}: {type(old).__name__} is not an nn.Linear")
        new = MaskedNMLinear(old.in_features, old.out_features, old.bias is not None)
        new.to(old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        new.setup_scores(n, m)
        parent, _, attr = name.rpartition(".")
        setattr(named[parent] if parent else net, attr, new)
    return net


def lm_module_name(path: str) -> str:
    """Our Llama kernel path (``layers_3/mlp/up_proj/kernel``) -> transformers' module name
    (``model.layers.3.mlp.up_proj``)."""
    parts = path.split("/")
    if parts[-1] != "kernel" or not parts[0].startswith("layers_"):
        raise ValueError(f"{path!r}: expected 'layers_<i>/<group>/<name>/kernel'")
    return ".".join(["model", "layers", parts[0][len("layers_") :], *parts[1:-1]])


def lm_network(
    hf_config: dict, state_dict: dict, scores: dict, n: int, m: int, *, device: str = "cpu"
):
    """transformers' ``LlamaForCausalLM`` of ``hf_config`` with ``state_dict`` (both from
    `jackpot_jax.interop.hf_lm.lm_to_hf`) loaded strictly, and every Linear named in
    ``scores`` ({module name: (out, in) numpy scores}) a `MaskedNMLinear` holding those
    scores; train mode, SDPA attention, no KV cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict(hf_config)  # as from the config.json lm_to_hf describes
    config.use_cache = False
    config._attn_implementation = "sdpa"
    net = LlamaForCausalLM(config)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}  # writable
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    net = masked_nm(net, list(scores), n, m)
    with torch.no_grad():
        named = dict(net.named_modules())
        for name, s in scores.items():
            named[name].scores.copy_(torch.from_numpy(np.ascontiguousarray(s)))
    return net.to(device).train()


def state_bytes(net, opt) -> int:
    """Bytes of a step's resident state: the network's parameters and buffers (tied ones
    once) and the optimiser's state tensors."""
    seen, total = set(), 0
    tensors = list(net.parameters()) + list(net.buffers())
    tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def make_lm_step(
    net,
    tokens,
    labels,
    *,
    adamw: dict,
    device: str,
    compile: bool = False,
    bfloat16: bool = False,
):
    """A function running one search step of the masked LM ``net``: next-token cross-entropy
    of ``net(tokens).logits`` (float32) against ``labels`` (already shifted), backward to the
    scores only (every weight, norm and the embedding frozen), `torch.optim.AdamW` (``adamw``:
    lr, betas, eps, weight_decay; fused) on the scores, gradients freed after the update;
    returns (ms, loss). ``compile``: the network through `torch.compile`; ``bfloat16``: under
    autocast, with ``check_loss0`` the float32 step-0 loss (as `make_step`). The function's
    ``state_bytes()`` gives its resident state (`state_bytes`)."""
    for name, p in net.named_parameters():
        p.requires_grad_(name.endswith(".scores"))
    trainable = [p for p in net.parameters() if p.requires_grad]
    try:
        opt = torch.optim.AdamW(trainable, fused=True, **adamw)
    except (RuntimeError, TypeError):  # a torch without the fused kernel for this device
        opt = torch.optim.AdamW(trainable, **adamw)
    forward = torch.compile(net) if compile else net
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def loss_of(model):
        logits = model(input_ids=tokens).logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    def run():
        sync()
        t0 = time.perf_counter()
        with autocast:
            loss = loss_of(forward)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # freed here: the next step starts without them
        sync()
        return (time.perf_counter() - t0) * 1e3, float(loss.detach())

    if bfloat16:
        with torch.no_grad():
            run.check_loss0 = float(loss_of(net))
    run.state_bytes = lambda: state_bytes(net, opt)
    run.optimizer = opt
    return run
