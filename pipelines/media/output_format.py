"""The output's picture format (`OutputFormat`: the job's --codec, --crf, --prores-profile) and how it
becomes an encoder, a pixel format and options for one source: chroma subsampling and bit depth follow
the source where the codec carries them (4:2:2 and 10-bit kept), so a master loses no more than the
codec must."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import av

Codec = Literal["h264", "h265", "ffv1", "prores"]
CODECS: tuple[str, ...] = typing.get_args(Codec)
ProresProfile = Literal["proxy", "lt", "standard", "hq", "4444", "4444xq"]
# prores_ks's profile numbers. ProRes is 4:2:2 10-bit (4:4:4 in the 4444 profiles) whatever the source.
PRORES_PROFILES = {name: number for number, name in enumerate(typing.get_args(ProresProfile))}


@dataclass(frozen=True)
class OutputFormat:
    """How the restored picture is encoded. The default is what every output was before formats could
    be chosen (H.264 4:2:0 at crf 16, 10-bit for deep colour)."""

    codec: Codec = "h264"
    crf: int = 16  # H.264 / H.265 constant rate factor; FFV1 is lossless and ProRes has profiles instead
    prores_profile: ProresProfile = "hq"
    preset: str = "medium"  # x264 / x265 speed preset

    @property
    def lossless(self) -> bool:
        """FFV1: the restored pixels kept exactly (its staging segments must be lossless too)."""
        return self.codec == "ffv1"

    def settings(self) -> dict[str, object]:
        """What of it the output's pixels depend on: the crf only for H.264 and H.265, the profile only
        for ProRes."""
        quality = {"h264": {"crf": self.crf}, "h265": {"crf": self.crf}, "prores": {"profile": self.prores_profile}}
        return {"codec": self.codec, **quality.get(self.codec, {}), "preset": self.preset}

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec {self.codec!r}: choose one of {', '.join(CODECS)}")
        if self.prores_profile not in PRORES_PROFILES:
            raise ValueError(f"ProRes profile {self.prores_profile!r}: choose one of {', '.join(PRORES_PROFILES)}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf {self.crf}: need 0 (lossless) to 51")


@dataclass(frozen=True)
class PictureEncoding:
    """What `video_encode.add_video_stream` opens: FFmpeg's encoder, its pixel format and options."""

    encoder: str
    pix_fmt: str
    options: dict[str, str]


def picture_encoding(fmt: OutputFormat, source_pix_fmt: str, *, deep: bool, alpha: bool) -> PictureEncoding:
    """The encoding of the restored frames of a source decoded as `source_pix_fmt` (`deep`: restored at
    16 bits, from a source of more than 8; `alpha`: RGBA frames).

    H.264 stays 4:2:0 (High 4:2:2 plays almost nowhere; a delivery copy must play), 10-bit for deep
    colour, as every output before. H.265 (Main, Main 10, Main 4:2:2 10), FFV1 and ProRes keep the
    source's 4:2:2 or 4:4:4 and its depth (FFV1 12 bits too). Alpha is FFV1 4:4:4 with alpha in every
    case: only FFV1 here keeps it losslessly, and the codec choice applies to the colour of sources
    without it.
    """
    chroma = _chroma(source_pix_fmt)
    if alpha:
        return PictureEncoding("ffv1", "yuva444p10le" if deep else "yuva444p", _FFV1_OPTIONS)
    if fmt.codec == "h264":
        return PictureEncoding("libx264", "yuv420p10le" if deep else "yuv420p",
                               {"crf": str(fmt.crf), "preset": fmt.preset})
    if fmt.codec == "h265":
        # x265 prints its settings per stream on stderr unless told not to
        options = {"crf": str(fmt.crf), "preset": fmt.preset, "x265-params": "log-level=error"}
        return PictureEncoding("libx265", f"yuv{chroma}p10le" if deep else f"yuv{chroma}p", options)
    if fmt.codec == "ffv1":
        bits = _bits(source_pix_fmt)
        depth = "" if not deep else "12le" if bits > 10 else "10le"
        return PictureEncoding("ffv1", f"yuv{chroma}p{depth}", _FFV1_OPTIONS)
    profile = PRORES_PROFILES[fmt.prores_profile]
    return PictureEncoding("prores_ks", "yuv444p10le" if profile >= 4 else "yuv422p10le",
                           {"profile": str(profile), "vendor": "apl0"})


# Level 3 with a CRC per slice, as the IETF CELLAR specification and archives use it: damage is found
# and confined to its slice; slices also let the encoder use threads.
_FFV1_OPTIONS = {"level": "3", "slicecrc": "1", "slices": "4"}


def _chroma(pix_fmt: str) -> str:
    """"444", "422" or "420" (what 4:1:1, 4:4:0 and the rest become): the source's chroma sampling."""
    try:
        planes = av.VideoFormat(pix_fmt, 64, 64).components
    except ValueError:
        return "420"
    if av.VideoFormat(pix_fmt).is_rgb or len(planes) < 3:
        return "444" if len(planes) >= 3 else "420"
    full = (planes[1].width, planes[1].height)
    return "444" if full == (64, 64) else "422" if full == (32, 64) else "420"


def _bits(pix_fmt: str) -> int:
    try:
        return max(c.bits for c in av.VideoFormat(pix_fmt).components)
    except ValueError:
        return 8
