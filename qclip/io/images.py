"""Images read safely: decoding that names the file (decompression bombs refused), and ImageFolder trees listed
without hanging on a directory loop or failing late on a dangling link.

`scan_image_folder` lists an ImageFolder tree as torchvision's `ImageFolder` does (class folders in sorted order,
then every file with an image extension below each, roots in sorted order), but it follows a directory link only
when the link does not lead back to one of its own ancestors (a loop is a `DataError` naming the link), and refuses
a dangling link or a non-regular file (a FIFO would block the reader) before any work starts.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import IO, Callable

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["IMAGE_FILE_EXTS", "open_rgb", "scan_image_folder", "ImageFolderDataset"]

#: File extensions of an ImageFolder's images (torchvision's `IMG_EXTENSIONS`).
IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def open_rgb(source: str | os.PathLike | IO[bytes], what: str) -> Image.Image:
    """Decode an image (a path or a binary file) to RGB; a decompression bomb (also one Pillow only warns about) or
    an undecodable file is a `DataError` naming `what`."""
    try:
        with warnings.catch_warnings():  # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{what} is a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"cannot decode {what}: {exc}") from exc


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(top: str) -> list[tuple[str, list[str]]]:
    """(folder, file names) of every folder under `top`, following directory links except into an ancestor."""
    out = []
    stack = [(top, (_dir_id(top),))]
    while stack:
        folder, ancestors = stack.pop()
        files, dirs = [], []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot list image folder {folder}: {exc.strerror or exc}") from None
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry.name)
                continue
            ident = _dir_id(entry.path)
            if ident in ancestors:
                raise DataError(f"image folder {top}: {entry.path} links back to a folder above it (a directory loop)")
            dirs.append((entry.path, (*ancestors, ident)))
        out.append((folder, files))
        stack.extend(reversed(dirs))
    return sorted(out)


def _check_image_file(path: str) -> None:
    """Refuse a dangling link or a file that is not a regular file, naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"image file {path} is a dangling link (its target does not exist)") from None
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"image file {path} is not a regular file")


def scan_image_folder(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folder names, [(image path, class index)]) of an ImageFolder tree, in torchvision's order; nothing is
    decoded. A directory loop, a dangling link or a non-regular image file is a `DataError` naming it."""
    folder = Path(folder)
    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=True))
    except OSError as exc:
        raise DataError(f"cannot list image folder {folder}: {exc.strerror or exc}") from None
    samples = []
    for index, name in enumerate(classes):
        for root, files in _walk(str(folder / name)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_FILE_EXTS):
                    path = os.path.join(root, file)
                    _check_image_file(path)
                    samples.append((path, index))
    return classes, samples


class ImageFolderDataset(Dataset):
    """(image, class index) pairs of an ImageFolder tree (see `scan_image_folder`); a file that does not decode is a
    `DataError` naming it."""

    def __init__(self, folder: str | os.PathLike, transform: Callable | None = None):
        self.folder = str(folder)
        self.classes, self.samples = scan_image_folder(folder)
        if not self.samples:
            raise DataError(f"image folder {folder} holds no image files (extensions {', '.join(IMAGE_FILE_EXTS)})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = open_rgb(path, f"image file {path}")
        return (self.transform(image) if self.transform is not None else image), label
