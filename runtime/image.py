"""Image preprocessing for Phi-4-multimodal, in numpy and Pillow (no torch).

It matches transformers' `Phi4MultimodalImageProcessor`:
1. Dynamic HD tiling. The image is resized (bilinear, antialiased, uint8) to fill a grid of
   crop-sized tiles that fits the crop limit, then padded with white to the whole grid.
2. Each crop gets a 32x32 mask of its real (unpadded) patches.
3. A global view: the whole padded image, normalized, resized bicubic to one crop.
4. The crop order is [global, row-major tiles].

The geometry (crop and patch size, crop limit, normalization) is the artifact's: its manifest's
`vision` entry (phi4mm_edge.artifact.VisionEntry), never a constant here.
"""

import io
import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..manifest import VisionEntry
from ..errors import Phi4MMError
from .resize import resize_bicubic, resize_uint8_antialiased

MAX_PIXELS = 64_000_000  # larger images are refused (a decompression bomb costs GBs before any check)
# Decoded images alive at once, across threads, hold at most this many pixels (3 bytes each, 4 while
# decoding): concurrent uploads of large images wait for each other instead of exhausting memory
# (issue 32: three 8000x8000 PNGs of 249 KB each decoded in parallel gave MemoryError).
DECODED_PIXELS = MAX_PIXELS
EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the camera was held
DECODE_WAIT_SECONDS = 120.0


class ImagesBusy(Phi4MMError):
    """Other decoded images hold the pixel budget for longer than DECODE_WAIT_SECONDS: retry."""


class PixelBudget:
    """Pixels of the decoded images alive in this process, shared by every thread: a decode takes
    its share before it starts (the size comes from the header), and gives it back when its
    image is freed (weakref.finalize)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    def hold(self, pixels: int, wait: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.used + pixels <= self.limit, timeout=wait):
                raise ImagesBusy(f"other images being processed hold {self.used} of the {self.limit} decoded pixels "
                                 f"this process allows, and this one needs {pixels}: retry when they are done")
            self.used += pixels

    def release(self, pixels: int) -> None:
        with self._changed:
            self.used -= pixels
            self._changed.notify_all()

    def charge(self, image: Image.Image, pixels: int) -> Image.Image:
        """`image` holds `pixels` (already taken) until it is freed."""
        weakref.finalize(image, self.release, pixels)
        return image


DECODED = PixelBudget(DECODED_PIXELS)


@dataclass
class ImageInput:
    """One image, ready for vision.onnx."""

    pixel_values: np.ndarray  # float32 [1 + tiles, 3, crop, crop], global view first
    attention_mask: np.ndarray  # float32 [1 + tiles, mask, mask], 1 = a real patch
    image_size: tuple[int, int]  # (height, width) of the padded HD image
    crop_grid: tuple[int, int]  # (rows, columns) of tiles
    num_tokens: int  # image placeholder tokens this image takes in the prompt


# -- loading -------------------------------------------------------------------------------------
def load_image(source) -> Image.Image:
    """An RGB PIL image from a path, bytes, a PIL image or a numpy HxWx3 frame (opencv BGR).
    EXIF orientation is applied; transparency is composited onto white; 16-bit is scaled to 8;
    an animated image gives its first frame. A file is identified from its header before any
    pixel is decoded, so neither a huge file nor a decompression bomb is read whole."""
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise Phi4MMError(f"image file {path} does not exist")
        if path.stat().st_size == 0:
            raise Phi4MMError(f"image file {path} is empty (0 bytes)")
        return _decode(path, f"image file {path}")
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise Phi4MMError("the image is empty (0 bytes)")
        return _decode(io.BytesIO(source), "the image")
    if isinstance(source, Image.Image):
        _check_pixels(source.size)
        return to_rgb(upright(source))
    raise Phi4MMError(f"unsupported image input {type(source).__name__}: pass a path, bytes, a PIL "
                      f"image or an HxWx3 array")


def _decode(file, name: str) -> Image.Image:
    """Decode within the pixel budget (its share taken from the header's size, before decoding)."""
    pixels = 0
    try:
        with Image.open(file) as opened:
            _check_pixels(opened.size)  # from the header: nothing decoded yet
            pixels = opened.size[0] * opened.size[1]
            DECODED.hold(pixels, DECODE_WAIT_SECONDS)
            opened.load()  # the first frame; the file is closed on leaving, the pixels stay
        return DECODED.charge(to_rgb(upright(opened)), pixels)
    except BaseException as error:
        if pixels and not isinstance(error, ImagesBusy):
            DECODED.release(pixels)
        if isinstance(error, Image.DecompressionBombError):
            raise Phi4MMError(f"{name} has more than {MAX_PIXELS} pixels: downscale it first") from None
        if isinstance(error, UnidentifiedImageError):
            raise Phi4MMError(f"cannot decode {name}: it is not an image format Pillow knows; pass a PNG, JPEG, WebP, "
                              f"BMP, GIF or TIFF file") from None
        if isinstance(error, (OSError, SyntaxError, ValueError, EOFError)):
            raise Phi4MMError(f"cannot decode {name} ({error}): it is damaged or truncated; pass a PNG, JPEG, WebP, "
                              f"BMP, GIF or TIFF file") from None
        raise


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says: a new image when it must turn, else `image`
    itself, never modified (ImageOps.exif_transpose copies every image: 192 MB for 64 MP)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _check_pixels(size) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise Phi4MMError(f"the image is {size[0]}x{size[1]}, more than {MAX_PIXELS} pixels: downscale it first")
    if size[0] < 1 or size[1] < 1:
        raise Phi4MMError(f"the image is {size[0]}x{size[1]}: it has no pixels")


def _from_array(frame: np.ndarray) -> Image.Image:
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] not in (3, 4) or frame.dtype != np.uint8:
        raise Phi4MMError(f"an image array must be HxWx3 (BGR, as opencv gives) uint8; got {frame.shape} {frame.dtype}")
    _check_pixels((frame.shape[1], frame.shape[0]))
    return Image.fromarray(np.ascontiguousarray(frame[..., 2::-1]))  # BGR(A) -> RGB


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as transformers does)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's RGB conversion clips 16-bit values at 255: scale to 8 bits first.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # Pasted onto white through its alpha: the same pixels as alpha_composite onto opaque white
        # then RGB (tested), at 4 bytes a pixel beside the source instead of three RGBA copies.
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image if image.mode == "RGB" else image.convert("RGB")


# -- tiling --------------------------------------------------------------------------------------
def _closest_grid(aspect: float, width: int, height: int, geometry: VisionEntry) -> tuple[int, int]:
    """(columns, rows) with at most max_crops tiles whose aspect is closest to the image's;
    ties go to the larger grid when the image is large enough to use it."""
    grids = sorted({(i, j) for n in range(1, geometry.max_crops + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                    if i * j <= geometry.max_crops}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and width * height > 0.5 * geometry.crop_size ** 2 * grid[0] * grid[1]:
            best = grid
    return best


def global_tokens(geometry: VisionEntry) -> int:
    """Tokens every image has: the global view's pooled grid with a separator after each row,
    and the one separator between the tiles and the global view."""
    pooled_side = -(-geometry.patches_per_side // 2)  # 2x2 pooling, an odd side padded
    return pooled_side * pooled_side + pooled_side + 1


def preprocess(image: Image.Image, geometry: VisionEntry) -> ImageInput:
    """Tiles, masks and the global view of one RGB image, for the artifact's `geometry`."""
    crop, patch, mask_size = geometry.crop_size, geometry.patch_size, geometry.patches_per_side
    width, height = image.size
    columns, rows = math.ceil(width / crop), math.ceil(height / crop)
    if columns * rows > geometry.max_crops:
        columns, rows = _closest_grid(width / height, width, height, geometry)
    target_w, target_h = crop * columns, crop * rows
    if target_w / width < target_h / height:
        new_w, new_h = target_w, int(height * (target_w / width))
    else:
        new_w, new_h = int(width * (target_h / height)), target_h
    if min(new_h, target_h) < 10 or min(new_w, target_w) < 10:
        raise Phi4MMError(f"the image is {width}x{height}: its aspect ratio is too extreme (a side would shrink "
                          f"below 10 pixels); crop it closer to its subject")
    pad_w, pad_h = target_w - new_w, target_h - new_h

    mask = np.ones((mask_size * rows, mask_size * columns), np.float32)
    if pad_w >= patch:
        mask[:, -(pad_w // patch):] = 0
    if pad_h >= patch:
        mask[-(pad_h // patch):, :] = 0

    resized = resize_uint8_antialiased(np.asarray(image, np.uint8), new_h, new_w)
    canvas = np.full((target_h, target_w, 3), 255, np.uint8)
    canvas[:new_h, :new_w] = resized
    normalized = ((canvas.astype(np.float32) / 255.0 - geometry.mean) / geometry.std).transpose(2, 0, 1)

    global_view = resize_bicubic(normalized, crop, crop)
    tiles = normalized.reshape(3, rows, crop, columns, crop).transpose(1, 3, 0, 2, 4).reshape(-1, 3, crop, crop)
    tile_masks = (mask.reshape(rows, mask_size, columns, mask_size).transpose(0, 2, 1, 3)
                  .reshape(-1, mask_size, mask_size))

    # Tokens: the sub-image features after 2x2 pooling keep the real rows/columns, plus one
    # separator per row; then the fixed global part.
    pooled = mask[0::2, 0::2]
    useful_rows, useful_columns = int(pooled[:, 0].sum()), int(pooled[0, :].sum())
    num_tokens = global_tokens(geometry) + useful_rows * useful_columns + useful_rows
    return ImageInput(
        pixel_values=np.concatenate([global_view[None], tiles]).astype(np.float32),
        attention_mask=np.concatenate([np.ones((1, mask_size, mask_size), np.float32), tile_masks]),
        image_size=(target_h, target_w),
        crop_grid=(rows, columns),
        num_tokens=num_tokens,
    )
