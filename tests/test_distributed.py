"""vsad.distributed on 1–3 CPU processes (gloo on loopback, spawned with a time limit): sharded
bank searches, statistics and files, distributed evaluation and DDP training give what one
process gives."""

from __future__ import annotations

import math

import distributed_workers as workers
import pytest
import torch

from vsad.distributed import run_workers, shard_range
from vsad.memory.bank import MemoryBank
from vsad.memory.feature_banks import FeatureBanks
from vsad.ops.min_l2 import min_l2

TIMEOUT = 90  # seconds per spawned group; each test stays far below


def near_tie_bank(gen, N=600, D=8, Q=300):
    """Rows on a coarse grid far from the origin (float32 rounds many distances to the same
    value while the scores differ), plus exact duplicates in different shards."""
    feat = 300 + torch.randint(0, 4, (N, D), generator=gen).float() * 0.01
    feat += torch.randn(N, D, generator=gen) * 1e-4
    feat[N // 2 : N // 2 + 40] = feat[:40]
    queries = 300 + torch.randint(0, 4, (Q, D), generator=gen).float() * 0.01
    return feat, queries


def naive_index(queries, feat, world):
    """Lowest index among the shards' equal distances (what a plain (dist, index) min gives)."""
    ds, idx = [], []
    for r in range(world):
        lo, hi = shard_range(feat.shape[0], r, world)
        d, i = min_l2(queries, feat[lo:hi])
        ds.append(d)
        idx.append(i + lo)
    d, i = torch.stack(ds), torch.stack(idx)
    return torch.where(d == d.min(0).values, i, i.max() + 1).min(0).values


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_memory_bank_search_is_identical_to_one_process(world, rng, tmp_path):
    feat, queries = near_tie_bank(rng)
    single = MemoryBank(feat.shape[1])
    single.add(feat)
    d0, i0 = single.search(queries)
    path = tmp_path / "bank.safetensors"
    results = run_workers(workers.memory_bank_search, world, feat, queries, path, timeout=TIMEOUT)
    d = torch.cat([r[0] for r in results])
    i = torch.cat([r[1] for r in results])
    assert torch.equal(d, d0)
    assert torch.equal(i, i0)
    assert torch.equal(torch.cat([r[2] for r in results]), d0)  # saved, reloaded by world ranks
    assert torch.equal(torch.cat([r[3] for r in results]), i0)
    assert sum(r[5] for r in results) == feat.shape[0]
    assert torch.equal(MemoryBank.load(path).features, feat)  # the single-process file
    if world > 1:
        assert results[0][4]["resolved_ties"] > 0  # the tie path ran
        print("queries a plain (dist, index) min gets wrong:",
              int((naive_index(queries, feat, world) != i0).sum()))  # fmt: skip


def random_levels(gen, S, M, shapes):
    return [torch.randn(S, M, D, h, w, generator=gen) for D, h, w in shapes]


CASES = {
    "local": dict(mode="local", radius=1, per_view=True, normalization="position"),
    "global-pooled": dict(mode="global", per_view=False, normalization="position"),
    "global-coreset": dict(mode="global", per_view=True, coreset_ratio=0.4, normalization="none"),
    "pooled-coreset": dict(
        mode="global", per_view=False, coreset_ratio=0.3, normalization="position"
    ),
}


@pytest.mark.parametrize(("case", "world"), [("local", 2), ("local", 3), ("global-pooled", 3),
                                             ("global-coreset", 2), ("global-coreset", 3),
                                             ("pooled-coreset", 2)])  # fmt: skip
def test_sharded_feature_banks_are_identical_to_one_process(case, world, rng, tmp_path):
    settings = CASES[case]
    shapes = [(6, 5, 4), (3, 3, 3)]
    train = random_levels(rng, 7, 3, shapes)
    test = random_levels(rng, 4, 3, shapes)
    single = FeatureBanks(**settings)
    for start in range(0, 7, 3):
        single.add([t[start : start + 3] for t in train])
    single.finalize(seed=5, keep_loo=True)
    maps0 = single.standardize(single.search(test))
    path = tmp_path / "bank.safetensors"
    results = run_workers(
        workers.feature_banks, world, settings, train, test, 2, path, timeout=TIMEOUT
    )
    for level in range(len(shapes)):
        got = torch.cat([r["maps"][level] for r in results if r["maps"] is not None])
        assert torch.equal(got, maps0[level]), level
        reloaded = torch.cat([r["reloaded"][level] for r in results if r["reloaded"] is not None])
        assert torch.equal(reloaded, maps0[level]), level
        for r in results:
            assert torch.equal(r["loo"][level], single.loo_scored_distances()[level])
    # With the index: the single-process flat rows of each (level, view) bank.
    for level, feat in enumerate(test):
        got_d = torch.cat([r["dists"][level] for r in results if r["dists"] is not None])
        got_i = torch.cat([r["indices"][level] for r in results if r["indices"] is not None])
        for view in range(feat.shape[1]):
            key = (level, view if single.per_view else 0)
            q = feat[:, view].permute(0, 2, 3, 1).contiguous()
            if single.mode == "local":
                from vsad.ops.min_l2 import min_l2_local

                d0, i0 = min_l2_local(q, single._local[key][0], radius=single.radius)
            else:
                d0, i0 = single._global[key].search(q)
            assert torch.equal(got_d[:, view], d0)
            assert torch.equal(got_i[:, view], i0)
    expected = single.tensors()
    assert results[0]["tensors"].keys() == expected.keys()
    for name, t in expected.items():
        assert torch.equal(results[0]["tensors"][name], t), name
    assert results[0]["settings"] == single.settings()
    assert sum(r["rows"] for r in results) == len(single)
    # Each rank holds whole samples' rows (a coreset: ⌈rows / world⌉ of every bank), never more.
    assert max(r["rows"] for r in results) <= len(single) * math.ceil(7 / world) / 7
    assert all(r["tensors"] is None for r in results[1:])


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_coreset_selects_the_single_process_rows(world, rng):
    """Greedy k-center over sample blocks spread over the ranks: the same rows, in the same
    order, as one process (projection included), each rank keeping its part of the result."""
    from vsad.ops.coreset import kcenter_greedy

    per_sample, samples, D = 12, 7, 160  # D > 128: the random projection is used
    feat = torch.randn(samples * per_sample, D, generator=rng)
    feat[30:42] = feat[:12]  # duplicate rows: equal distances, the lowest index wins
    n = 40
    want = kcenter_greedy(feat, n, seed=4, projection_dim=128, tile=per_sample)
    results = run_workers(workers.sharded_coreset, world, feat, n, per_sample, 128, timeout=TIMEOUT)
    for selected, _ in results:
        assert torch.equal(selected, want)
    kept = torch.cat([k for _, k in results])
    assert torch.equal(kept, feat[want])
    assert max(k.shape[0] for _, k in results) == -(-n // world)


def test_sharded_coreset_errors_name_the_argument(rng):
    from vsad.distributed.coreset import kcenter_greedy_sharded

    rows = torch.randn(8, 3, generator=rng)
    with pytest.raises(ValueError, match="offset: got 3"):
        kcenter_greedy_sharded(rows, 2, offset=3, total=8, tile=4)
    with pytest.raises(ValueError, match="n: got 9"):
        kcenter_greedy_sharded(rows, 9, offset=0, total=8, tile=4)
    with pytest.raises(ValueError, match="cover 12 rows"):
        kcenter_greedy_sharded(rows, 2, offset=0, total=12, tile=4)
    rows[5, 1] = float("nan")
    with pytest.raises(ValueError, match="row 5 contains NaN"):
        kcenter_greedy_sharded(rows, 2, offset=0, total=8, tile=4)


CATEGORY = dict(n_train=6, n_test=7, n_views=3, image_size=48, seed=11, defect_rate=0.5)
KNN = dict(image_size=32, smoothing_sigma=1.0, batch_size=2, threshold_fpr=0.2)


def _same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (k, a[k], b[k])


@pytest.fixture(scope="module")
def saved_knn(tmp_path_factory):
    from vsad.data.synthetic import make_category
    from vsad.detector import PatchKNN, PatchKNNConfig

    folder = tmp_path_factory.mktemp("knn") / "model"
    category = make_category(**CATEGORY)
    PatchKNN(PatchKNNConfig.from_dict(KNN)).fit(category.train, progress=False).save(folder)
    return folder, category


@pytest.mark.parametrize("exact_budget", [1 << 22, 3000])  # exact, then binned pixel metrics
def test_distributed_evaluation_gives_the_single_process_metrics(saved_knn, exact_budget):
    from vsad.detector import load_detector
    from vsad.eval import Evaluator

    folder, category = saved_knn
    detector = load_detector(folder)
    evaluator = Evaluator(exact_budget=exact_budget)
    for sample, p in zip(category.test, detector.iter_predict(category.test, progress=False),
                         strict=True):  # fmt: skip
        evaluator.add(sample, p.maps, view_scores=p.view_scores, sample_score=p.score)
    expected = evaluator.details()
    assert expected["pixel_metrics_exact"] is (exact_budget > 1 << 20)
    for world in (1, 2, 3):
        results = run_workers(
            workers.evaluate_saved, world, folder, CATEGORY, {"exact_budget": exact_budget},
            timeout=TIMEOUT,
        )  # fmt: skip
        for details, _ in results:
            _same_metrics(details["metrics"], expected["metrics"])
            assert details["counts"] == expected["counts"]
            assert details["error_bounds"] == expected["error_bounds"]
        assert sum(rows for _, rows in results) == len(detector.banks)


def test_sharded_fit_gives_the_single_process_detector(saved_knn, tmp_path):
    from safetensors.torch import load_file

    from vsad.detector import load_detector

    folder, _ = saved_knn
    single = load_detector(folder)
    out = tmp_path / "model"
    (thresholds, normal_scores), _ = run_workers(
        workers.fit_and_save, 2, KNN, CATEGORY, out, timeout=TIMEOUT
    )
    assert thresholds == single.thresholds
    assert normal_scores == single.normal_scores
    a, b = load_file(folder / "bank.safetensors"), load_file(out / "bank.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


TRAIN = dict(steps=4, batch_size=3, lr=1e-3, checkpoint_every=2)  # 3 = 1 + 2 on two ranks
#: Stated tolerance of DDP training against one process. The gradients differ only by float
#: summation order (~3e-6 of each tensor's largest element), but AdamW divides by
#: sqrt(v) + eps (eps = 1e-8), so on the few elements whose gradient is of the order of its own
#: rounding noise the update direction itself is noise: those weights can differ by up to Adam's
#: step bound, ~lr per step. Hence: max |Δ| <= 2·lr·steps, 99.9 % of the weights within 1e-5,
#: mean |Δ| <= 1e-6; losses within 1e-5 relative.
TRAIN_ATOL = 2 * TRAIN["lr"] * TRAIN["steps"]
TRAIN_Q999_ATOL = 1e-5
TRAIN_MEAN_ATOL = 1e-6


def _single_training(seed, latents, cfg):
    from tiny_training import make_model_and_geometry

    from vsad.model.training import TrainConfig, VALDMTrainer

    model, hom, neighbors = make_model_and_geometry(seed)
    trainer = VALDMTrainer(model, TrainConfig(**cfg), homography=hom, neighbors=neighbors)
    history = trainer.fit(latents, progress=False)
    state = dict(trainer.model.state_dict())
    state["null_text"] = trainer.null_text.detach()
    return state, history


def test_ddp_training_matches_one_process_and_resumes_with_another_world_size(rng, tmp_path):
    pytest.importorskip("diffusers")
    seed = int(torch.randint(0, 1000, (1,), generator=rng))
    latents = torch.randn(5, 3, 4, 16, 16, generator=rng)
    state0, history0 = _single_training(seed, latents, TRAIN)
    results = run_workers(
        workers.train_unet, 2, seed, latents, TRAIN, tmp_path / "a", timeout=TIMEOUT
    )
    (state_a, history_a, step_a), (state_b, _, _) = results
    assert step_a == TRAIN["steps"]
    worst = max(float((state_a[k] - state0[k]).abs().max()) for k in state0)
    diffs = torch.cat([(state_a[k] - state0[k]).abs().flatten() for k in state0])
    q999 = float(torch.quantile(diffs[:: max(1, diffs.numel() // 1_000_000)], 0.999))
    print(f"after {TRAIN['steps']} steps: |Δparam| max {worst:.2e}, 99.9 % {q999:.2e}, "
          f"mean {diffs.mean():.2e}")  # fmt: skip
    assert worst <= TRAIN_ATOL
    assert q999 <= TRAIN_Q999_ATOL
    assert float(diffs.mean()) <= TRAIN_MEAN_ATOL
    for k in state0:  # every rank holds the same weights
        assert torch.equal(state_a[k], state_b[k]), k
    for a, b in zip(history_a, history0, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    # Stop at step 2 (rank-0 checkpoint), resume on 3 ranks to step 4.
    first = run_workers(
        workers.train_unet, 2, seed, latents, {**TRAIN, "steps": 2}, tmp_path / "b",
        timeout=TIMEOUT,
    )  # fmt: skip
    assert first[0][2] == 2 and (tmp_path / "b" / "checkpoint.safetensors").is_file()
    assert not list((tmp_path / "b").glob(".*"))  # no temporary file left
    resumed = run_workers(
        workers.train_unet, 3, seed, latents, TRAIN, tmp_path / "b", timeout=TIMEOUT
    )
    assert resumed[0][2] == TRAIN["steps"]
    assert max(float((resumed[0][0][k] - state0[k]).abs().max()) for k in state0) <= TRAIN_ATOL
    again = torch.cat([(resumed[0][0][k] - state0[k]).abs().flatten() for k in state0])
    assert float(again.mean()) <= TRAIN_MEAN_ATOL
    # Training moved the weights far more than the tolerance (the comparison can fail).
    from tiny_training import make_model_and_geometry

    start = dict(make_model_and_geometry(seed)[0].state_dict())
    travel = torch.cat([(state0[k] - start[k]).abs().flatten() for k in start])
    assert float(travel.mean()) > 100 * TRAIN_MEAN_ATOL


def test_errors_name_the_argument():
    from vsad.distributed.launch import torchrun_command

    with pytest.raises(ValueError, match="world_size"):
        run_workers(workers.memory_bank_search, 0)
    with pytest.raises(ValueError, match="nproc"):
        torchrun_command(0, [])
    with pytest.raises(ValueError, match="rank, world"):
        shard_range(4, 2, 2)


def _vsad(command: str, args: list[str], cwd, timeout: int = 240) -> None:
    import os
    import subprocess
    import sys

    # cwd: not the checkout, whose vsad/ (without the compiled vsad._C) `python -m` would put
    # first on sys.path; the processes would then search with the pure-PyTorch reference,
    # whose results depend on the bank's size at the last bit (BLAS blocking).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-m", "vsad", command, *args], env=env, timeout=timeout, cwd=cwd,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def realiad_root(tmp_path_factory):
    from vsad.data import make_category, write_realiad

    root = tmp_path_factory.mktemp("realiad")
    write_realiad(make_category(n_train=4, n_test=4, n_views=5, image_size=96, seed=5), root, "toy")
    return root


def test_cli_train_and_test_nproc_2_give_the_single_process_results(realiad_root, tmp_path):
    import json

    from safetensors.torch import load_file

    data = ["--data", str(realiad_root), "--category", "toy", "--quiet", "--model", "patchknn"]
    # Both runs in fresh processes with the same environment: the pytest process may hold
    # another thread count or kernel ISA (set by earlier tests), which moves the last bits.
    _vsad("train", [*data, "--out", str(tmp_path / "one"), "image_size=48"], tmp_path)
    _vsad(
        "train", [*data, "--out", str(tmp_path / "two"), "--nproc", "2", "image_size=48"], tmp_path
    )
    one, two = (load_file(tmp_path / r / "model" / "bank.safetensors") for r in ("one", "two"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    meta = [
        json.loads((tmp_path / r / "model" / "detector.json").read_text()) for r in ("one", "two")
    ]
    assert meta[0]["thresholds"] == meta[1]["thresholds"]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    # vsad test --nproc 2: the bank sharded over two processes, rank 0 writes the results of
    # one process.
    run = ["--run", str(tmp_path / "one"), "--quiet"]
    _vsad("test", [*run, "--out", str(tmp_path / "test1")], tmp_path)
    _vsad("test", [*run, "--out", str(tmp_path / "test2"), "--nproc", "2"], tmp_path)
    got = [json.loads((tmp_path / t / "metrics.json").read_text()) for t in ("test1", "test2")]
    assert got[0]["metrics"] == got[1]["metrics"]
    assert got[0]["decisions"] == got[1]["decisions"]
    scores = [(tmp_path / t / "scores.csv").read_text() for t in ("test1", "test2")]
    assert scores[0] == scores[1]
    assert (tmp_path / "test2" / "report.html").is_file()


def test_cli_train_nproc_2_trains_the_unet_pipeline(realiad_root, tmp_path):
    pytest.importorskip("diffusers")
    from vsad.detector import load_detector

    run = tmp_path / "run"
    tiny = ["encoder=unshuffle", "image_size=64", "feature_levels=[-2,-1]", "latent_level=false",
            "train.steps=2", "train.checkpoint_every=1", "inversion_steps=1"]  # fmt: skip
    data = ["--data", str(realiad_root), "--category", "toy", "--quiet"]
    _vsad("train", [*data, "--out", str(run), "--nproc", "2", *tiny], tmp_path)
    assert (run / "checkpoints" / "checkpoint.safetensors").is_file()
    detector = load_detector(run / "model")
    assert detector.model is not None and len(detector.banks) > 0
