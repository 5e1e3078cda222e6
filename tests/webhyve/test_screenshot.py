"""PNG screenshots drawn by the server: the hello guest's VGA banner in its colours, the serial screen's text."""
import io

from PIL import Image

from engine.devices import vga_text
from tests.webhyve.conftest import wait_for


def test_vga_screenshot_shows_the_banner_in_white_on_blue(client):
    client.post("/api/v1/vms", json={"name": "hi", "guest": "hello"})
    assert wait_for(lambda: "Hello from webhyve!" in client.get("/api/v1/vms/hi/vga").json["lines"][0])
    response = client.get("/api/v1/vms/hi/screenshot/vga.png")
    assert response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data)).convert("RGB")
    cw, ch = image.width // vga_text.COLS, image.height // vga_text.ROWS
    banner_row = [image.getpixel((x, y)) for x in range(0, 40 * cw) for y in range(0, ch)]
    assert banner_row.count(vga_text.BLUE) > len(banner_row) // 2          # attribute 0x1F: blue background
    assert vga_text.WHITE in banner_row                                     # ... and white glyphs on it
    empty_row = {image.getpixel((x, y)) for x in range(image.width) for y in range(10 * ch, 11 * ch)}
    assert vga_text.BLUE not in empty_row


def test_serial_screenshot_has_the_prompt_where_the_text_is(client, shell_vm):
    response = client.get("/api/v1/vms/sh/screenshot/serial.png")
    image = Image.open(io.BytesIO(response.data)).convert("L")
    ch = image.height // 25
    lit_rows = [any(image.getpixel((x, y)) > 128 for x in range(image.width) for y in range(r * ch, (r + 1) * ch - 3))
                for r in range(25)]
    assert lit_rows[:2] == [True, True] and not any(lit_rows[3:])          # "ready" line and the prompt
