"""ResNet-50 (torchvision V1.5) on ImageNet with the paper's hyperparameters (GPUs needed).

Data: ImageNet as torchvision's ImageFolder reads it, DIR/train/<wnid>/*.JPEG and
DIR/val/<wnid>/*.JPEG (--config.data_dir=DIR; the test split is val/, the validation split
is held out of train/), decoded by libjpeg-turbo in --config.data_workers processes (default:
one per core). Or ImageNet prepared for tfds (ArrayRecord): --config.dataset=imagenet2012
--config.data_dir=/path/to/tensorflow_datasets. Weights: convert torchvision's ResNet-50 first:
  python tools/convert_torch_weights.py --arch resnet50 --input resnet50.pth --output runs/r50_dense
Run (10 search epochs, 90% sparsity):
  python -m jackpot_jax.main --config configs/imagenet_resnet50.py --workdir runs/imagenet_r50 \\
      --config.pretrained=runs/r50_dense --config.data_dir=/path/to/imagenet

Search recipe: the official one (batch 256, SGD lr 0.1 with the cosine stepped per epoch,
scores 1.0 / 0.95, top-k masks). The Fashion-MNIST configs use a recipe selected for the LeNets
on Fashion-MNIST (docs/results/fashion_mnist/efficiency/); it is not carried over here.
"""

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = base_config()
    c.model = "resnet50"
    c.dataset = "imagenet_folder"
    c.val_examples = 10000
    c.batch_size = 256
    c.eval_batch_size = 500
    c.pretrain.epochs = 90
    c.pretrain.weight_decay = 1e-4
    c.search.epochs = 10
    c.search.weight_decay = 1e-4
    c.finetune.epochs = 10
    c.sparsity = 0.9
    return c
