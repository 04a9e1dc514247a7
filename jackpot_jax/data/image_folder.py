"""Image classification data kept as torchvision's `ImageFolder` reads it: ROOT/<class>/<file>.

For ImageNet: DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (the validation images sorted
into class folders, as the authors' code and torchvision's examples expect). The order is
ImageFolder's: classes are the sorted folder names of DIR/train (label = position), files are
walked in sorted order within each class folder (subfolders included) and kept when their
name ends in one of `augment.IMAGE_EXTENSIONS`, case-insensitive. Files are only listed here;
they are read and decoded by the input pipeline (`FolderSource` gives their bytes).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jackpot_jax.data.augment import IMAGE_EXTENSIONS


def find_classes(directory: str) -> list[str]:
    """Sorted names of the sub-folders of `directory` (as ImageFolder's `find_classes`)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f'{directory} is not a directory (expected one folder of images per class in it)'
        )
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(
            f'{directory} has no class folder (expected one folder of images per class in it)'
        )
    return classes


def list_images(directory: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """(paths relative to `directory`, int32 labels) of every image under directory/<class>.

    Raises FileNotFoundError naming a class folder that holds no image file.
    """
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(directory, name)
        found = 0
        for root, _, names in sorted(os.walk(class_dir, followlinks=True)):
            for file_name in sorted(names):
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.relpath(os.path.join(root, file_name), directory))
                    found += 1
        if not found:
            raise FileNotFoundError(
                f'class folder {class_dir} has no image file (extensions, '
                f"any case: {', '.join(IMAGE_EXTENSIONS)})"
            )
        labels += [label] * found
    return paths, np.asarray(labels, np.int32)


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """Random access to the files of an image folder: `source[i]` is the bytes of file i.

    Paths are kept relative to `root`, encoded, in one numpy array: ~40 bytes per ImageNet file
    where a list of str would take ~100 (the source is copied into every worker process).
    """

    root: str
    relpaths: np.ndarray  # dtype 'S': os.fsencode'd paths relative to root

    @classmethod
    def from_paths(cls, root: str, relpaths: list[str]) -> FolderSource:
        return cls(
            os.path.abspath(root), np.asarray([os.fsencode(p) for p in relpaths], dtype=bytes)
        )

    def __len__(self) -> int:
        return len(self.relpaths)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.relpaths[i]))

    def __getitem__(self, i: int) -> bytes:
        with open(self.path(i), 'rb') as f:
            return f.read()


def load_image_folder(data_dir: str | None):
    """(classes, train source, train labels, val source, val labels) of DIR/train and DIR/val.

    Labels follow the classes of DIR/train; DIR/val may lack a class folder but may not have
    one that DIR/train lacks. Missing folders and empty classes raise errors naming the path.
    """
    if not data_dir:
        raise ValueError(
            "dataset 'imagenet_folder' needs --config.data_dir=DIR, with the "
            'training images in DIR/train/<class>/ and the validation images in '
            'DIR/val/<class>/'
        )
    train_dir, val_dir = os.path.join(data_dir, 'train'), os.path.join(data_dir, 'val')
    for directory in (data_dir, train_dir, val_dir):
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f'{directory} is not a directory; imagenet_folder reads '
                f'DIR/train/<class>/* and DIR/val/<class>/* (DIR={data_dir})'
            )
    classes = find_classes(train_dir)
    val_classes = find_classes(val_dir)
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise ValueError(
            f'{val_dir} has class folders that {train_dir} lacks: {unknown[:5]}; '
            'labels are positions in the sorted training classes'
        )
    train_paths, train_labels = list_images(train_dir, classes)
    val_paths, val_local = list_images(val_dir, val_classes)
    val_labels = np.asarray([classes.index(c) for c in val_classes], np.int32)[val_local]
    return (
        classes,
        FolderSource.from_paths(train_dir, train_paths),
        train_labels,
        FolderSource.from_paths(val_dir, val_paths),
        val_labels,
    )
