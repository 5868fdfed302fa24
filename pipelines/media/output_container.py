"""Which output container a source's streams go in, and which of them it keeps: MP4 where every
stream fits unchanged, Matroska for the rest; audio neither carries becomes FLAC (media.stream_copy),
and what no container here carries is named in a note (the ledger row's notes)."""

from __future__ import annotations

from typing import Literal

from pipelines.media.output_format import Codec
from pipelines.media.video_info import StreamInfo, VideoInfo, has_alpha


# Codecs each output container carries, by FFmpeg's canonical codec name. Deliberately conservative:
# MP4 plays everywhere, but only with these; Matroska takes nearly anything else an archive holds.
MP4_AUDIO = frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "alac", "opus", "flac"})
MP4_SUBTITLES = frozenset({"mov_text"})
MKV_AUDIO = MP4_AUDIO | frozenset({"vorbis", "dts", "truehd", "wavpack", "tta", "pcm_s16le", "pcm_s24le",
                                   "pcm_s32le", "pcm_f32le", "pcm_u8", "pcm_s16be", "pcm_alaw", "pcm_mulaw"})
MKV_SUBTITLES = frozenset({"subrip", "ass", "webvtt", "text", "dvd_subtitle", "hdmv_pgs_subtitle",
                           "dvb_subtitle"})
# Further video streams (copied unchanged, not restored) and cover art MP4 carries; Matroska takes any.
MP4_VIDEO = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "av1", "vp9"})
MP4_COVERS = frozenset({"mjpeg", "png", "bmp"})


def choose_container(info: VideoInfo, codec: Codec = "h264") -> Literal["mp4", "mov", "mkv"]:
    """"mp4" when every audio and subtitle stream of the source fits in MP4 unchanged and there are no
    attachments, else "mkv"; for ProRes "mov" instead of "mp4" (MP4 has no tag for it, MOV keeps MP4's
    stream rules), and always "mkv" for FFV1 (FFV1 in Matroska: the IETF CELLAR pair). Never fails: audio that the chosen container cannot carry is transcoded
    losslessly to FLAC (`transcoded_audio`); only MOV text subtitles need MP4 (Matroska has no
    mov_text), so they keep the output in MP4, with FLAC for the audio MP4 cannot carry.

    Where we differ from `ffmpeg -c copy`: that fails on such a source; an archive must not lose
    its picture (or its sound) over a container's codec list.
    """
    if has_alpha(info) or codec == "ffv1":
        return "mkv"  # FFV1, with its alpha plane where there is one (see output_format.picture_encoding)
    audio = {s.codec for s in info.audio}
    subtitles = {s.codec for s in info.subtitles} & (MP4_SUBTITLES | MKV_SUBTITLES)  # others go in notes
    videos = {s.codec for s in info.others if s.kind == "video" and s.codec != "unknown"}
    covers = {s.codec for s in info.others if s.kind == "cover"}
    fits = audio <= MP4_AUDIO and not info.attachments and videos <= MP4_VIDEO and covers <= MP4_COVERS
    if subtitles <= MP4_SUBTITLES and (fits or not subtitles <= MKV_SUBTITLES):
        return "mov" if codec == "prores" else "mp4"
    return "mkv"


def kept_streams(info: VideoInfo, container: Literal["mp4", "mkv"]) -> tuple[tuple[StreamInfo, ...], tuple[str, ...]]:
    """(the source's streams `container` keeps besides the restored picture, a note for each one it
    does not). Kept: every audio stream; the subtitles it carries; further video streams, copied
    unchanged (only the first video stream is restored: a second program or camera angle is kept as
    it was, and a note says so); cover art. Not kept, each with a note: subtitles and data tracks no
    container here carries (teletext, KLV, SCTE-35: FFmpeg has no muxer support for them in MP4 or
    Matroska), and a timecode track, whose timecode the restored stream carries instead."""
    subtitles = MP4_SUBTITLES if container == "mp4" else MKV_SUBTITLES
    videos = MP4_VIDEO if container == "mp4" else None
    covers = MP4_COVERS if container == "mp4" else None
    kept, notes = list(info.audio), []
    for s in info.subtitles:
        if s.codec in subtitles:
            kept.append(s)
        else:
            notes.append(f"{_named(s)} not carried: {container.upper()} has no place for it")
    for s in info.others:
        allowed = videos if s.kind == "video" else covers if s.kind == "cover" else frozenset()
        if s.codec != "unknown" and (allowed is None or s.codec in allowed):
            kept.append(s)
            if s.kind == "video":
                notes.append(f"{_named(s)} copied unchanged, not restored: only the first video stream is")
        elif s.codec == "timecode":
            notes.append(f"{_named(s)} not copied: the output's timecode ({info.timecode}) comes from it")
        else:
            notes.append(f"{_named(s)} not carried: {container.upper()} has no place for it")
    return tuple(kept), tuple(notes)


def _named(stream: StreamInfo) -> str:
    """"subtitle stream #3 (dvb_teletext, deu)": how notes name a source stream."""
    details = ", ".join(x for x in (stream.codec if stream.codec != "unknown" else "a codec FFmpeg cannot decode",
                                    stream.language, stream.title) if x)
    return f"{stream.kind} stream #{stream.index} ({details})"


def transcoded_audio(info: VideoInfo, container: Literal["mp4", "mkv"]) -> frozenset[int]:
    """Source indices of the audio streams that go into `container` as FLAC (every other stream is
    copied unchanged). FLAC keeps every sample the decoder produces, at 24 bits where the source has
    more than 16, so the one decode of a lossy source (WMA, Nellymoser, ADPCM) is the only change."""
    carried = MP4_AUDIO if container == "mp4" else MKV_AUDIO
    return frozenset(s.index for s in info.audio if s.codec not in carried)
