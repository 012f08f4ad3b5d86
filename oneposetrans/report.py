"""Visual summaries of a run: contact sheets (source | pose | result ..., one row per case)."""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageOps

from oneposetrans.image_io import save_image

CELL = 256
LABEL_HEIGHT = 18


def contact_sheet(
    rows: list[tuple[Image.Image | None, ...]],
    path: str | os.PathLike,
    header: tuple[str, ...] = ("source", "pose", "result"),
) -> None:
    """Write a grid with one row per target; a missing result leaves its cell grey."""
    save_image(render_contact_sheet(rows, header), path)


def render_contact_sheet(rows: list[tuple[Image.Image | None, ...]], header: tuple[str, ...]) -> Image.Image:
    columns = len(header)
    sheet = Image.new("RGB", (columns * CELL, LABEL_HEIGHT + len(rows) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(header):
        draw.text((column * CELL + 4, 3), title, fill="black")
    for row, cells in enumerate(rows):
        for column, image in enumerate(cells):
            box = (column * CELL, LABEL_HEIGHT + row * CELL)
            if image is None:
                sheet.paste((200, 200, 200), (*box, box[0] + CELL, box[1] + CELL))
                continue
            if image.mode == "RGBA":
                # Transparent results are shown on grey so that the alpha is visible.
                backdrop = Image.new("RGBA", image.size, (128, 128, 128, 255))
                image = Image.alpha_composite(backdrop, image)
            sheet.paste(ImageOps.pad(image.convert("RGB"), (CELL, CELL), color=(0, 0, 0)), box)
    return sheet
