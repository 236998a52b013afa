"""MemoryBank and the greedy coreset."""

from __future__ import annotations

import pytest
import torch

from vsad.memory import MemoryBank
from vsad.ops.coreset import kcenter_greedy


def naive_kcenter(x: torch.Tensor, n: int, first: int) -> list[int]:
    """Textbook greedy k-center on the full distance matrix (small inputs only)."""
    d = torch.cdist(x.double(), x.double())
    chosen = [first]
    for _ in range(n - 1):
        chosen.append(int(d[:, chosen].min(dim=1).values.argmax()))
    return chosen


def test_coreset_matches_the_textbook_selection_on_separated_data(rng):
    centres = torch.randn(12, 8, generator=rng) * 20
    x = (centres.repeat_interleave(30, 0) + torch.randn(360, 8, generator=rng) * 0.1)[
        torch.randperm(360, generator=rng)
    ]
    got = kcenter_greedy(x, 12, seed=3, tile=50)
    assert got.tolist() == naive_kcenter(x, 12, int(got[0]))
    # One pick per cluster: every point lies near a selected centre.
    assert torch.cdist(x, x[got]).min(1).values.max() < 1.0


def test_coreset_with_projection_and_bad_arguments(rng):
    x = torch.randn(200, 64, generator=rng)
    sel = kcenter_greedy(x, 20, seed=0, projection_dim=16)
    assert sel.shape == (20,) and len(set(sel.tolist())) == 20
    with pytest.raises(ValueError, match="n: got 0"):
        kcenter_greedy(x, 0)
    with pytest.raises(ValueError, match="n: got 201"):
        kcenter_greedy(x, 201)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_add_search_save_load(dtype, rng, tmp_path):
    bank = MemoryBank(dtype=dtype)
    parts = [torch.randn(40, 5, 16, generator=rng), torch.randn(7, 16, generator=rng)]
    for p in parts:
        bank.add(p)
    assert len(bank) == 207 and bank.dim == 16
    queries = torch.randn(3, 11, 16, generator=rng)
    dist, index = bank.search(queries)
    assert dist.shape == (3, 11) and index.shape == (3, 11)
    stored = torch.cat([p.reshape(-1, 16) for p in parts]).to(dtype).float()
    want = torch.cdist(queries.reshape(-1, 16).double(), stored.double()).min(1)
    torch.testing.assert_close(dist.reshape(-1).double(), want.values, atol=1e-3, rtol=1e-4)

    path = tmp_path / "level0.safetensors"
    bank.save(path)
    assert not list(tmp_path.glob(".*tmp*"))
    loaded = MemoryBank.load(path)
    assert loaded.dtype == dtype and torch.equal(loaded.features, bank.features)
    d2, i2 = loaded.search(queries)
    assert torch.equal(d2, dist) and torch.equal(i2, index)


def test_search_in_chunks_and_mixed_precision(rng, monkeypatch):
    import vsad.memory.bank as bank_module

    monkeypatch.setattr(bank_module, "QUERY_CHUNK", 7)  # force several chunks
    bank = MemoryBank()
    bank.add(torch.randn(300, 20, generator=rng))
    queries = torch.randn(5, 9, 20, generator=rng)
    dist, index = bank.search(queries)
    whole = torch.cdist(queries.reshape(-1, 20), bank.features).min(1)
    assert torch.equal(index.reshape(-1), whole.indices)
    mixed = bank.search(queries, precision="mixed")
    assert torch.equal(mixed[0], dist) and torch.equal(mixed[1], index)


def test_coreset_keeps_a_subset(rng):
    bank = MemoryBank()
    bank.add(torch.randn(500, 8, generator=rng))
    before = bank.features.clone()
    keep = bank.coreset(50, seed=1)
    assert len(bank) == 50 and torch.equal(bank.features, before[keep])


def test_bad_input(rng, tmp_path):
    bank = MemoryBank()
    with pytest.raises(ValueError, match="memory bank is empty"):
        bank.search(torch.randn(2, 4, generator=rng))
    bank.add(torch.randn(10, 4, generator=rng))
    with pytest.raises(
        ValueError, match="features: dimension 5 does not match the bank's dimension 4"
    ):
        bank.add(torch.randn(3, 5, generator=rng))
    with pytest.raises(ValueError, match="features: contain NaN or Inf"):
        bank.add(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="queries: dimension 3 does not match"):
        bank.search(torch.randn(2, 3, generator=rng))
    with pytest.raises(ValueError, match="dtype: got torch.float64"):
        MemoryBank(dtype=torch.float64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MemoryBank.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a vsad memory bank"):
        MemoryBank.load(tmp_path / "other.safetensors")
