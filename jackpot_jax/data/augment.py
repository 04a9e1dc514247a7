"""Image decoding and augmentation on the host (numpy, Pillow, libjpeg-turbo): uint8 in and out.

* CIFAR: `crop_flip`, torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, on a
  whole batch at once, its random offsets and flips drawn from per-example bits.
* ImageNet: `random_resized_crop` (RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) +
  RandomHorizontalFlip) and `center_crop` (Resize(256) + CenterCrop(224)), on encoded files or
  decoded arrays. Resampling is Pillow's bilinear filter, which widens its support when it
  shrinks (antialiasing): exactly what torchvision runs on the PIL images `ImageFolder` gives.
  JPEGs are decoded by libjpeg-turbo (simplejpeg) at the smallest DCT scale (1/2, 1/4, 1/8)
  that keeps the crop at least as large as its output, so a large crop of a large photo
  decodes at a fraction of its size; the box is mapped to the smaller image with fractional
  coordinates.

Every random choice is an argument (a `np.random.Generator` or per-example bits), so the
pipeline decides how it is keyed.
"""

from __future__ import annotations

import io
import math

import numpy as np
import simplejpeg
from PIL import Image

# The extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

# What a file that cannot be read or decoded raises (Pillow raises all of these for bad files).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

# libjpeg-turbo converts these to RGB the way Pillow does; CMYK/YCCK go through Pillow.
_TURBO_COLORSPACES = ('YCbCr', 'Gray', 'RGB')


# --------------------------------------------------------------------------------------
# CIFAR: pad, crop, flip a batch


def _uniform_below(bits: np.ndarray, shift: int, n: int) -> np.ndarray:
    # A 21-bit field mod n: the modulo bias is n / 2**21, below 1e-5 for n = 9.
    return ((bits >> np.uint64(shift)) & np.uint64((1 << 21) - 1)) % np.uint64(n)


def crop_flip(images: np.ndarray, bits: np.ndarray, padding: int = 4) -> np.ndarray:
    """torch RandomCrop(size, padding, fill 0) + RandomHorizontalFlip of a NHWC uint8 batch.

    `bits` holds 64 random bits per image (uint64): bits 0-20 and 21-41 pick the vertical and
    horizontal offset in [0, 2 * padding], bit 63 the flip.
    """
    n, h, w, c = images.shape
    if bits.shape != (n,):
        raise ValueError(f'need one uint64 per image: bits {bits.shape}, images {images.shape}')
    padded = np.zeros((n, h + 2 * padding, w + 2 * padding, c), images.dtype)
    padded[:, padding : padding + h, padding : padding + w] = images
    oy = _uniform_below(bits, 0, 2 * padding + 1)
    ox = _uniform_below(bits, 21, 2 * padding + 1)
    flip = (bits >> np.uint64(63)).astype(bool)
    out = np.empty_like(images)
    # A slice per image is 3-4x faster than one fancy-index gather over the batch.
    for i in range(n):
        window = padded[i, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = window[:, ::-1] if flip[i] else window
    return out


# --------------------------------------------------------------------------------------
# Decoding


def image_size(image) -> tuple[int, int]:
    """(height, width) of an encoded file (read from its header) or of a decoded array."""
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    if simplejpeg.is_jpeg(image):
        height, width, _, _ = simplejpeg.decode_jpeg_header(image)
        return height, width
    with Image.open(io.BytesIO(image)) as pil:
        return pil.height, pil.width


def decode_rgb(data: bytes, min_size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """HxWx3 uint8 RGB of an encoded image; a JPEG at its smallest DCT scale (n/8) whose
    size is >= `min_size`.

    (0, 0) decodes at full size. Other formats (and CMYK JPEGs) are decoded by Pillow and
    converted as torchvision's loader does (`Image.open(f).convert('RGB')`). Raises one of
    `DECODE_ERRORS` for a file that is not a readable image.
    """
    if simplejpeg.is_jpeg(data) and simplejpeg.decode_jpeg_header(data)[2] in _TURBO_COLORSPACES:
        return simplejpeg.decode_jpeg(
            data, colorspace='RGB', min_height=min_size[0], min_width=min_size[1]
        )
    with Image.open(io.BytesIO(data)) as pil:
        if pil.format == 'JPEG' and min(min_size) > 0:
            pil.draft('RGB', (min_size[1], min_size[0]))  # also a scale >= the requested size
        return np.asarray(pil.convert('RGB'))


def _load(image, min_size: tuple[int, int]) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    return decode_rgb(image, min_size)


# --------------------------------------------------------------------------------------
# ImageNet: RandomResizedCrop + flip, Resize + CenterCrop


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params samples it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def dct_scale(box_size: tuple[float, float], size: tuple[int, int]) -> float:
    """The smallest of 1, 1/2, 1/4, 1/8 at which a crop of `box_size` is still >= `size`.

    Only power-of-two scales: libjpeg-turbo's other n/8 scales filter differently and moved
    the result up to ~2.5/255 (mean) away from a full-size resampling in our tests; 1/2, 1/4
    and 1/8 stay within ~1.5/255.
    """
    scale = 1.0
    while scale > 1 / 8 and all(b * scale / 2 >= s for b, s in zip(box_size, size)):
        scale /= 2
    return scale


def resized_crop(
    image, box: tuple[float, float, float, float], size: tuple[int, int], *, crop_first: bool = True
) -> np.ndarray:
    """Crops box=(top, left, h, w) (full-size pixel units) and resizes it to size=(h, w).

    `image` is an encoded file or a decoded HxWxC uint8 array. crop_first=True is
    torchvision's `resized_crop` (crop, then resize: the filter sees only the box);
    crop_first=False resizes the whole image and keeps the box (the filter reaches past the
    box edges), as Resize + CenterCrop does. A JPEG is decoded at the smallest DCT scale
    (`dct_scale`) that keeps the box at least `size`, the box scaled to the decoded image; at
    full scale the result is torchvision's, at reduced scale within ~1.5/255 (mean) of it.
    """
    full_h, full_w = image_size(image)
    top, left, h, w = box
    scale = dct_scale((h, w), size)
    pixels = _load(image, (math.ceil(full_h * scale), math.ceil(full_w * scale)))
    sy, sx = pixels.shape[0] / full_h, pixels.shape[1] / full_w
    y0, x0, y1, x1 = top * sy, left * sx, (top + h) * sy, (left + w) * sx
    squeeze = pixels.ndim == 3 and pixels.shape[-1] == 1
    pil = Image.fromarray(pixels[..., 0] if squeeze else pixels)
    if crop_first:  # the whole pixels the box touches; the fraction left goes to `box` below
        iy0, ix0 = math.floor(y0), math.floor(x0)
        pil = pil.crop((ix0, iy0, math.ceil(x1), math.ceil(y1)))
        y0, x0, y1, x1 = y0 - iy0, x0 - ix0, y1 - iy0, x1 - ix0
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR, box=(x0, y0, x1, y1)))
    return out[..., None] if squeeze else out


def random_resized_crop(image, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip."""
    box = random_resized_crop_box(*image_size(image), rng)
    out = resized_crop(image, box, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


def center_crop_box(
    height: int, width: int, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The box of the full image that Resize(size * 256/224) + CenterCrop(size) keeps.

    torchvision resizes the shorter side to 256 (for 224) and the longer to
    int(256 * long / short), then crops at int(round((new - size) / 2)). Resampling that box to
    `size` takes the same samples as resizing the whole image and cropping (Pillow places
    output pixel x at box_left + (x + 0.5) * scale, clipped to the full image).
    """
    short = int(round(min(size) * 256 / 224))
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    top = int(round((new_h - size[0]) / 2))
    left = int(round((new_w - size[1]) / 2))
    sy, sx = height / new_h, width / new_w
    return top * sy, left * sx, size[0] * sy, size[1] * sx


def center_crop(image, size: tuple[int, int]) -> np.ndarray:
    """Resize the shorter side to size*256/224 (256 for 224), then centre-crop `size`."""
    return resized_crop(image, center_crop_box(*image_size(image), size), size, crop_first=False)
