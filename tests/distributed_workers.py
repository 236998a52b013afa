"""Functions the distributed tests run on every rank (spawned processes import this module)."""

from __future__ import annotations

from vsad.distributed import rank_and_world, shard_range
from vsad.distributed.bank import (
    SEARCH_STATS,
    ShardedFeatureBanks,
    ShardedMemoryBank,
    fit_sharded,
    load_sharded_detector,
    save_sharded_detector,
)
from vsad.distributed.evaluate import evaluate_distributed


def memory_bank_search(features, queries, path):
    """This rank's queries searched on the sharded bank; then saved and reloaded."""
    rank, world = rank_and_world()
    bank = ShardedMemoryBank.from_full(features)
    lo, hi = shard_range(queries.shape[0], rank, world)
    d, i = bank.search(queries[lo:hi])
    bank.save(path)
    reloaded = ShardedMemoryBank.load(path)
    d2, i2 = reloaded.search(queries[lo:hi])
    return d, i, d2, i2, dict(SEARCH_STATS), bank.rows.shape[0]


def sharded_coreset(features, n, per_sample, projection_dim):
    """This rank's block of whole samples through the collective k-center selection."""
    from vsad.distributed.coreset import kcenter_greedy_sharded

    rank, world = rank_and_world()
    samples = features.shape[0] // per_sample
    lo, hi = shard_range(samples, rank, world)
    return kcenter_greedy_sharded(
        features[lo * per_sample : hi * per_sample],
        n,
        offset=lo * per_sample,
        total=features.shape[0],
        seed=4,
        projection_dim=projection_dim,
        tile=per_sample,
    )


def feature_banks(settings, train, test, batch, path):
    """Sharded FeatureBanks built from this rank's block of `train` (list per level of
    (S, M, D, h, w)), searched with this rank's block of `test`; saved, reloaded, searched."""
    rank, world = rank_and_world()
    banks = ShardedFeatureBanks(**settings)
    S = train[0].shape[0]
    lo, hi = shard_range(S, rank, world)
    for start in range(lo, hi, batch):
        banks.add([t[start : min(start + batch, hi)] for t in train])
    banks.finalize(seed=5, keep_loo=True)
    tlo, thi = shard_range(test[0].shape[0], rank, world)
    mine = [t[tlo:thi] for t in test] if thi > tlo else None
    maps = banks.standardize(banks.search(mine)) if mine is not None else banks.search(None)
    dists, indices = banks.search_with_index(mine)
    out = {
        "maps": maps if mine is not None else None,
        "dists": dists if mine is not None else None,
        "indices": indices if mine is not None else None,
        "loo": banks.loo_scored_distances(),
        "tensors": banks.tensors(),
        "settings": banks.settings(),
        "rows": len(banks.shard),
    }
    banks.save(path)
    loaded = ShardedFeatureBanks.from_tensors(banks.settings(), path)
    again = loaded.search(mine)
    out["reloaded"] = loaded.standardize(again) if mine is not None else None
    return out


def evaluate_saved(model_dir, category_kwargs, eval_kwargs):
    """Metrics of a saved detector on a synthetic test split, banks sharded over the ranks."""
    from vsad.data.synthetic import make_category

    detector = load_sharded_detector(model_dir)
    test = make_category(**category_kwargs).test
    details = evaluate_distributed(detector, test, **eval_kwargs)
    return details, len(detector.banks.shard)


def fit_and_save(config, category_kwargs, model_dir):
    """PatchKNN fitted with the bank built sharded, saved as one folder by rank 0."""
    from vsad.data.synthetic import make_category
    from vsad.detector import PatchKNN, PatchKNNConfig

    detector = PatchKNN(PatchKNNConfig.from_dict(config))
    fit_sharded(detector, make_category(**category_kwargs).train, progress=False)
    save_sharded_detector(detector, model_dir)
    return detector.thresholds, detector.normal_scores


def train_unet(seed, latents, cfg, out_dir):
    """The tiny UNet trained by DistributedVALDMTrainer; (state dict, history)."""
    from tiny_training import make_model_and_geometry

    from vsad.distributed.training import DistributedVALDMTrainer
    from vsad.model.training import TrainConfig

    model, hom, neighbors = make_model_and_geometry(seed)
    trainer = DistributedVALDMTrainer(
        model, TrainConfig(**cfg), homography=hom, neighbors=neighbors
    )
    history = trainer.fit(latents, out_dir, progress=False)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state["null_text"] = trainer.null_text.detach().clone()
    return state, history, trainer.step
