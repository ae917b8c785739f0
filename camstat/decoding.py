"""Image files and arrays to model intensities: the ``--intensity`` rule (issue 17).

Every image reaches the model as values in [0, 1], decided by the file's own
depth, never by squeezing it through 8 bits:

- 8-bit files (and 1-bit, palette, RGBA, CMYK, ...) are decoded as Pillow's
  ``convert("RGB")`` does (alpha dropped, as torchvision's loader does), so
  value ``v`` becomes ``v / 255``.
- Unsigned integers deeper than 8 bits (16-bit PNG and TIFF) become
  ``v / (2**bits - 1)``, where ``bits`` is the significant bit depth the file
  declares (a PNG's ``sBIT`` chunk, a DICOM's BitsStored), else the full
  width of the type (16). A 12-bit image stored in 16 bits without ``sBIT``
  therefore comes out dark (at most 4095 / 65535); use ``--intensity minmax``
  for such data. Values above the declared depth are refused.
- Floats are taken as they are; values outside [0, 1], or NaN / inf, are
  refused (naming the file) unless ``--intensity minmax``.
- Signed integers have no implied range and need ``--intensity minmax``.
- ``--intensity minmax``: per image, ``(v - min) / (max - min)`` over all its
  pixels and channels together (a constant image becomes 0).
- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``).
- DICOM (``.dcm``, with the optional extra ``camstat[dicom]``: pydicom):
  stored values -> rescale slope and intercept (the modality LUT) -> the
  file's first window, linear as in DICOM PS3.3 C.11.2.1.2.1, to [0, 1];
  without a window, the range the stored bits can hold (after rescaling).
  MONOCHROME1 (white = low) is inverted.

Arrays with an implicit range (``npz:`` files, the built-ins) follow the same
rule by their dtype.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from camstat.errors import CamstatError

INTENSITIES = ("dtype", "minmax")
DICOM_EXTENSIONS = (".dcm", ".dicom")
# Pillow modes whose values are not 8-bit: kept as numbers, not converted to RGB
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "I;16S", "I;32", "F;32")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
# what PIL.ImageOps.exif_transpose does for each EXIF orientation
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def check_intensity(intensity: str) -> str:
    if intensity not in INTENSITIES:
        raise CamstatError(f"bad --intensity {intensity!r}; use dtype or minmax")
    return intensity


def describe_intensity(intensity: str) -> str:
    """The decoding rule in words, for the store's attributes."""
    if intensity == "minmax":
        return "per-image min-max to [0, 1]; EXIF orientation applied; DICOM: rescale slope/intercept, MONOCHROME1 inverted"
    return ("by the file's depth: 8-bit v/255, unsigned deeper integers v/(2**bits-1) with bits from PNG sBIT or "
            "DICOM BitsStored else the type's width, floats as is (must lie in [0, 1]); EXIF orientation applied; "
            "DICOM: rescale slope/intercept then the file's window, MONOCHROME1 inverted")


def to_unit(pixels: np.ndarray, intensity: str, source: str, bits: int | None = None) -> np.ndarray:
    """Apply the intensity rule to one image (H, W[, C]).

    Returns (H, W, 3): uint8 for 8-bit data under ``dtype`` (so that the
    8-bit path stays bitwise what it was), else float32 in [0, 1].
    ``bits`` is the significant depth the file declares, if any.
    """
    pixels = _three_channels(pixels, source)
    if intensity == "minmax":
        return _minmax(pixels, source)
    kind = pixels.dtype.kind
    if pixels.dtype == np.uint8 and bits in (None, 8):
        return pixels
    if kind == "u":
        depth = bits or 8 * pixels.dtype.itemsize
        top = 2**depth - 1
        if pixels.size and pixels.max() > top:
            raise CamstatError(
                f"{source} holds values up to {pixels.max()} above its declared {depth}-bit range; "
                "fix the file or pass --intensity minmax"
            )
        return (pixels.astype(np.float64) / top).astype(np.float32)
    if kind == "f":
        _check_finite(pixels, source)
        lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise CamstatError(
                f"{source} holds float values in [{lo:g}, {hi:g}], outside [0, 1]; "
                "rescale the file or pass --intensity minmax"
            )
        return pixels.astype(np.float32)
    if kind in "ib":
        raise CamstatError(f"{source} holds signed integers ({pixels.dtype}) with no implied range; "
                           "pass --intensity minmax")
    raise CamstatError(f"{source} holds {pixels.dtype} values, not an image type; convert the file")


def _three_channels(pixels: np.ndarray, source: str) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return pixels[..., :3]  # alpha dropped, as convert("RGB") does
    raise CamstatError(f"{source} has shape {pixels.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")


def _check_finite(pixels: np.ndarray, source: str) -> None:
    if not np.isfinite(pixels).all():
        raise CamstatError(f"{source} holds non-finite values (NaN or inf); fix the file")


def _minmax(pixels: np.ndarray, source: str) -> np.ndarray:
    values = pixels.astype(np.float64)
    _check_finite(values, source)
    lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def unit_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Model intensities (uint8, or float in [0, 1]) as uint8, for pictures."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# files


def is_dicom(path: str) -> bool:
    return path.lower().endswith(DICOM_EXTENSIONS)


def decode_file(path: str, intensity: str) -> np.ndarray:
    """Decode one image file by the rule above -> (H, W, 3) uint8 or float32."""
    if is_dicom(path):
        return _decode_dicom(path, intensity)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode in DEEP_MODES:
                # a copy: PIL's buffer is read-only, and torch wants writable memory
                pixels = np.array(image)
                bits = _png_significant_bits(path) if pixels.dtype.kind == "u" else None
            else:
                pixels, bits = np.array(image.convert("RGB")), None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CamstatError(f"cannot decode image {path} ({exc}); fix or remove the file") from exc
    return to_unit(pixels, intensity, path, bits)


def verify_file(path: str) -> str | None:
    """None when the header and structure look sound, else the reason.
    ``verify`` does not decode pixels, so this stays cheap."""
    if is_dicom(path):
        try:
            _read_dicom_header(path)
            return None
        except CamstatError as exc:
            return str(exc)
    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as exc:  # PIL raises many unrelated types for broken files
        return f"{type(exc).__name__}: {exc}"


def image_size(path: str) -> tuple[int, int]:
    """(height, width) as the model will see it (after EXIF orientation)."""
    if is_dicom(path):
        header = _read_dicom_header(path)
        return int(header.Rows), int(header.Columns)
    height, width, orientation = stored_geometry(path)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def stored_geometry(path: str) -> tuple[int, int, int]:
    """(height, width, EXIF orientation) of the pixels as stored in the file."""
    with Image.open(path) as image:
        return image.size[1], image.size[0], int(image.getexif().get(EXIF_ORIENTATION, 1))


def orient(picture: Image.Image, orientation: int) -> Image.Image:
    """Turn a picture in the stored frame of a file as ``exif_transpose`` turns the file."""
    method = ORIENTATION_TRANSPOSE.get(orientation)
    return picture if method is None else picture.transpose(method)


def _png_significant_bits(path: str) -> int | None:
    """The PNG ``sBIT`` chunk's depth (the largest over channels), if any.
    Pillow skips this chunk, so the chunks before the pixel data are walked."""
    with open(path, "rb") as handle:
        if handle.read(8) != PNG_SIGNATURE:
            return None
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                declared = handle.read(length)
                return max(declared) if declared and 0 < max(declared) <= 16 else None
            if kind in (b"IDAT", b"IEND"):
                return None
            handle.seek(length + 4, 1)  # data and CRC


# --------------------------------------------------------------------------
# DICOM


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:
        raise CamstatError("reading DICOM needs pydicom: pip install 'camstat[dicom]'") from exc
    return pydicom


def _read_dicom_header(path: str):
    pydicom = _pydicom()
    try:
        header = pydicom.dcmread(path, defer_size="1 KB")
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ...
        raise CamstatError(f"cannot read DICOM {path} ({type(exc).__name__}: {exc}); fix or remove the file") from exc
    if not any(tag in header for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CamstatError(f"DICOM {path} has no pixel data (not an image); remove it from the data")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise CamstatError(f"DICOM {path} holds {header.NumberOfFrames} frames; give one image per file")
    return header


def _decode_dicom(path: str, intensity: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    header = _read_dicom_header(path)
    try:
        stored = header.pixel_array
    except Exception as exc:  # missing codec, truncated data, ...
        raise CamstatError(f"cannot decode the pixels of DICOM {path} ({exc}); fix or remove the file") from exc
    bits = int(header.get("BitsStored", 8 * stored.dtype.itemsize))
    if int(header.get("SamplesPerPixel", 1)) != 1:  # colour: no modality LUT or window applies
        return to_unit(stored, intensity, path, bits if stored.dtype.kind == "u" else None)
    values = np.asarray(apply_modality_lut(stored, header), dtype=np.float64)
    if intensity == "minmax":
        unit = _minmax(values, path)
    else:
        _check_finite(values, path)
        unit = _dicom_window(values, header, bits).astype(np.float32)
    if str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        unit = 1 - unit
    return np.repeat(unit[..., None], 3, axis=-1)


def _first(value) -> float:
    # a multi-valued window (pydicom's MultiValue) lists alternatives; the first is the default
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _dicom_window(values: np.ndarray, header, bits: int) -> np.ndarray:
    """Modality values -> [0, 1]: the file's first VOI window (linear function
    of DICOM PS3.3 C.11.2.1.2.1), else the range its stored bits can hold."""
    if "WindowCenter" in header and "WindowWidth" in header:
        centre, width = _first(header.WindowCenter), _first(header.WindowWidth)
        if width >= 1:
            return np.clip((values - (centre - 0.5)) / max(width - 1, 1e-12) + 0.5, 0, 1)
    signed = int(header.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)
    ends = sorted((slope * low + intercept, slope * high + intercept))
    return np.clip((values - ends[0]) / (ends[1] - ends[0]), 0, 1)
