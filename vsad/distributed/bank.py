"""Memory banks sharded over the ranks of a process group.

Each rank holds a contiguous block of every bank's rows (`shard_range`: rank r the rows
[N·r/w, N·(r+1)/w); local-mode banks are cut by training sample, so a sample's rows stay on one
rank). A search is collective: every rank passes its own queries (possibly none), the queries
are all-gathered, each rank runs the ordinary fused search (`min_l2` / `min_l2_local`) of all
of them on its shard, and the per-rank bests are all-reduced:

- distances only (`ShardedFeatureBanks.search`, what the detectors use): an all-reduce MIN of
  the float32 distances. dist = sqrt(max(‖q‖² + min score, 0)) is monotone in the score, so the
  minimum of the shards' distances is the single-process distance bit for bit.
- with the index (`ShardedMemoryBank.search`, `ShardedFeatureBanks.search_with_index`): one
  int64 key per query, (float32 bits of dist) << 32 | global index, all-reduced with MIN — the
  smallest distance, lowest index among equal distances — plus an all-reduce SUM of "this rank
  reached that distance". Two shards can reach the same rounded distance with different scores;
  the single process would take the smaller score, not the lower index. Those queries (rare) are
  resolved exactly: the tied ranks all-gather their candidate rows with their norms, and the
  query is searched once more, by the same kernel, against the candidates in global-index
  order, which gives the (score, index) lexicographic minimum the single-process bank returns.
  Results are identical (dist and index) for every world size.

Building: each rank adds the features of its own block of training samples; `finalize`
computes the position statistics and leave-one-out maps collectively (the owner of sample s
broadcasts its query, every rank searches its shard without s's rows, MIN all-reduce). The
coreset (greedy k-center) is selected collectively (`vsad.distributed.coreset`): each rank
keeps its rows' distances and 1/world of the kept rows, and the selection is the one process's.

Saving gathers the shards on rank 0 and writes the single-process format (`FeatureBanks
.tensors()`, `MemoryBank.save`); loading reads only the rank's slice (safetensors slices), so
any world size loads any file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from vsad.distributed.launch import rank_and_world, shard_range
from vsad.memory.bank import FORMAT_VERSION, MemoryBank
from vsad.memory.feature_banks import FeatureBanks, _chosen_samples
from vsad.ops.min_l2 import BANK_DTYPES, bank_sq_norms, min_l2, min_l2_local

#: Counts of the collective searches (read by the tests and the benchmark): queries searched,
#: queries whose shards tied on the distance and were resolved exactly.
SEARCH_STATS = {"queries": 0, "resolved_ties": 0}


# -- collectives --------------------------------------------------------------------------------
def all_gather_rows(t: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's `t` (n_r, ...) — n_r may differ, the trailing shape may not — in rank order."""
    _, world = rank_and_world(group)
    if world == 1:
        return [t]
    count = torch.tensor([t.shape[0]], dtype=torch.int64)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c) for c in counts]
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous(), group=group)
    return [o[:n] for o, n in zip(out, sizes, strict=True)]


def _float_bits(d: torch.Tensor) -> torch.Tensor:
    """float32 distances (>= 0) as int64 whose order is the distances' order."""
    return d.contiguous().view(torch.int32).to(torch.int64)


def reduce_nearest(
    dist_: torch.Tensor,
    index: torch.Tensor,
    queries: torch.Tensor,
    rows_of,
    resolve,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global nearest row of P queries that every rank has searched on its own shard.

    dist_, index: (P,) this rank's best distance and its global row index; queries (P, D) the
    queries (identical on every rank); rows_of(indices) -> (rows (k, D), norms (k,)) of this
    rank's global rows; resolve(query (D,), rows (C, D), norms (C,)) -> the position the
    single-process kernel picks among candidate rows in global-index order."""
    _, world = rank_and_world(group)
    SEARCH_STATS["queries"] += int(dist_.numel())
    if world == 1:
        return dist_, index
    if index.numel() and int(index.max()) >= 1 << 31:
        raise ValueError(f"index: got {int(index.max())}, expected global indices < 2^31")
    bits = _float_bits(dist_)
    key = (bits << 32) | index
    dist.all_reduce(key, op=dist.ReduceOp.MIN, group=group)
    best_bits, best_index = key >> 32, key & 0xFFFFFFFF
    reached = (bits == best_bits).to(torch.int32)
    tied = reached.clone()
    dist.all_reduce(tied, op=dist.ReduceOp.SUM, group=group)
    best = best_bits.to(torch.int32).view(torch.float32)
    ambiguous = torch.nonzero(tied > 1).flatten()  # the same on every rank
    if ambiguous.numel():
        SEARCH_STATS["resolved_ties"] += int(ambiguous.numel())
        mine = ambiguous[reached[ambiguous].bool()]
        rows, norms = rows_of(index[mine])
        offers = [None] * world
        payload = (mine, index[mine], rows.float(), norms.float())
        dist.all_gather_object(offers, payload, group=group)
        candidates: dict[int, list] = {}
        for pos, idx, r, n in offers:  # rank order = global index order
            for k, p in enumerate(pos.tolist()):
                candidates.setdefault(p, []).append((int(idx[k]), r[k], n[k]))
        best_index = best_index.clone()
        for p, cands in candidates.items():
            cands.sort(key=lambda c: c[0])
            rows_c = torch.stack([c[1] for c in cands])
            norms_c = torch.stack([c[2] for c in cands])
            pick = resolve(queries[p].float(), rows_c, norms_c)
            best_index[p] = cands[pick][0]
    return best, best_index


# -- one (N, D) bank ----------------------------------------------------------------------------
class ShardedMemoryBank:
    """A `MemoryBank` whose rows are spread over the ranks; `search` is collective and returns
    what the single-process bank returns (global indices)."""

    def __init__(self, rows: torch.Tensor, offset: int, total: int, *, group=None) -> None:
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
            got = getattr(rows, "shape", rows)
            raise ValueError(f"rows: got {got!r}, expected a (n, D) tensor")
        if rows.dtype not in BANK_DTYPES:
            raise TypeError(f"rows: got dtype {rows.dtype}, expected one of {list(BANK_DTYPES)}")
        if rows.shape[0] < 1:
            raise ValueError(
                f"rows: this rank's shard is empty (total={total}); every rank needs at least "
                "one bank row, so use a world size <= the number of rows"
            )
        self.rows, self.offset, self.total, self.group = rows.contiguous(), offset, total, group
        self.norms = bank_sq_norms(self.rows)

    @classmethod
    def from_full(cls, features: torch.Tensor, *, group=None) -> ShardedMemoryBank:
        """This rank's slice of the (N, D) rows (the same tensor on every rank)."""
        rank, world = rank_and_world(group)
        lo, hi = shard_range(features.shape[0], rank, world)
        return cls(features[lo:hi].clone(), lo, features.shape[0], group=group)

    @classmethod
    def load(
        cls, path: str | Path, *, group=None, device: torch.device | str = "cpu"
    ) -> ShardedMemoryBank:
        """This rank's slice of a `MemoryBank.save` file (only the slice is read)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"memory bank file: {path} does not exist")
        rank, world = rank_and_world(group)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT_VERSION or "features" not in f.keys():  # noqa: SIM118
                raise ValueError(
                    f"memory bank file: {path} is not a vsad memory bank "
                    f"(format {meta.get('format')!r})"
                )
            sl = f.get_slice("features")
            total = sl.get_shape()[0]
            lo, hi = shard_range(total, rank, world)
            rows = sl[lo:hi]
        return cls(rows.to(device), lo, total, group=group)

    def __len__(self) -> int:
        return self.total

    def gather(self) -> torch.Tensor | None:
        """All rows (N, D) on rank 0 (None on the others); collective."""
        rank, world = rank_and_world(self.group)
        parts = all_gather_rows(self.rows.cpu(), self.group) if world > 1 else [self.rows.cpu()]
        return torch.cat(parts) if rank == 0 else None

    def save(self, path: str | Path) -> None:
        """The single-process `MemoryBank` file, written by rank 0; collective."""
        full = self.gather()
        if full is not None:
            bank = MemoryBank(full.shape[1], dtype=full.dtype)
            bank.add(full)
            bank.save(path)
        if rank_and_world(self.group)[1] > 1:
            dist.barrier(group=self.group)

    def _rows_of(self, index: torch.Tensor):
        local = index - self.offset
        return self.rows[local].float(), self.norms[local]

    def search(self, queries: torch.Tensor, *, precision: str = "fp32"):
        """(dist, index) of this rank's queries (..., D) — any number, 0 included — against the
        whole bank; collective (every rank calls it)."""
        D = self.rows.shape[1]
        if queries.shape[-1] != D:
            raise ValueError(
                f"queries: dimension {queries.shape[-1]} does not match the bank's dimension {D}"
            )
        lead = queries.shape[:-1]
        own = queries.reshape(-1, D).to(self.rows.device, torch.float32)
        parts = all_gather_rows(own, self.group)
        rank, _ = rank_and_world(self.group)
        everything = torch.cat(parts)
        start = sum(p.shape[0] for p in parts[:rank])
        if everything.shape[0] == 0:
            return torch.empty(lead), torch.empty(lead, dtype=torch.int64)
        d, i = min_l2(everything, self.rows, bank_sq_norms=self.norms, precision=precision)
        d, i = reduce_nearest(
            d, i + self.offset, everything, self._rows_of, _resolve_global, self.group
        )
        n = own.shape[0]
        return d[start : start + n].reshape(lead), i[start : start + n].reshape(lead)


def _resolve_global(query, rows, norms) -> int:
    return int(min_l2(query[None], rows, bank_sq_norms=norms)[1][0])


def _resolve_local(query, rows, norms) -> int:
    D = query.shape[0]
    _, idx = min_l2_local(
        query.reshape(1, 1, 1, D), rows.reshape(-1, 1, 1, D), radius=0, bank_sq_norms=norms
    )
    return int(idx.reshape(-1)[0])


# -- the multi-level, multi-view banks of a detector ---------------------------------------------
class ShardedFeatureBanks:
    """`FeatureBanks` spread over the ranks: the same constructor arguments, `add` (this rank's
    block of training samples, in order), `finalize`, `search`, `standardize`,
    `loo_scored_distances`, `settings`, `tensors` (collective, rank 0) — and the same results.

    The shard of every (level, view) bank is an ordinary single-process `FeatureBanks`
    (`self.shard`, without normalisation or coreset); the statistics live here."""

    _std_floor = staticmethod(FeatureBanks._std_floor)
    _position_stats = FeatureBanks._position_stats
    standardize = FeatureBanks.standardize
    loo_scored_distances = FeatureBanks.loo_scored_distances

    def __init__(
        self,
        mode: str = "local",
        *,
        radius: int = 2,
        per_view: bool = True,
        dtype: torch.dtype = torch.float32,
        coreset_ratio: float | None = None,
        precision: str = "fp32",
        normalization: str = "none",
        device: torch.device | str = "cpu",
        group=None,
    ) -> None:
        # The single-process constructor checks every argument.
        FeatureBanks(
            mode, radius=radius, per_view=per_view, dtype=dtype, coreset_ratio=coreset_ratio,
            precision=precision, normalization=normalization, device=device,
        )  # fmt: skip
        self.mode, self.radius, self.per_view = mode, radius, per_view
        self.dtype, self.coreset_ratio, self.precision = dtype, coreset_ratio, precision
        self.normalization, self.device, self.group = normalization, torch.device(device), group
        self.shard = self._new_shard()
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loo_distances: list[torch.Tensor] | None = None
        self._loo_stat_distances: list[torch.Tensor] | None = None
        self.sample_range = (0, 0)  # this rank's training samples [lo, hi)
        self.total_samples = 0
        self._offset: dict[tuple[int, int], int] = {}  # first global flat row of the shard

    def _new_shard(self) -> FeatureBanks:
        return FeatureBanks(
            self.mode, radius=self.radius, per_view=self.per_view, dtype=self.dtype,
            precision=self.precision, normalization="none", device=self.device,
        )  # fmt: skip

    @classmethod
    def like(cls, banks: FeatureBanks, *, group=None) -> ShardedFeatureBanks:
        """Empty sharded banks with the settings of (unfinalised) `banks`."""
        return cls(
            banks.mode, radius=banks.radius, per_view=banks.per_view, dtype=banks.dtype,
            coreset_ratio=banks.coreset_ratio, precision=banks.precision,
            normalization=banks.normalization, device=banks.device, group=group,
        )  # fmt: skip

    @property
    def shapes(self):
        return self.shard.shapes

    @property
    def num_views(self):
        return self.shard.num_views

    def _group_rows(self) -> int:
        return 1 if self.per_view else self.num_views

    def _keys(self):
        return self.shard._keys()

    def _stack(self, key) -> torch.Tensor:
        """This rank's bank of `key` as (rows, h, w, D) (local) or (N_r, D) (global)."""
        return self.shard._stored(key)

    # -- building ---------------------------------------------------------------------------
    def add(self, features: list[torch.Tensor]) -> None:
        """Adds this rank's next training samples: one (B, M, D, h, w) tensor per level."""
        self.shard.add(features)

    def finalize(self, *, seed: int = 0, keep_loo: bool = False) -> None:
        """Collective: sample offsets, position statistics and leave-one-out maps over the whole
        bank (as `FeatureBanks.finalize`), and the coreset selected collectively."""
        rank, world = rank_and_world(self.group)
        if not self.shard._chunks:
            raise ValueError(
                f"memory bank is empty on rank {rank}: every rank must add() at least one "
                "training sample (use a world size <= the number of training samples)"
            )
        rows = sum(c.shape[0] for c in next(iter(self.shard._chunks.values())))
        mine = torch.tensor([rows // self._group_rows()], dtype=torch.int64)
        counts = all_gather_rows(mine, self.group)
        counts = [int(c) for c in counts]
        lo = sum(counts[:rank])
        self.sample_range, self.total_samples = (lo, lo + counts[rank]), sum(counts)
        self._sample_counts = counts
        self.shard.finalize(seed=seed, keep_loo=False)
        for key in self._keys():
            _, h, w = self.shapes[key[0]]
            self._offset[key] = lo * self._group_rows() * h * w
        levels = range(len(self.shapes))
        self.loo_distances = self._loo_stat_distances = None
        stat_loo = None
        if self.normalization == "position":
            stat_loo = [self._loo_distances(level) for level in levels]
            self._stats = [self._position_stats(d) for d in stat_loo]
        if self.coreset_ratio is not None and self.coreset_ratio < 1:
            full = self._reduce_to_coreset(seed)
            if keep_loo:
                self.loo_distances = [self._loo_coreset_distances(lv, full) for lv in levels]
                self._loo_stat_distances = stat_loo
            return
        if keep_loo:
            self.loo_distances = stat_loo or [self._loo_distances(level) for level in levels]
            self._loo_stat_distances = stat_loo

    def _reduce_to_coreset(self, seed: int) -> dict:
        """Replaces every shard by its part of the bank's greedy k-center coreset, selected
        collectively (the rows `FeatureBanks` keeps in one process, in the same order: rank r
        holds positions shard_range(n, r, world)). Returns this rank's full rows per bank
        (the leave-one-out queries)."""
        from vsad.distributed.coreset import kcenter_greedy_sharded
        from vsad.memory.bank import coreset_projection_dim

        rank, world = rank_and_world(self.group)
        full, self._kept = {}, {}
        for key in self._keys():
            D, h, w = self.shapes[key[0]]
            rows = self.shard._global[key].features
            per_sample = self._group_rows() * h * w
            total = self.total_samples * per_sample
            n = max(1, round(self.coreset_ratio * total))
            if n < world:
                raise ValueError(
                    f"world size: {world} ranks for a coreset of {n} rows (coreset_ratio="
                    f"{self.coreset_ratio} of {total}); every rank needs at least one"
                )
            selected, kept = kcenter_greedy_sharded(
                rows, n, offset=self._offset[key], total=total, seed=seed,
                projection_dim=coreset_projection_dim(128, D), tile=per_sample,
                group=self.group,
            )  # fmt: skip
            full[key] = rows
            self._kept[key] = selected
            bank = MemoryBank(D, dtype=self.dtype, device=self.device)
            bank.add(kept)
            self.shard._global[key] = bank
            self.shard._chunks[key] = [bank.features]
            self._offset[key] = shard_range(n, rank, world)[0]
        return full

    def _loo_coreset_distances(self, level: int, full: dict) -> torch.Tensor:
        """(samples, M, h, w) distances of the chosen training samples, each searched against
        the coreset rows of the other samples (as `FeatureBanks._loo_coreset_distances`):
        the owner broadcasts the query, every rank searches its coreset rows, MIN all-reduce."""
        rank, world = rank_and_world(self.group)
        D, h, w = self.shapes[level]
        group, cells = self._group_rows(), h * w
        lo = self.sample_range[0]
        per_view = []
        for view in range(self.num_views):
            key = (level, view if self.per_view else 0)
            bank = self.shard._global[key].features
            norms = bank_sq_norms(bank)
            first = self._offset[key]
            owner = self._kept[key][first : first + bank.shape[0]] // (cells * group)
            row_of_view = 0 if self.per_view else view
            loo = []
            for s in _chosen_samples(self.total_samples).tolist():
                src = self._owner(s)
                if rank == src:
                    start = ((s - lo) * group + row_of_view) * cells
                    query = full[key][start : start + cells].float().contiguous()
                else:
                    query = torch.empty((cells, D), dtype=torch.float32, device=bank.device)
                if world > 1:
                    dist.broadcast(query, src=src, group=self.group)
                others = owner != s
                if bool(others.any()):
                    d, _ = min_l2(query, bank[others].contiguous(), bank_sq_norms=norms[others])
                else:
                    d = torch.full((cells,), float("inf"), device=bank.device)
                if world > 1:
                    dist.all_reduce(d, op=dist.ReduceOp.MIN, group=self.group)
                loo.append(d.reshape(h, w))
            per_view.append(torch.stack(loo))
        return torch.stack(per_view, dim=1)

    def _owner(self, sample: int) -> int:
        edges = 0
        for r, c in enumerate(self._sample_counts):
            edges += c
            if sample < edges:
                return r
        raise ValueError(f"sample: got {sample}, expected < {self.total_samples}")

    def _loo_distances(self, level: int) -> torch.Tensor:
        """(samples, M, h, w) leave-one-out distances, computed collectively (as
        FeatureBanks._loo_distances)."""
        rank, world = rank_and_world(self.group)
        group = self._group_rows()
        samples = self.total_samples
        if samples < 2:
            raise ValueError(
                f"normalization: 'position' needs at least 2 training samples to estimate the "
                f"normal variation, got {samples}; add samples or use normalization='none'"
            )
        D, h, w = self.shapes[level]
        lo, hi = self.sample_range
        per_view = []
        for view in range(self.num_views):
            key = (level, view if self.per_view else 0)
            bank = self._stack(key).reshape(-1, h, w, D)
            norms = bank_sq_norms(bank.reshape(-1, D))  # once, sliced per search
            row_of_view = 0 if self.per_view else view
            loo = []
            for s in _chosen_samples(samples).tolist():
                owner = self._owner(s)
                if rank == owner:
                    query = bank[(s - lo) * group + row_of_view].float().contiguous()
                else:
                    query = torch.empty((h, w, D), dtype=torch.float32, device=bank.device)
                if world > 1:
                    dist.broadcast(query, src=owner, group=self.group)
                start, count = ((s - lo) * group, group) if lo <= s < hi else (0, 0)
                d = self._search_without(bank, norms, query, start, count)
                if world > 1:
                    dist.all_reduce(d, op=dist.ReduceOp.MIN, group=self.group)
                loo.append(d)
            per_view.append(torch.stack(loo))
        return torch.stack(per_view, dim=1)

    def _search_without(self, bank, norms, query, start, count) -> torch.Tensor:
        """(h, w) distances of `query` to this rank's bank without rows start..start+count−1
        (+inf where nothing is left)."""
        cells = bank[0, ..., 0].numel()
        best = torch.full(query.shape[:2], float("inf"), device=bank.device)
        for lo, hi in ((0, start), (start + count, bank.shape[0])):
            if lo >= hi:
                continue
            part, part_norms = bank[lo:hi], norms[lo * cells : hi * cells]
            if self.mode == "local":
                d, _ = min_l2_local(query[None], part, radius=self.radius, bank_sq_norms=part_norms)
                d = d[0]
            else:
                flat = part.reshape(-1, part.shape[-1])
                d, _ = min_l2(query.reshape(-1, query.shape[-1]), flat, bank_sq_norms=part_norms)
                d = d.reshape(query.shape[:2])
            best = torch.minimum(best, d)
        return best

    # -- searching --------------------------------------------------------------------------
    def _gathered(self, feat: torch.Tensor | None, level: int):
        """(all ranks' cells (Btot, M, h, w, D), this rank's first row, its count)."""
        D, h, w = self.shapes[level]
        if feat is None:
            cells = torch.empty((0, self.num_views, h, w, D), device=self.device)
        else:
            cells = feat.permute(0, 1, 3, 4, 2).to(self.device, torch.float32).contiguous()
        parts = all_gather_rows(cells, self.group)
        rank, _ = rank_and_world(self.group)
        return torch.cat(parts), sum(p.shape[0] for p in parts[:rank]), cells.shape[0]

    def _check(self, features) -> None:
        self._keys()
        if features is None:
            return
        if [tuple(f.shape[2:]) for f in features] != self.shapes:
            raise ValueError(
                f"features: got levels {[tuple(f.shape[2:]) for f in features]}, expected "
                f"{self.shapes} as in the bank"
            )
        if features[0].shape[1] != self.num_views:
            raise ValueError(
                f"features: got {features[0].shape[1]} views, expected {self.num_views}"
            )

    def _local_search(self, key, queries):
        """(dist, global flat index) of queries (B, h, w, D) against this rank's shard."""
        if self.mode == "local":
            bank, norms = self.shard._local[key]
            d, i = min_l2_local(queries, bank, radius=self.radius, bank_sq_norms=norms)
        else:
            d, i = self.shard._global[key].search(queries, precision=self.precision)
        return d, i + self._offset[key]

    @torch.no_grad()
    def search(self, features: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """Nearest-prototype distances of this rank's batch (None: no queries this time, but the
        collective is joined): one (B, M, h, w) map per level; collective."""
        self._check(features)
        _, world = rank_and_world(self.group)
        maps = []
        for level in range(len(self.shapes)):
            cells, start, n = self._gathered(None if features is None else features[level], level)
            views = []
            for view in range(self.num_views):
                key = (level, view if self.per_view else 0)
                queries = cells[:, view].contiguous()
                if queries.shape[0] == 0:
                    views.append(queries[..., 0])
                    continue
                views.append(self._local_search(key, queries)[0])
            d = torch.stack(views, dim=1).contiguous()
            SEARCH_STATS["queries"] += d.numel()
            if world > 1 and d.numel():
                dist.all_reduce(d, op=dist.ReduceOp.MIN, group=self.group)
            maps.append(d[start : start + n])
        return maps

    @torch.no_grad()
    def search_with_index(self, features: list[torch.Tensor] | None):
        """(dist maps, index maps) per level, each (B, M, h, w); the index is into the
        single-process bank of that (level, view), `FeatureBanks`'s flat row; collective."""
        self._check(features)
        dists, indices = [], []
        for level in range(len(self.shapes)):
            cells, start, n = self._gathered(None if features is None else features[level], level)
            dv, iv = [], []
            for view in range(self.num_views):
                key = (level, view if self.per_view else 0)
                queries = cells[:, view].contiguous()
                if queries.shape[0] == 0:
                    dv.append(queries[..., 0])
                    iv.append(queries[..., 0].long())
                    continue
                d, i = self._local_search(key, queries)
                flat_q = queries.reshape(-1, queries.shape[-1])
                resolve = _resolve_local if self.mode == "local" else _resolve_global
                d, i = reduce_nearest(
                    d.reshape(-1), i.reshape(-1), flat_q,
                    lambda idx, key=key: self._rows_of(key, idx), resolve, self.group,
                )  # fmt: skip
                dv.append(d.reshape(queries.shape[:3]))
                iv.append(i.reshape(queries.shape[:3]))
            dists.append(torch.stack(dv, dim=1)[start : start + n])
            indices.append(torch.stack(iv, dim=1)[start : start + n])
        return dists, indices

    def _rows_of(self, key, index: torch.Tensor):
        local = index - self._offset[key]
        if self.mode == "local":
            bank, norms = self.shard._local[key]
            return bank.reshape(-1, bank.shape[-1])[local].float(), norms[local]
        bank = self.shard._global[key]
        if bank._norms is None:
            bank._norms = bank_sq_norms(bank.features)
        return bank.features[local].float(), bank._norms[local]

    def to(self, device) -> ShardedFeatureBanks:
        self.device = torch.device(device)
        self.shard.to(device)
        self._stats = [(m.to(device), s.to(device)) for m, s in self._stats]
        return self

    def __len__(self) -> int:
        """Prototypes summed over all banks and ranks (collective)."""
        n = torch.tensor([len(self.shard)], dtype=torch.int64)
        if rank_and_world(self.group)[1] > 1:
            dist.all_reduce(n, group=self.group)
        return int(n)

    # -- persistence ------------------------------------------------------------------------
    def settings(self) -> dict:
        """The single-process `FeatureBanks.settings()`."""
        out = self.shard.settings()
        out.update(coreset_ratio=self.coreset_ratio, normalization=self.normalization)
        return out

    def tensors(self) -> dict[str, torch.Tensor] | None:
        """Collective: on rank 0 the single-process `FeatureBanks.tensors()` (shards gathered
        in rank order); None on the other ranks."""
        rank, _ = rank_and_world(self.group)
        out = {}
        for name, t in self.shard.tensors().items():
            if name.startswith("stats."):
                continue
            out[name] = torch.cat(all_gather_rows(t, self.group))
        for level, (mean, std) in enumerate(self._stats):
            out[f"stats.level{level}.mean"] = mean.cpu()
            out[f"stats.level{level}.std"] = std.cpu()
        return out if rank == 0 else None

    def save(self, path: str | Path) -> None:
        """Rank 0 writes the single-process bank file (`bank.safetensors` format); collective."""
        from safetensors.torch import save_file

        from vsad._atomic import atomic_path

        tensors = self.tensors()
        if tensors is not None:
            with atomic_path(path) as tmp:
                save_file(tensors, tmp)
        if rank_and_world(self.group)[1] > 1:
            dist.barrier(group=self.group)

    def _take_slices(self, settings: dict, tensors) -> None:
        """Keeps this rank's slice of every bank of a single-process bank set: `tensors` is a
        name -> tensor dict or an open safetensors file (only the slices are read)."""
        rank, world = rank_and_world(self.group)
        names = list(tensors.keys())
        is_file = hasattr(tensors, "get_slice")
        get = tensors.get_slice if is_file else tensors.__getitem__
        local = settings["mode"] == "local"
        group = 1 if settings["per_view"] else settings["num_views"]
        sliced, counts = {}, None
        for name in names:
            if name.startswith("stats."):
                sliced[name] = tensors.get_tensor(name) if is_file else tensors[name]
                continue
            t = get(name)
            shape = t.get_shape() if is_file else list(t.shape)
            units = shape[0] // group if local else shape[0]  # samples, or rows
            lo, hi = shard_range(units, rank, world)
            if hi <= lo:
                raise ValueError(
                    f"world size: {world} ranks for bank {name!r} of {units} "
                    f"{'samples' if local else 'rows'}; every rank needs at least one"
                )
            step = group if local else 1
            sliced[name] = t[lo * step : hi * step]
            cells = 1 if not local else shape[1] * shape[2]
            key = tuple(int(x.removeprefix("level").removeprefix("view")) for x in name.split("."))
            self._offset[key] = lo * step * cells
            if local:
                counts = [shard_range(units, r, world) for r in range(world)]
        inner = {**settings, "normalization": "none", "coreset_ratio": None}
        self.shard = FeatureBanks.from_tensors(inner, sliced, device=self.device)
        self._stats = []
        if settings.get("normalization", "none") == "position":
            for level in range(len(settings["shapes"])):
                names_l = (f"stats.level{level}.mean", f"stats.level{level}.std")
                missing = [n for n in names_l if n not in sliced]
                if missing:
                    raise ValueError(f"bank file: tensor(s) {missing} are missing")
                self._stats.append(tuple(sliced[n].to(self.device) for n in names_l))
        if counts is not None:
            self._sample_counts = [hi - lo for lo, hi in counts]
            self.sample_range = counts[rank]
            self.total_samples = sum(self._sample_counts)

    @classmethod
    def from_tensors(
        cls, settings: dict, tensors, *, device: torch.device | str = "cpu", group=None
    ) -> ShardedFeatureBanks:
        """This rank's shard of the banks that `settings` and `tensors` (a dict, a safetensors
        path, or an open safetensors file) describe — written by any world size."""
        banks = cls(
            settings["mode"], radius=settings["radius"], per_view=settings["per_view"],
            dtype=getattr(torch, settings["dtype"]), precision=settings.get("precision", "fp32"),
            normalization=settings.get("normalization", "none"), device=device, group=group,
        )  # fmt: skip
        banks.coreset_ratio = settings["coreset_ratio"]  # already applied to the stored banks
        if isinstance(tensors, (str, Path)):
            from safetensors import safe_open

            with safe_open(str(tensors), framework="pt") as f:
                banks._take_slices(settings, f)
        else:
            banks._take_slices(settings, tensors)
        return banks

    @classmethod
    def from_banks(cls, banks: FeatureBanks, *, group=None) -> ShardedFeatureBanks:
        """This rank's shard of finalised single-process banks (the same on every rank); the
        leave-one-out maps are kept (they are small)."""
        out = cls.from_tensors(banks.settings(), banks.tensors(), device=banks.device, group=group)
        out.loo_distances = banks.loo_distances
        out._loo_stat_distances = banks._loo_stat_distances
        return out


def sharded_banks_loader(group=None):
    """A `BankDetector.load(banks_loader=...)` that reads only this rank's bank slices."""

    def load(settings: dict, path: Path, device: torch.device) -> ShardedFeatureBanks:
        return ShardedFeatureBanks.from_tensors(settings, path, device=device, group=group)

    return load


def load_sharded_detector(directory: str | Path, *, device: str = "cpu", group=None):
    """`load_detector` with the banks sharded over the ranks of `group` (each reads its slice)."""
    from vsad.detector.base import BankDetector

    return BankDetector.load(directory, device=device, banks_loader=sharded_banks_loader(group))


def fit_sharded(detector, train, *, group=None, **fit_kwargs):
    """`detector.fit(train)` on every rank (the same `train` everywhere) with the memory bank
    built sharded: rank r extracts and keeps the features of its block of training samples
    only, and the statistics and thresholds come out as in one process. Every rank runs the
    model fit (`_fit_model`) itself; under DDP training see vsad.distributed.training."""
    rank, world = rank_and_world(group)

    def new_banks():
        return ShardedFeatureBanks.like(type(detector)._new_banks(detector), group=group)

    def sample_range(samples: int) -> tuple[int, int]:
        return shard_range(samples, rank, world)

    detector._new_banks = new_banks
    detector._bank_sample_range = sample_range
    try:
        return detector.fit(train, **fit_kwargs)
    finally:
        del detector._new_banks, detector._bank_sample_range


def save_sharded_detector(detector, directory: str | Path, *, group=None) -> Path:
    """`detector.save(directory)` for a detector with sharded banks: the shards are gathered on
    rank 0, which writes the single-process folder (any world size, or one process, loads it);
    collective."""
    banks = detector.banks
    if not isinstance(banks, ShardedFeatureBanks):
        if rank_and_world(group)[0] == 0:
            detector.save(directory)
        if rank_and_world(group)[1] > 1:
            dist.barrier(group=group)
        return Path(directory)
    tensors = banks.tensors()
    if tensors is not None:
        full = FeatureBanks.from_tensors(banks.settings(), tensors, device="cpu")
        try:
            detector.banks = full
            detector.save(directory)
        finally:
            detector.banks = banks
    if rank_and_world(banks.group)[1] > 1:
        dist.barrier(group=banks.group)
    return Path(directory)
