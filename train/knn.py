"""k-NN evaluation of a backbone's [cls] features (DINO's weighted vote): the pre-training quality
signal (train/pretrain_backbone.py) and the class probe of train/evaluate.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from reptok.encoder import EncoderConfig
from train.ssl_views import cls_features, module_device, pixel_stats

# ------------------------------------------------------------------------------------- k-NN


def dataset_labels(dataset: Dataset, key: str) -> list[str]:
    """Class names per item without loading images: 'category' / 'subcategory' of an EmojiDataset,
    or 'label' (the class the dataset was built with, e.g. an image folder's sub-folder)."""
    data, rows = getattr(dataset, "data", None), getattr(dataset, "rows", None)
    if key in ("category", "subcategory") and data is not None and rows is not None:
        return getattr(data, key)[rows].tolist()
    if key == "label":
        return [dataset.class_names[i] for i in dataset.labels]
    raise ValueError(f"{type(dataset).__name__} has no {key!r} labels; use 'label'")


@torch.no_grad()
def extract_features(
    backbone: VisionTransformer, dataset: Dataset, config: EncoderConfig | None = None, batch_size: int = 128
) -> Tensor:
    """(N, D) L2-normalised [cls] outputs of the whole data set, in order, in eval mode."""
    device = module_device(backbone)
    size = backbone.patch_embed.img_size
    mean, std = pixel_stats(backbone, config)
    was_training = backbone.training
    backbone.eval()
    features = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = (batch["image"].to(device).float() + 1) / 2  # (B, 3, H, W) in [0, 1]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = (x - mean.to(device)) / std.to(device)
        features.append(F.normalize(cls_features(backbone, x).float(), dim=-1).cpu())
    backbone.train(was_training)
    return torch.cat(features)


def knn_classify(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """DINO's weighted k-NN: each of the k most cosine-similar bank items votes exp(sim / T)."""
    k = min(k, len(bank))
    preds = []
    for chunk in queries.split(1024):
        sims, idx = (chunk @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(
            1, bank_labels[idx], (sims / temperature).exp()
        )
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    backbone: VisionTransformer,
    train_ds: Dataset,
    heldout_ds: Dataset,
    label_keys: Sequence[str] = ("category", "subcategory"),
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 128,
    config: EncoderConfig | None = None,
) -> dict[str, Any]:
    """k-NN accuracy of the held-out split against the train split as the memory bank, per label key.

    Held-out emoji are unseen in every style, so this measures how well the [cls] output groups
    new emoji with their category, which is what the generator has to model.
    """
    bank = extract_features(backbone, train_ds, config, batch_size)  # (N, D)
    queries = extract_features(backbone, heldout_ds, config, batch_size)  # (Q, D)
    result: dict[str, Any] = {"k": min(k, len(bank)), "temperature": temperature}
    result.update(n_bank=len(bank), n_query=len(queries))
    for key in label_keys:
        bank_names, query_names = dataset_labels(train_ds, key), dataset_labels(heldout_ds, key)
        names = {name: i for i, name in enumerate(sorted(set(bank_names) | set(query_names)))}
        bank_ids = torch.tensor([names[n] for n in bank_names])
        query_ids = torch.tensor([names[n] for n in query_names])
        preds = knn_classify(bank, bank_ids, queries, k, temperature, len(names))
        result[key] = float((preds == query_ids).float().mean())
    return result
