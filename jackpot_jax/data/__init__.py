"""Data: dataset sources and their files, image folders, augmentation, the grain input pipeline.

`datasets` (what a config's ``dataset`` names: arrays in memory or decoded on the fly),
`files` (IDX, CIFAR and ImageNet files: found, verified, downloaded), `image_folder`
(ImageNet-style class folders), `augment` (crops, flips, resizing as torchvision does it),
`input_pipeline` (epoch order, batches, worker processes, device prefetch). Imports nothing
from the method, kernels, models or pipeline.
"""
