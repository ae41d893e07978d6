"""Image loading: every kind of bad file becomes an ImageError naming the file and reason."""
import io

import pytest
from PIL import Image

from faces.imaging import ImageError, Preprocess, load_image


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 image stored with EXIF orientation 6 (rotate 90° clockwise to view) is 20x40 upright.
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA", "I;16"])
def test_any_colour_mode_becomes_rgb(tmp_path, mode):
    image = Image.new("RGB", (16, 16), (30, 120, 220)).convert(mode) if mode != "I;16" else Image.new(mode, (16, 16), 300)
    suffix = "tiff" if mode in ("CMYK", "I;16") else "png"
    loaded = load_image(save(image, tmp_path / f"image.{suffix}"))
    assert loaded.mode == "RGB" and loaded.size == (16, 16)


def test_transparent_pixels_become_white_not_black(tmp_path):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert load_image(save(image, tmp_path / "clear.png")).getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, I am text, not a picture\n", "not an image"),
])
def test_bad_bytes_are_named(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_truncated_jpeg_is_reported(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated image .the bottom [0-9]+ of 128 rows are missing"):
        load_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path):
    path = save(Image.new("L", (5000, 5000)), tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path).size == (5000, 5000)  # under the default limit it loads


def test_bytes_input_uses_the_given_name():
    with pytest.raises(ImageError, match="upload.png: not an image"):
        load_image(b"GIF89a-nonsense", name="upload.png")


def test_preprocess_crops_the_centre_and_normalises():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    image.paste((255, 255, 255), (25, 25, 75, 75))          # white centre half
    tensor = Preprocess(input_size=20, crop=0.4)(image)
    assert tensor.shape == (3, 20, 20)
    assert tensor.min().item() == pytest.approx(1.0)          # only the white centre is kept
    roundtrip = Preprocess.from_dict(Preprocess(32, 0.7).to_dict())
    assert roundtrip == Preprocess(32, 0.7)


def test_jpeg_missing_only_its_last_bytes_is_accepted(tmp_path):
    """Real photos (the sample portrait among them) sometimes lack their final bytes."""
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "short.jpg"
    path.write_bytes(buffer.getvalue()[:-3])
    assert load_image(path).size == (256, 256)
