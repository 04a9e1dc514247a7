"""Where a mode's inputs come from: the dataset and a freshly initialised model."""

from __future__ import annotations

import dataclasses

import jax

from jackpot_jax import models
from jackpot_jax.data import datasets as data_lib
from jackpot_jax.errors import ConfigError, InputError, MissingInputError


def load_data(config) -> data_lib.Dataset:
    try:
        ds = data_lib.load_dataset(
            config.dataset,
            data_dir=config.data_dir or None,
            val_examples=config.val_examples,
            split_seed=config.split_seed,
            train_subset=config.train_subset or None,
            test_subset=config.test_subset or None,
        )
    except FileNotFoundError as e:  # data.py's message names the places it looked
        raise MissingInputError(str(e)) from e
    except ValueError as e:  # a bad dataset name, subset size or data file, named by data.py
        raise InputError(f"dataset={config.dataset!r}: {e}") from e
    if config.image_size:
        if ds.augment != "inception":
            raise ConfigError(
                f"image_size={config.image_size} applies only to ImageNet-style "
                f"data (resized crops); {config.dataset!r} has fixed-size images"
            )
        # Crop size of RandomResizedCrop / centre crop (eval resizes to 256/224 of it).
        ds = dataclasses.replace(
            ds, image_shape=(config.image_size, config.image_size, ds.image_shape[2])
        )
    return ds


def model_options(config, ds) -> dict:
    opts = dict(config.model_options)
    opts["num_classes"] = ds.num_classes
    return opts


def init_model(config, ds, seed: int):
    opts = model_options(config, ds)
    module = models.get_model(config.model, **opts)
    # Jitted: an eager init of ResNet-50 compiles hundreds of small programs.
    variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
        module, jax.random.key(seed), (1, *ds.image_shape)
    )
    return module, variables, opts
