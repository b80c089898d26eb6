"""Shift modifiers (``+invert``, ``+rot90``, ...) that turn any source into a near-OOD variant of itself."""

from __future__ import annotations

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

SHIFTS = ("invert", "rot90", "rot180", "rot270", "hflip", "vflip", "blur", "contrast")


def apply_shifts(image: Image.Image, shifts: tuple[str, ...]) -> Image.Image:
    for shift in shifts:
        if shift == "invert":
            image = ImageOps.invert(image)
        elif shift == "rot90":
            image = image.transpose(Image.Transpose.ROTATE_90)
        elif shift == "rot180":
            image = image.transpose(Image.Transpose.ROTATE_180)
        elif shift == "rot270":
            image = image.transpose(Image.Transpose.ROTATE_270)
        elif shift == "hflip":
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif shift == "vflip":
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        elif shift == "blur":
            # one pixel of blur at 28x28, proportionally more for larger images
            image = image.filter(ImageFilter.GaussianBlur(max(image.size) / 28))
        elif shift == "contrast":
            image = ImageEnhance.Contrast(image).enhance(0.5)  # halfway to the image's mean grey
    return image
