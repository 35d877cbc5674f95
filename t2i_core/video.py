"""Write a list of frames as an animation: animated WebP, GIF, or H.264 MP4.

WebP and GIF go through Pillow. MP4 goes through imageio with imageio-ffmpeg's bundled ffmpeg binary, so no
system ffmpeg is needed; both are imported only when an .mp4 is asked for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image

ANIMATION_SUFFIXES = (".webp", ".gif", ".mp4")
MP4_MIN_SIDE = 128  # players and some browsers refuse tiny H.264 videos
MP4_BLOCK = 16  # H.264 macroblock: sides that are multiples of 16 avoid ffmpeg's own resizing


def check_animation_path(path: str | os.PathLike) -> Path:
    """Raise ValueError unless `path` ends in a suffix `save_animation` can write."""
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_SUFFIXES:
        raise ValueError(
            f"cannot write an animation to {str(path)!r}: the file name must end in one of {', '.join(ANIMATION_SUFFIXES)}"
        )
    return path


def save_animation(frames: list[Image.Image], path: str | os.PathLike, fps: int = 12) -> Path:
    """Write `frames` (PIL images of one size) to `path`, chosen by suffix; loops forever where the format can.

    .webp: lossless animated WebP (lossy encoding merges frames that differ by a few levels). .gif: palette GIF (Pillow merges identical consecutive frames into one longer
    frame). .mp4: H.264 (libx264, yuv420p), upscaled so both sides are multiples of 16 and at least 128 px.
    Returns the path written.
    """
    path = check_animation_path(path)
    if not frames:
        raise ValueError("frames is empty; pass at least one image")
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 120:
        raise ValueError(f"fps must be an integer from 1 to 120, got {fps!r}")
    frames = [f.convert("RGB") for f in frames]
    if len({f.size for f in frames}) != 1:
        raise ValueError(f"frames must all have one size, got {sorted({f.size for f in frames})}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    duration_ms = round(1000 / fps)
    if suffix == ".webp":
        frames[0].save(
            path, format="WEBP", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0, lossless=True, method=4
        )
    elif suffix == ".gif":
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    else:
        _save_mp4(frames, path, fps)
    return path


def mp4_size(width: int, height: int) -> tuple[int, int]:
    """The (width, height) an .mp4 is written at: scaled up so the short side is >= 128, rounded up to multiples of 16."""
    scale = max(1.0, MP4_MIN_SIDE / min(width, height))
    return tuple(math.ceil(side * scale / MP4_BLOCK) * MP4_BLOCK for side in (width, height))


def _save_mp4(frames: list[Image.Image], path: Path, fps: int) -> None:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio uses)
    except ImportError as err:
        raise ImportError(f"writing .mp4 needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg ({err})") from err
    import numpy as np

    size = mp4_size(*frames[0].size)
    writer = imageio.get_writer(
        str(path),
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=8,
        macro_block_size=MP4_BLOCK,
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            if frame.size != size:
                frame = frame.resize(size, Image.Resampling.LANCZOS)
            writer.append_data(np.asarray(frame))
    finally:
        writer.close()
