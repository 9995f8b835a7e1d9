"""The end of a pre-training run: the backbone (no projector) as a model export.

The export records the front end of the shards the run trained on (their FeatureConfig),
so `embed` computes the features the weights expect, and where the weights came from.
"""
from __future__ import annotations

import keras

from musicrep.contracts.feature_config import FeatureConfig
from musicrep.model.export import ExportMetadata, save
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, build_sf_nfnet
from musicrep.model.training_config import TrainConfig


def export_backbone(
    backbone: keras.Model, export_dir: str, *, config: TrainConfig, features: FeatureConfig, step: int
) -> ExportMetadata:
    """Saves a float32 copy of `backbone` (the export is policy-free; weights copied by order)."""
    model = build_sf_nfnet(config.model_config)
    model.set_weights(backbone.get_weights())
    return save(
        model,
        export_dir,
        config=SF_NFNET_VARIANTS[config.model_config],
        feature_config=features,
        source=f"musicrep pretrain {config.objective} step {step} ({config.output_dir})",
    )
