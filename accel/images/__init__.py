"""Images: safe decoding (`open_image`), rendering (arrays, crops, colour maps, overlays, grids) and sample photos.

`open` is the one boundary for image bytes (its guard, formats, modes, TIFF path and error wording live beside it
in `guard`, `formats`, `modes`, `tiff` and `describe`); `render` turns arrays and maps into pictures; `samples`
finds the photos installed packages ship.
"""

from __future__ import annotations

from .describe import as_text, describe_text
from .formats import SUPPORTED_FORMATS, decodable_formats, image_extensions
from .guard import DEFAULT_MAX_PIXELS, ENV_MAX_PIXELS, pixel_limit
from .open import ImageSource, open_image
from .render import colorize, colormap, from_array, make_grid, overlay, resize_center_crop, to_array
from .samples import FOOLBOX_KINDS, foolbox_imagenet, foolbox_photos, sample_image, sample_images

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "FOOLBOX_KINDS",
    "SUPPORTED_FORMATS",
    "ImageSource",
    "as_text",
    "colorize",
    "colormap",
    "decodable_formats",
    "describe_text",
    "foolbox_imagenet",
    "foolbox_photos",
    "from_array",
    "image_extensions",
    "make_grid",
    "open_image",
    "overlay",
    "pixel_limit",
    "resize_center_crop",
    "sample_image",
    "sample_images",
    "to_array",
]
