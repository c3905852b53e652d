"""Small PNG charts drawn with Pillow: lines of (x, y) points with axes, ticks and a legend."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["line_chart"]

WIDTH, HEIGHT, MARGIN, LEGEND = 760, 440, 56, 200
# Distinct line colours that read on white: ten hues, then the same hues darker, for up to 20 runs.
_HUES = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (60, 60, 60),
    (188, 189, 34),
    (23, 190, 207),
]
COLOURS = _HUES + [tuple(c // 2 for c in hue) for hue in _HUES]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * k / (count - 1) for k in range(count)]


def line_chart(
    path: str | Path, series: dict[str, list[tuple[float, float]]], *, x_label: str, y_label: str, title: str
) -> None:
    """Write one line per entry of ``series`` (``name -> [(x, y), ...]``) as a PNG at ``path``."""
    points = [p for values in series.values() for p in values]
    x_max = max((x for x, _ in points), default=1.0) or 1.0
    ys = [y for _, y in points] or [0.0, 1.0]
    y_low, y_high = min(ys), max(ys)
    pad = max(0.05 * (y_high - y_low), 0.01)
    y_low, y_high = y_low - pad, y_high + pad
    image = Image.new("RGB", (WIDTH + LEGEND, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, 30, WIDTH - 16, HEIGHT - MARGIN

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * (y - y_low) / (y_high - y_low)

    draw.rectangle([left, top, right, bottom], outline="black")
    for value in _ticks(0.0, x_max):
        px, _ = to_pixel(value, y_low)
        draw.line([px, bottom, px, bottom + 4], fill="black")
        draw.text((px - 12, bottom + 6), f"{value:.3g}", fill="black")
    for value in _ticks(y_low, y_high):
        _, py = to_pixel(0.0, value)
        draw.line([left - 4, py, left, py], fill="black")
        draw.line([left, py, right, py], fill=(230, 230, 230))
        draw.text((4, py - 6), f"{value:.3f}", fill="black")
    draw.text(((left + right) // 2 - 40, HEIGHT - 22), x_label, fill="black")
    draw.text((left, 8), f"{title} ({y_label})", fill="black")
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        if len(values) > 1:
            draw.line([to_pixel(x, y) for x, y in values], fill=colour, width=2)
        for x, y in values:
            px, py = to_pixel(x, y)
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        ly = top + 16 * index
        draw.line([WIDTH, ly + 6, WIDTH + 20, ly + 6], fill=colour, width=3)
        draw.text((WIDTH + 26, ly), name[:28], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
