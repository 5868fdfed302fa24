"""Delivery at a size (the restore job's --size WxH and --height H): the size an output is encoded at,
keeping the source's display aspect ratio, and the smallest integer scale the model restores at to
reach it; a Lanczos resize (in the encoder's swscale pass, media.video_encode) makes up the rest.

Fit, never pad: the picture fills the box in one dimension and keeps its display shape in the other
(a 4:3 source asked for 1920x1080 comes out 1440x1080). Bars baked into a master would be restored,
stored and encoded for nothing; players letterbox on their own. The output has square pixels: the
size asked for is the size seen.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

# STAR, as released, and nano are trained at x4 at most; a target beyond that is reached by the
# final resize (a 240p source asked for 2160p is restored x4, then resized x2.25).
MAX_MODEL_SCALE = 4


@dataclass(frozen=True)
class TargetSize:
    """The box outputs are fitted in: `height` rows and, unless None, at most `width` columns."""

    height: int
    width: int | None = None

    @classmethod
    def parse(cls, size: str | None, height: int | None) -> TargetSize | None:
        """The job's --size ("1920x1080": width x height) or --height, or None for neither; ValueError
        for both, or a size that is not two even positive numbers."""
        if size is not None and height is not None:
            raise ValueError(f"--size {size} and --height {height}: give one of them")
        if size is not None:
            match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
            if not match:
                raise ValueError(f"--size {size!r}: write it as WIDTHxHEIGHT, e.g. 1920x1080")
            target = cls(height=int(match[2]), width=int(match[1]))
        elif height is not None:
            target = cls(height=height)
        else:
            return None
        for name, value in (("width", target.width), ("height", target.height)):
            if value is not None and (value < 2 or value % 2):
                raise ValueError(f"target {name} {value}: need an even number of at least 2 (4:2:0 needs it)")
        return target

    def output_size(self, width: int, height: int, sar: Fraction) -> tuple[int, int]:
        """(width, height), both even, of the output of an upright `width` x `height` picture whose pixels
        are `sar` wide: its display aspect ratio kept, fitted in the box."""
        aspect = Fraction(width) * sar / height  # display width per display height
        out_height = self.height
        if self.width is not None and self.width < out_height * aspect:
            out_height = _even(self.width / aspect)
            return self.width, out_height
        return _even(out_height * aspect), out_height

    def model_scale(self, width: int, height: int, sar: Fraction) -> int:
        """The smallest integer scale at which the model's picture has at least the output's pixels in
        both dimensions (at most MAX_MODEL_SCALE, at least 1): the final resize then only shrinks,
        or, for an anamorphic source, resamples to square pixels."""
        out_width, out_height = self.output_size(width, height, sar)
        needed = max(math.ceil(out_width / width), math.ceil(out_height / height))
        return min(MAX_MODEL_SCALE, max(1, needed))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}" if self.width is not None else f"height {self.height}"


def _even(value: float | Fraction) -> int:
    return max(2, 2 * round(value / 2))
