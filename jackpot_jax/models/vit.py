"""Vision Transformers (class-token ViT, pre-LayerNorm blocks) in torchvision's / timm's form.

The computation is that of torchvision's `VisionTransformer` and of timm's standard
`VisionTransformer` (class token, learned position embedding, `global_pool='token'`): a
patch embedding (a convolution with kernel = stride = patch, bias), a class token, a learned
position embedding, pre-LayerNorm encoder blocks (multi-head self-attention with biases; an
MLP of two Dense layers with exact, erf GELU), a final LayerNorm (eps 1e-6 everywhere) and a
linear head on the class token. Dropout is off by default.

Parameter names: `patch_embed/{kernel,bias}` (HWIO), `cls_token` (1, 1, D), `pos_embedding`
(1, 1 + N, D), `blocks_{i}/ln1`, `blocks_{i}/attn/{query,key,value,out}`, `blocks_{i}/ln2`,
`blocks_{i}/mlp/{fc1,fc2}`, `norm`, `classifier`.

q, k and v are three layers, three `(D, D)` Dense kernels, not one fused `(D, 3D)` kernel
and not Flax's `MultiHeadDotProductAttention` `(D, heads, head_dim)` kernels:

* they are three different maps (queries, keys and values feed different products), and
  their weights need not share a scale: ranked as one layer under a per-layer budget
  (`uniform`, `erk`, the counts `global_magnitude` fixes), one of them could lose most of
  its weights to the others; as three layers each keeps its own share, as every separate
  projection does in per-layer pruning of transformers;
* a 2-D `(in, out)` kernel is what every Linear is here: ERK's `sum(dims) / prod(dims)`
  sees `D + D` over `D * D`, and N:M groups run along axis -2, the input (reduction) axis of
  the matmul. A 3-D `(D, heads, head_dim)` kernel would give ERK three dims and put the N:M
  groups along the heads axis instead of the inputs.

torch's fused `(3D, D)` `in_proj_weight` / `qkv.weight` is their concatenation: the
converter splits and joins it exactly (rows `[0, D)` are q, `[D, 2D)` k, `[2D, 3D)` v).

The default prune filter (every leaf named `kernel`, except `classifier`) thus prunes the
patch embedding, q, k, v, the attention output and both MLP layers; LayerNorms, biases, the
class token, the position embedding and the head stay dense.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.models.common import PAD0, conv

LN_EPS = 1e-6

# torchvision's and timm's sizes: (width, depth, heads); the MLP is 4 x width wide.
SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def _layer_norm(name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it (the residual stream can have a large mean).
    return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name=name)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.zeros, name=name
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention: q, k, v and the output projection are Dense layers."""

    num_heads: int

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
        split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
        q, k, v = (split(_dense(d, name)(x)) for name in ("query", "key", "value"))
        y = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        return _dense(d, "out")(y.reshape(b, t, d))


class EncoderBlock(nn.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x)) (pre-LayerNorm)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        y = SelfAttention(self.num_heads, name="attn")(_layer_norm("ln1")(x))
        x = x + drop(y)
        y = _layer_norm("ln2")(x)
        y = _Mlp(self.mlp_dim, x.shape[-1], self.dropout_rate, name="mlp")(y, train)
        return x + y


class _Mlp(nn.Module):
    hidden: int
    out: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = drop(nn.gelu(_dense(self.hidden, "fc1")(x), approximate=False))
        return drop(_dense(self.out, "fc2")(x))


class ViT(nn.Module):
    """Class-token Vision Transformer on NHWC images of `image_size` x `image_size`.

    `image_size` fixes the position embedding's grid (`image_size // patch_size` a side);
    other input sizes are refused (resize the embedding with `resize_pos_embedding`).
    Sows `embed` (tokens after the position embedding) and `block{i}` (each block's output).
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 16
    image_size: int = 224
    num_classes: int = 1000
    dropout_rate: float = 0.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"this ViT takes NHWC inputs of {self.image_size}x{self.image_size} "
                f"(image_size={self.image_size}), got shape {tuple(x.shape)}; build it with "
                f"image_size={x.shape[1] if x.ndim == 4 else '?'} (model option image_size; "
                "the converter's --image-size resizes a checkpoint's position embedding)"
            )
        p = self.patch_size
        x = conv(
            self.width,
            (p, p),
            (p, p),
            padding=PAD0,
            kernel_init=nn.initializers.lecun_normal(),
            name="patch_embed",
        )(x)
        n = x.shape[0]
        x = x.reshape(n, -1, self.width)  # row-major patches, as torch's flatten(2)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.width)).astype(x.dtype), x], 1)
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(0.02),
            (1, 1 + self.grid * self.grid, self.width),
            jnp.float32,
        )
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos.astype(x.dtype))
        self.sow("intermediates", "embed", x)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate, name=f"blocks_{i}")(
                x, train
            )
            self.sow("intermediates", f"block{i}", x)
        x = _layer_norm("norm")(x)
        return nn.Dense(self.num_classes, name="classifier")(x[:, 0])


def vit(size: str, **kwargs) -> ViT:
    """A ViT of one of `SIZES` ('tiny', 'small', 'base', 'large', 'huge')."""
    width, depth, heads = SIZES[size]
    return ViT(width=width, depth=depth, num_heads=heads, mlp_dim=4 * width, **kwargs)


# ------------------------------------------------------------------ position embeddings


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _antialiased_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's `interpolate(mode='bicubic', antialias=True,
    align_corners=False)` along one axis: Keys' cubic (a = -0.5) stretched by the scale when
    shrinking, taps outside the input dropped and the rest renormalised."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = _cubic((np.arange(lo, hi) - center + 0.5) * inv)
        total = w.sum()
        out[i, lo:hi] = w / total if total != 0 else w
    return out


def resize_pos_embedding(
    pos_embedding, grid: tuple[int, int] | int, num_prefix_tokens: int = 1
) -> np.ndarray:
    """A (1, prefix + h*w, D) position embedding resized to `grid` (h, w) the way timm does it
    when it loads a checkpoint at another image size: the prefix rows (the class token's) are
    kept; the square grid part is resampled bicubically with antialiasing (torch's
    `F.interpolate(mode='bicubic', antialias=True, align_corners=False)`). float32 out."""
    pos = np.asarray(pos_embedding, np.float64)
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ValueError(f"position embedding must be (1, tokens, D), got {pos.shape}")
    h, w = (grid, grid) if isinstance(grid, int) else tuple(grid)
    prefix, body = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:]
    side = math.isqrt(body.shape[0])
    if side * side != body.shape[0]:
        raise ValueError(
            f"position embedding has {body.shape[0]} grid tokens after {num_prefix_tokens} "
            "prefix token(s): not a square grid"
        )
    body = body.reshape(side, side, -1)
    if (h, w) != (side, side):
        body = np.einsum(
            "ha,wb,abd->hwd",
            _antialiased_bicubic_matrix(side, h),
            _antialiased_bicubic_matrix(side, w),
            body,
        )
    return np.concatenate([prefix, body.reshape(1, h * w, -1)], 1).astype(np.float32)
