"""Makes the JPEG fixtures of `runtime/src/source/jpeg.rs`'s tests from a bundled ycbv-mini
image, with libjpeg-turbo (through Pillow 13.0.0: `pip install pillow==13.0.0`), an
encoder independent of posed's decoder.

Run from the repository root: `python3 runtime/src/source/testdata/make_jpegs.py`.

- `ycbv_422.jpg`: 640 x 480, 4:2:2, what UVC cameras send as MJPEG.
- `ycbv_422_no_dht.jpg`: the same bytes without their Huffman tables (DHT segments) and
  with an AVI1 APP0 segment, as most UVC cameras send MJPEG: the decoder must use the
  standard tables of ITU T.81 annex K.3.
- `ycbv_422_optimized.jpg`: as `ycbv_422.jpg`, with Huffman tables of its own (optimised
  for the image), not the standard ones.
- `ycbv_420_odd.jpg`: 331 x 247 (no whole MCU at the right and bottom edges), 4:2:0.
- `ycbv_444_restart.jpg`: 640 x 480, 4:4:4, a restart marker every 7 MCUs.
- `ycbv_420_restart_rows.jpg`: 333 x 250, 4:2:0, a restart marker every MCU row.
- `ycbv_grey_odd.jpg`: 203 x 149, one component.
- `ycbv_progressive.jpg`: 160 x 120, progressive (not what cameras send; posed falls back
  to a general decoder for it).

And, for each of the sequential ones, `NAME.libjpeg-corners.rgb`: how libjpeg-turbo itself
decodes it (islow inverse DCT, fancy upsampling: its defaults), as raw RGB bytes of two
48 x 32 crops, the top-left corner and then the bottom-right one (where the edge rules of
upsampling and partial MCUs show).
"""

from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[3] / "data" / "ycbv-mini" / "test" / "000001" / "rgb" / "000000.png"


def strip_huffman_tables(jpeg: bytes) -> bytes:
    """Drops every DHT segment before the first scan, and puts an AVI1 APP0 after SOI."""
    out = bytearray(jpeg[:2])
    out += b"\xff\xe0\x00\x10AVI1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    pos = 2
    while True:
        assert jpeg[pos] == 0xFF
        marker = jpeg[pos + 1]
        if marker == 0xDA:
            out += jpeg[pos:]
            return bytes(out)
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        segment = jpeg[pos : pos + 2 + length]
        if marker != 0xC4:
            out += segment
        pos += 2 + length


CORNER = (48, 32)


def write_corners(jpeg_path: Path) -> None:
    decoded = Image.open(jpeg_path).convert("RGB")
    width, height = decoded.size
    w, h = CORNER
    corners = decoded.crop((0, 0, w, h)).tobytes() + decoded.crop(
        (width - w, height - h, width, height)
    ).tobytes()
    jpeg_path.with_suffix(".libjpeg-corners.rgb").write_bytes(corners)


def main() -> None:
    image = Image.open(SOURCE).convert("RGB")
    image.save(HERE / "ycbv_422.jpg", quality=85, subsampling=1, optimize=False)
    plain = (HERE / "ycbv_422.jpg").read_bytes()
    (HERE / "ycbv_422_no_dht.jpg").write_bytes(strip_huffman_tables(plain))
    image.save(HERE / "ycbv_422_optimized.jpg", quality=85, subsampling=1, optimize=True)
    image.crop((101, 77, 432, 324)).save(
        HERE / "ycbv_420_odd.jpg", quality=90, subsampling=2, optimize=True
    )
    image.save(
        HERE / "ycbv_444_restart.jpg", quality=80, subsampling=0, restart_marker_blocks=7
    )
    image.crop((17, 201, 350, 451)).save(
        HERE / "ycbv_420_restart_rows.jpg", quality=75, subsampling=2, restart_marker_rows=1
    )
    image.crop((300, 150, 503, 299)).convert("L").save(HERE / "ycbv_grey_odd.jpg", quality=90)
    image.resize((160, 120)).save(HERE / "ycbv_progressive.jpg", quality=80, progressive=True)
    for name in [
        "ycbv_422.jpg",
        "ycbv_420_odd.jpg",
        "ycbv_444_restart.jpg",
        "ycbv_420_restart_rows.jpg",
        "ycbv_grey_odd.jpg",
    ]:
        write_corners(HERE / name)


if __name__ == "__main__":
    main()
