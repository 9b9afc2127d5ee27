"""Per-sample class tables: bounded dtype, running means that match float64, shared records."""

import torch

from labelclean.methods import state as state_module
from labelclean.methods.base import Dynamics
from labelclean.methods.state import RowMeans, table_dtype


def _visits(n=64, c=10, visits=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g).mul(3).softmax(1) for _ in range(visits)]


def test_dtype_switches_to_float16_above_the_budget(monkeypatch):
    assert table_dtype(1000, 10) == torch.float32
    assert table_dtype(1_000_000, 1000) == torch.float16  # 4 GB in float32, 2 GB here
    monkeypatch.setattr(state_module, "FLOAT16_ABOVE", 100)
    assert table_dtype(11, 10) == torch.float16 and table_dtype(10, 10) == torch.float32


def test_running_means_match_float64_means_in_both_dtypes():
    batches = _visits()
    exact = torch.stack(batches).double().mean(0)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.float16, 2e-3)):
        table = RowMeans(64, 10, dtype)
        rows = torch.arange(64)
        for p in batches:
            order = torch.randperm(64)  # rows arrive in any order
            table.add(rows[order], p[order])
        got = table.mean()
        assert got.dtype == torch.float32
        assert (got.double() - exact).abs().max() < tolerance, dtype
        assert table.values.dtype == dtype


def test_rows_never_visited_get_the_fill():
    table = RowMeans(4, 3)
    table.add(torch.tensor([1, 3]), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    assert torch.allclose(table.mean()[0], torch.full((3,), 1 / 3))
    fill = torch.arange(12, dtype=torch.float32).view(4, 3)
    assert torch.equal(table.mean(fill=fill)[2], fill[2])
    assert torch.equal(table.mean(fill=fill)[3], torch.tensor([0, 0, 1.0]))
    table.mean().add_(1.0)  # the means are a copy: callers build beliefs on them in place
    table.mean(rows=slice(1, 3)).mul_(0.0)
    assert torch.equal(table.values[1], torch.tensor([1.0, 0, 0]))
    other = RowMeans(4, 3)
    other.add(torch.tensor([0, 2]), torch.tensor([[0, 1.0, 0], [0, 0.5, 0.5]]))
    assert torch.equal(table.mean(fill=other)[2], torch.tensor([0, 0.5, 0.5]))  # read, not copied
    out = torch.ones(4, 3)
    assert torch.allclose(table.add_mean_to(out), 1.0 + table.mean())
    half = torch.full((4, 3), 0.5, dtype=torch.float16)
    assert torch.equal(state_module.add_chunked(torch.ones(4, 3), half), torch.full((4, 3), 1.5))


def test_label_columns_equal_the_dense_means_gathered_without_a_dense_table():
    n, c = 64, 10
    labels = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(1))
    dynamics = Dynamics(n, c, labels)
    dense_late = RowMeans(n, c)
    rows = torch.arange(n)
    for i, p in enumerate(_visits(n, c, visits=20)):
        visited = rows[: n - 4]  # the last four rows are never visited
        late = i >= 10 and i % 3 != 0
        dynamics.update(visited, p[: n - 4].log(), late=late)
        if late:
            dense_late.add(visited[: n - 8], p[: n - 8])  # rows 56-59: no late visit
    expected_all = dynamics.mean().gather(1, labels.view(-1, 1))[:, 0]
    assert torch.equal(dynamics.given(), expected_all)
    assert torch.allclose(dynamics.given()[-4:], torch.full((4,), 1 / c))
    expected_late = dense_late.mean(fill=dynamics.mean()).gather(1, labels.view(-1, 1))[:, 0]
    # rows 56-59 had late visits in the record above but not in dense_late: compare the rest
    assert torch.allclose(dynamics.late_given()[: n - 8], expected_late[: n - 8], atol=1e-6)
    assert torch.equal(dynamics.late_given()[-4:], dynamics.given()[-4:])  # no late visit: fill
    assert dynamics.late.values.shape == (n, 1)  # one column, not a second (N, C) table


def test_auto_allocates_one_training_record_for_all_members(monkeypatch):
    import labelclean.methods.meta as meta
    from tests.test_methods import _context

    made = []

    class Counting(meta.Dynamics):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(meta, "Dynamics", Counting)
    m, _, _ = _context("auto")
    assert len(m.members) == 4 and len(made) == 1  # not one (N, C) pair per member
    assert all(member.dynamics is m.dynamics for member in m.members.values())


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_drops_small_steps():
    from labelclean.methods.state import stochastic_round

    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 10.0)
    step = 1e-3  # far below float16's spacing of 2^-7 at 10
    nearest = x.clone().half()
    rounded = x.clone().half()
    for _ in range(20):
        nearest = (nearest.float() + step).half()
        rounded = stochastic_round(rounded.float() + step, torch.float16, g)
    assert torch.all(nearest.float() == 10.0)  # round-to-nearest loses every step
    assert abs(rounded.float().mean().item() - (10.0 + 20 * step)) < 2e-4
    values = set(rounded.float().unique().tolist())
    assert values <= {10.0 + k * 2 ** -7 for k in range(0, 21)} and len(values) > 1
    assert torch.equal(stochastic_round(torch.tensor([1.5, -2.25]), torch.float16, g),
                       torch.tensor([1.5, -2.25], dtype=torch.float16))  # exact values stay


def test_float16_tables_still_rank_the_flips_and_resume(tiny, tmp_path, monkeypatch):
    """Every per-sample table in float16 (the budget set to 0), as at a million rows."""
    import pandas as pd

    from labelclean import audit
    from labelclean.metrics import auroc
    from tests.test_methods import _config

    monkeypatch.setattr(state_module, "FLOAT16_ABOVE", 0)
    result = audit(_config(tiny, tmp_path, "auto"))
    s = result.scores[~result.scores["verified"]]
    assert auroc(s["suspicion"].to_numpy(), s["sample_id"].isin(tiny.flipped).to_numpy()) >= 0.9
    again = audit(_config(tiny, tmp_path, "auto", out="again"))
    pd.testing.assert_frame_equal(result.scores, again.scores)  # stochastic rounding is seeded


def test_shards_of_an_epoch_merge_into_the_single_process_record():
    """Two ranks train on disjoint shards of each epoch; merging their records gives one
    process's record (the multi-GPU step changes the loop, not the methods)."""
    from labelclean.train.loop import epoch_order

    n, c = 50, 4
    batches = _visits(n=n, c=c, visits=5)
    single, ranks = RowMeans(n, c), [RowMeans(n, c), RowMeans(n, c)]
    for epoch, p in enumerate(batches):
        full = epoch_order(n, None, torch.Generator().manual_seed(epoch))
        shards = [epoch_order(n, None, torch.Generator().manual_seed(epoch), rank, 2) for rank in (0, 1)]
        assert sorted(torch.cat(shards).tolist()) == list(range(n))  # disjoint, complete
        assert torch.equal(shards[1], full[1::2])
        single.add(full, p[full])
        for record, rows in zip(ranks, shards):
            record.add(rows, p[rows])
    ranks[0].merge(ranks[1])
    assert torch.equal(ranks[0].count, single.count)
    assert torch.allclose(ranks[0].mean(), single.mean(), atol=1e-6)
    pool = torch.tensor([3, 9, 27])
    assert sorted(epoch_order(n, pool, torch.Generator().manual_seed(0)).tolist()) == [3, 9, 27]


def test_cuda_runs_use_deterministic_kernels_and_restore_the_settings():
    from labelclean.train.loop import deterministic

    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with deterministic(torch.device("cpu")):
        assert (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before
    with deterministic(torch.device("cuda")):  # only flags: no CUDA device is needed
        assert cudnn.deterministic and not cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    assert (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before
