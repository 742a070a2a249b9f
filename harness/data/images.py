"""Opening images, torch-free: what a data loader decodes and what ``check`` verifies go through the same
function, so ``check`` refuses exactly the files a run would fail on (a truncated JPEG opens, and fails
only when decoded)."""

from __future__ import annotations

from PIL import Image, UnidentifiedImageError

from .errors import ImageDecodeError

# What PIL raises for a file that is not a complete image (a truncated JPEG: OSError when decoded).
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


def _decode_error(path: str, e: Exception) -> ImageDecodeError:
    if isinstance(e, FileNotFoundError):
        return ImageDecodeError(
            f"image file not found: {path}; re-download/extract the dataset "
            f"(python -m harness.data check --root DATA_ROOT lists what is missing)"
        )
    return ImageDecodeError(
        f"cannot decode image {path} ({type(e).__name__}: {e}); the file is truncated or corrupt: "
        f"re-download it (python -m harness.data prepare --force re-extracts the dataset) or remove it from the split"
    )


def load_image(path: str) -> Image.Image:
    """Open and fully decode an image as RGB; raises :class:`ImageDecodeError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except DECODE_ERRORS as e:
        raise _decode_error(path, e) from e


def verify_image(path: str) -> None:
    """Decode ``path`` to its last byte (at a reduced JPEG scale, which reads the whole entropy-coded stream
    eight times faster); raises :class:`ImageDecodeError` as :func:`load_image` would."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except DECODE_ERRORS as e:
        raise _decode_error(path, e) from e
