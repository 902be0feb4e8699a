"""Grouped bar panels drawn with PIL, with error bars: the comparison's chart (`renderers.comparison_chart`:
CLIP-T and CLIP-I per method, one bar per concept and setting, +- one standard error over the images) and the
quality benchmark's are drawn by `bar_panels`.

PIL rather than matplotlib: the chart is a handful of rectangles and labels, PIL is already a dependency (every
image here goes through it), and matplotlib would add ~40 MB and a font-cache build on first import to a library
whose other outputs need none of it. The output is deterministic for given numbers.

Layout: panels side by side (the comparison: CLIP-T left, CLIP-I right), groups along x (methods); within a
group, one bar per series (the comparison: each concept solid alone, light composed with the other concepts).
The y axis always includes 0, so negative raw cosines show below the axis.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

__all__ = ["bar_panels"]

# Okabe-Ito colors: distinguishable under the common color-vision deficiencies.
_PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))
_PANEL_W, _PANEL_H = 460, 300
_MARGIN_LEFT, _MARGIN_BOTTOM, _MARGIN_TOP = 56, 44, 34


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # PIL's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed bitmap font


def _light(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * 0.55) for c in color)  # type: ignore[return-value]


def _nice_step(span: float, ticks: int = 5) -> float:
    """A 1-2-5 step that cuts `span` into about `ticks` intervals."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(power * m for m in (1, 2, 5, 10) if power * m >= raw)


def bar_panels(
    panels: list[tuple[str, dict[str, list[float | None]], dict[str, list[float | None]]]],
    groups: list[str],
    series: list[tuple[str, int, bool]],
    *,
    title: str = "",
    legend_columns: int = 3,
) -> Image.Image:
    """Draw grouped bar panels side by side.

    `panels`: (panel title, {group: [value per series]}, {group: [error per series]}); `groups`: x labels in
    order; `series`: (legend label, palette index, light) per bar within a group. A None value draws no bar, a
    None error no error bar; an error bar spans value +- error. The legend fills `legend_columns`
    entries per row.
    """
    font, small = _font(14), _font(12)
    width = _PANEL_W * len(panels)
    legend_h = 22 * math.ceil(len(series) / legend_columns)
    top = 30 if title else 6
    image = Image.new("RGB", (width, top + _PANEL_H + legend_h + 8), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((width // 2, 6), title, fill="black", font=font, anchor="ma")
    for p, (name, values, errors) in enumerate(panels):
        x0 = p * _PANEL_W + _MARGIN_LEFT
        plot_w = _PANEL_W - _MARGIN_LEFT - 14
        y_top, y_bottom = top + _MARGIN_TOP, top + _PANEL_H - _MARGIN_BOTTOM
        numbers = []
        for group in groups:
            for value, error in zip(values[group], errors.get(group, [None] * len(series)), strict=True):
                if value is not None:
                    numbers += [value] if error is None else [value - error, value + error]
        low, high = min([0.0, *numbers]), max([0.0, *numbers])
        if high - low < 1e-9:
            high = low + 1.0
        step = _nice_step(high - low)
        low, high = math.floor(low / step) * step, math.ceil(high / step) * step

        def y_of(
            value: float, low: float = low, high: float = high, y_top: int = y_top, y_bottom: int = y_bottom
        ):
            return y_bottom - (value - low) / (high - low) * (y_bottom - y_top)

        draw.text((x0 + plot_w // 2, top + 8), name, fill="black", font=font, anchor="ma")
        tick = low
        while tick <= high + step / 2:
            y = y_of(tick)
            draw.line([(x0, y), (x0 + plot_w, y)], fill=(225, 225, 225))
            draw.text(
                (x0 - 6, y),
                f"{tick:.2f}".rstrip("0").rstrip(".") or "0",
                fill="black",
                font=small,
                anchor="rm",
            )
            tick += step
        zero = y_of(0.0)
        group_w = plot_w / max(len(groups), 1)
        bar_w = group_w * 0.8 / max(len(series), 1)
        for g, group in enumerate(groups):
            gx = x0 + g * group_w + group_w * 0.1
            for s, (_, color, light) in enumerate(series):
                value = values[group][s]
                if value is None:
                    continue
                fill = _light(_PALETTE[color % len(_PALETTE)]) if light else _PALETTE[color % len(_PALETTE)]
                y = y_of(value)
                draw.rectangle(
                    [gx + s * bar_w, min(y, zero), gx + (s + 1) * bar_w - 1, max(y, zero)],
                    fill=fill,
                    outline=_PALETTE[color % len(_PALETTE)],
                )
                error = errors.get(group, [None] * len(series))[s]
                if error is not None:
                    cx, cap = gx + (s + 0.5) * bar_w, max(bar_w * 0.2, 2)
                    hi, lo = y_of(value + error), y_of(value - error)
                    draw.line([(cx, hi), (cx, lo)], fill="black")
                    draw.line([(cx - cap, hi), (cx + cap, hi)], fill="black")
                    draw.line([(cx - cap, lo), (cx + cap, lo)], fill="black")
            label = group
            if draw.textlength(label, font=small) > group_w - 4 and "_" in label:
                # "sbora_fa" -> "sbora_" over "fa": neighbours' labels stay apart
                label = label.replace("_", "_\n", 1)
            x = x0 + (g + 0.5) * group_w
            draw.multiline_text(
                (x, y_bottom + 6), label, fill="black", font=small, anchor="ma", align="center"
            )
        draw.line([(x0, zero), (x0 + plot_w, zero)], fill="black")
        draw.line([(x0, y_top), (x0, y_bottom)], fill="black")
    legend_y = top + _PANEL_H
    for s, (label, color, light) in enumerate(series):
        lx = 20 + (s % legend_columns) * (width // legend_columns)
        ly = legend_y + 22 * (s // legend_columns)
        base = _PALETTE[color % len(_PALETTE)]
        draw.rectangle([lx, ly + 3, lx + 14, ly + 15], fill=_light(base) if light else base, outline=base)
        draw.text((lx + 20, ly + 9), label, fill="black", font=small, anchor="lm")
    return image
