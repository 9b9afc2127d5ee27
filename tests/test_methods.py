"""Every registered method: ranking on injected flips, resume, scopes, invariants."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from labelclean import RunConfig, audit
from labelclean.errors import UsageError
from labelclean.knn import FaissKnn
from labelclean.methods import METHODS, Batch, TrainContext
from labelclean.methods.mlnt import head_fast_logits, kl_mean_elements, synthetic_labels
from labelclean.methods.probe import rank_mean
from labelclean.metrics import auroc
from labelclean.models import build_backbone
from labelclean.train.augment import shifted

NAMES = METHODS.names()
META = [n for n in NAMES if n not in ("ce", "auto")]


def _config(tiny, tmp_path, method, out="run", **kw):
    base = {"dataset": str(tiny.csv), "trusted": str(tiny.trusted), "out": str(tmp_path / out),
                "method": method, "backbone": "test_tiny", "epochs": 6, "batch_size": 12, "lr": 0.1,
                "image_size": 12}
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("method", NAMES)
def test_method_ranks_injected_flips_above_clean_samples(tiny, tmp_path, method):
    result = audit(_config(tiny, tmp_path, method))
    s = result.scores[~result.scores["verified"]]
    flipped = s["sample_id"].isin(tiny.flipped).to_numpy()
    assert auroc(s["suspicion"].to_numpy(), flipped) >= 0.9
    assert s.loc[flipped, "suspicion"].mean() > s.loc[~flipped, "suspicion"].mean()
    assert f"{method}_suspicion" in s.columns or method == "auto"
    assert s["suspicion"].between(0, 1).all()


@pytest.mark.parametrize("method", [*NAMES, "auto:bystanders"])
def test_method_resumes_to_the_same_state(tiny, tmp_path, monkeypatch, method):
    """``auto:bystanders``: the members step on every second batch (``train_on=ce``), counted
    by the run's step, so the resumed run skips the same batches."""
    method, _, variant = method.partition(":")
    opts = {} if method == "ce" else {"warmup": 0.34}
    if variant:
        opts["train_on"] = "ce"
    cfg = {"epochs": 3, "method_options": opts}
    full = audit(_config(tiny, tmp_path, method, out="full", **cfg)).scores
    cls = METHODS.get(method)
    original = cls.on_epoch_start

    def crash(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(cls, "on_epoch_start", crash)
        with pytest.raises(KeyboardInterrupt):
            audit(_config(tiny, tmp_path, method, out="cut", **cfg))
    resumed = audit(_config(tiny, tmp_path, method, out="cut", resume=True, **cfg))
    assert resumed.summary["resumed_from_epoch"] == 2
    pd.testing.assert_frame_equal(full, resumed.scores)


@pytest.mark.parametrize("method", NAMES)
def test_bf16_autocast_runs_every_forward_pass_and_still_ranks(tiny, tmp_path, monkeypatch, method):
    import labelclean.train.loop as loop

    dtypes: set[torch.dtype] = set()
    build = loop.build_backbone

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
        return model

    monkeypatch.setattr(loop, "build_backbone", recording)
    result = audit(_config(tiny, tmp_path, method, precision="bf16", device="cpu"))
    assert dtypes == {torch.bfloat16}  # training, meta and final scoring passes alike
    assert (result.summary["timings"]["device"], result.summary["timings"]["precision"]) == ("cpu", "bf16")
    s = result.scores[~result.scores["verified"]]
    assert auroc(s["suspicion"].to_numpy(), s["sample_id"].isin(tiny.flipped).to_numpy()) >= 0.8
    dtypes.clear()
    plain = audit(_config(tiny, tmp_path, method, out="fp32", precision="auto", device="cpu"))  # float32
    assert dtypes == {torch.float32}
    assert plain.summary["timings"]["precision"] == "fp32"


@pytest.mark.parametrize("method", META)
def test_full_scope_trains_and_scores(tiny, tmp_path, method):
    result = audit(_config(tiny, tmp_path, method, epochs=2, meta_scope="full",
                           method_options={"warmup": 0.5}))
    assert np.isfinite(result.scores["suspicion"]).all()
    assert result.summary["method_summary"]["meta_scope"] == "full"


def test_without_trusted_set_meta_methods_pick_and_announce_a_reference(tiny, tmp_path):
    result = audit(_config(tiny, tmp_path, "mslg", trusted=None, epochs=3))
    summary = result.summary
    assert summary["method_summary"]["reference_source"] == "selected"
    assert summary["verified"] == 0 and not result.scores["verified"].any()
    assert any("not verified" in n for n in summary["notes"])


# -- unit level: a hand-built context ----------------------------------------------------

def _context(method, scope="head", n=24, c=3, exam_can_choose=False, exam_light=False,
             features_fixed=False, **options):
    torch.manual_seed(0)
    model = build_backbone("test_tiny", c)
    pixels = torch.rand(n, 3, 8, 8)
    labels = torch.arange(n) % c
    verified = torch.zeros(n, dtype=torch.bool)
    verified[:6] = True
    config = RunConfig(dataset="unused", method=method, meta_scope=scope, epochs=2, batch_size=8)
    ctx = TrainContext(model=model, num_classes=c, labels=labels, verified=verified,
                       sample_ids=[f"s{i}" for i in range(n)], epochs=2, steps_per_epoch=3,
                       batch_size=8, generator=torch.Generator().manual_seed(0),
                       device=torch.device("cpu"), config=config,
                       load=lambda rows, aug: pixels[rows], notice=lambda m: None,
                       exam_can_choose=exam_can_choose, exam_light=exam_light,
                       features_fixed=features_fixed)
    m = METHODS.get(method).build({"warmup": 0.5, **options})
    m.setup(ctx)
    ctx.optimizer = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx.epoch = 1
    m.on_epoch_start(1)
    rows = torch.arange(6, 14)
    batch = Batch(rows, pixels[rows], labels[rows], verified[rows],
                  pixels[rows].flip(-1) if m.num_views > 1 else None)
    return m, ctx, batch


def _step(method, ctx, batch):
    loss = method.training_step(batch)
    ctx.optimizer.zero_grad()
    loss.backward()
    ctx.optimizer.step()
    method.after_step(batch)
    return loss


def test_reference_every_reuses_a_draw_within_an_epoch_and_draws_anew_each_epoch():
    def drawn(every):
        m, ctx, batch = _context("mlc", reference_every=every)
        seen = []
        for epoch, steps in ((1, 3), (2, 2)):
            ctx.epoch = epoch
            for _ in range(steps):
                shared = m.shared_inputs(batch)
                seen.append((shared.x_ref, shared.h_ref))
                ctx.step += 1
        return seen

    every1, every2 = drawn(1), drawn(2)
    same = [torch.equal(a[0], b[0]) for a, b in itertools.pairwise(every2)]
    # steps 0-1 share a draw, step 2 draws, step 3 opens epoch 2 (a new draw), step 4 reuses it
    assert same == [True, False, False, True]
    assert all(every2[i][1] is every2[i + 1][1] for i in (0, 3))  # the features are reused too
    assert not any(torch.equal(a[0], b[0]) for a, b in itertools.pairwise(every1))
    with pytest.raises(UsageError, match="reference_every"):
        METHODS.get("mlc").build({"reference_every": 0})


@pytest.mark.parametrize("scope", ["head", "full"])
@pytest.mark.parametrize("method", META)
def test_virtual_steps_leave_batchnorm_statistics_alone(method, scope):
    m, ctx, batch = _context(method, scope)
    twin = build_backbone("test_tiny", 3)
    twin.load_state_dict(ctx.model.state_dict())
    twin.train()
    m.training_step(batch)
    with torch.no_grad():
        twin(batch.x)
        if batch.x2 is not None:
            twin(batch.x2)
    for (k, a), b in zip(ctx.model.named_buffers(), twin.buffers()):
        assert torch.allclose(a, b), k


@pytest.mark.parametrize("method", META)
def test_two_steps_give_finite_losses_and_gradients(method):
    m, ctx, batch = _context(method)
    for _ in range(2):
        loss = _step(m, ctx, batch)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in ctx.model.parameters() if p.grad is not None)


@pytest.mark.parametrize("mode", ["persistent", "reset"])
def test_mlc_transition_stays_row_stochastic(mode):
    m, ctx, batch = _context("mlc", mode=mode)
    before = m.transition().clone()
    for _ in range(3):
        _step(m, ctx, batch)
    t = m.transition()
    assert (t >= 0).all() and torch.allclose(t.sum(1), torch.ones(3))
    assert not torch.equal(t, before)


def test_mslg_soft_labels_stay_distributions_and_move():
    m, ctx, batch = _context("mslg")
    before = m.table.clone()
    for _ in range(3):
        _step(m, ctx, batch)
    soft = m.soft_labels()
    assert torch.allclose(soft.sum(1), torch.ones(len(soft), dtype=soft.dtype))
    moved = (m.table - before).abs().sum(1)
    assert moved[batch.index[~batch.verified]].gt(0).all()
    assert moved[batch.index[batch.verified]].eq(0).all()


def test_ieg_records_weights_and_relabel_decisions_by_sample_id():
    m, ctx, batch = _context("ieg")
    _step(m, ctx, batch)
    assert m.visits[batch.index].eq(1).all() and m.visits.sum() == len(batch.index)
    assert torch.isfinite(m.weight_sum).all() and m.weight_sum[batch.index].abs().sum() > 0


def test_mlnt_vmap_fast_steps_match_a_loop():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g, requires_grad=True)
    b = torch.randn(3, generator=g, requires_grad=True)
    h = torch.randn(5, 4, generator=g)
    sets = torch.randint(0, 3, (4, 5), generator=g)
    target = torch.softmax(torch.randn(5, 3, generator=g), 1)
    fast = head_fast_logits(w, b, h, sets, 0.2)
    loss = torch.stack([kl_mean_elements(target, fast[m]) for m in range(4)]).mean()
    gw, gb = torch.autograd.grad(loss, (w, b))
    ref = 0
    for y in sets:
        gw_, gb_ = torch.autograd.grad(F.cross_entropy(F.linear(h, w, b), y), (w, b), create_graph=True)
        ref = ref + kl_mean_elements(target, F.linear(h, w - 0.2 * gw_, b - 0.2 * gb_)) / 4
    rw, rb = torch.autograd.grad(ref, (w, b))
    assert torch.allclose(gw, rw, atol=1e-6) and torch.allclose(gb, rb, atol=1e-6)
    assert gw.abs().max() > 0  # first- and second-order terms reach θ


def test_synthetic_labels_copy_neighbour_labels():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    neighbours = torch.tensor([[1], [0], [3], [2], [5], [4]])
    rows = torch.arange(6)
    sets = synthetic_labels(labels, rows, neighbours, 3, 0.5, torch.Generator().manual_seed(0))
    assert sets.shape == (3, 6)
    assert torch.equal(sets, labels.repeat(3, 1))  # neighbours share labels here
    neighbours = torch.tensor([[2], [4], [0], [4], [0], [2]])
    sets = synthetic_labels(labels, rows, neighbours, 3, 0.5, torch.Generator().manual_seed(0))
    assert ((sets != labels).sum(1) <= 3).all() and (sets != labels).any()


def test_knn_excludes_self_handles_duplicates_and_large_k():
    x = np.array([[0.0, 0], [0, 0], [1, 0], [5, 5]], dtype=np.float32)
    nn_ = FaissKnn().fit(x).kneighbors(2)
    assert nn_.shape == (4, 2)
    assert all(i not in row for i, row in enumerate(nn_))
    assert nn_[0, 0] == 1 and nn_[1, 0] == 0
    assert FaissKnn().fit(x).kneighbors(10).shape == (4, 3)
    assert FaissKnn().fit(x[:1]).kneighbors(3).shape == (1, 0)


@pytest.mark.parametrize("view", ["teacher", "student"])
def test_auto_runs_one_teacher_forward_per_step_and_shares_it(view):
    m, ctx, batch = _context("auto", second_view=view)
    mlnt = m.members["mlnt"]
    assert mlnt.iteration == 0 and not m.in_warmup
    seen = []
    mlnt.teacher.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    _step(m, ctx, batch)
    assert len(seen) == 1  # one teacher forward, whichever view it sees
    assert torch.equal(seen[0], batch.x2 if view == "teacher" else batch.x)


def test_auto_trains_on_the_chosen_members_while_every_member_keeps_learning():
    """``train_on``: the network's loss is the mean of those members' losses; the others still
    run their meta step each batch (their per-sample state moves) but add nothing to it."""
    m, _ctx, batch = _context("auto", train_on="mlc,mlnt")
    table = m.members["mslg"].table.clone()
    calls = []
    constant = {"ieg": 100.0, "mlc": 1.0, "mlnt": 3.0, "mslg": 1000.0}
    for name, member in m.members.items():
        def spy(*args, _name=name, _real=member.step_loss):
            calls.append(_name)
            return _real(*args) * 0 + constant[_name]

        member.step_loss = spy
    loss = m.training_step(batch)
    assert sorted(calls) == ["ieg", "mlc", "mlnt", "mslg"]
    assert loss.item() == pytest.approx(2.0)  # (1 + 3) / 2: IEG's and MSLG's losses left out
    assert not torch.equal(m.members["mslg"].table, table)  # MSLG's soft labels still learn
    with pytest.raises(UsageError, match="train_on"):
        _context("auto", train_on="mlc,cleanlab")


def test_auto_train_on_ce_steps_the_network_on_plain_cross_entropy_while_the_members_learn():
    """``train_on=ce``: every member runs its meta step (its state moves), and the network's
    loss is the cross-entropy of the batch's logits against the given labels."""
    m, ctx, batch = _context("auto", train_on="ce")
    table = m.members["mslg"].table.clone()
    calls = []
    for name, member in m.members.items():
        def spy(*args, _name=name, _real=member.step_loss):
            calls.append(_name)
            return _real(*args) * 0 + 1000.0

        member.step_loss = spy
    loss = m.training_step(batch)
    assert sorted(calls) == ["ieg", "mlc", "mlnt", "mslg"]
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(ctx.model(batch.x), batch.y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not torch.equal(m.members["mslg"].table, table)


def test_auto_bystander_members_step_on_every_second_batch_and_only_then_need_a_second_view():
    """``train_on=ce``: the members run their meta steps (and the loop draws the second view)
    on every ``bystander_every``-th batch of the run; the network steps on plain CE on every
    batch. Where members train the network they step on every batch, whatever the option."""
    def pattern(steps=4, **options):
        m, ctx, batch = _context("auto", **options)
        calls, views = [], []
        member = m.members["mslg"]
        member.step_loss = lambda *a, _real=member.step_loss: calls.append(ctx.step) or _real(*a)
        for _ in range(steps):
            views.append(m.wants_second_view())
            with torch.no_grad():
                expected = torch.nn.functional.cross_entropy(ctx.model(batch.x), batch.y)
            loss = _step(m, ctx, batch)
            if not m.trained:
                assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
            ctx.step += 1
        return calls, views

    assert pattern(train_on="ce") == ([0, 2], [True, False, True, False])
    assert pattern(train_on="ce", bystander_every=3, steps=6) == ([0, 3], [True, False, False] * 2)
    assert pattern(train_on="ce", bystander_every=1) == ([0, 1, 2, 3], [True] * 4)
    assert pattern(train_on="mlc,mlnt") == ([0, 1, 2, 3], [True] * 4)
    m, ctx, _batch = _context("auto", train_on="ce")
    ctx.epoch = 0  # the CE warm-up: IEG's pseudo labels come from the one view
    assert not m.wants_second_view()
    with pytest.raises(UsageError, match="bystander_every: expected >= 1, found 0"):
        _context("auto", bystander_every=0)


def test_auto_trains_on_plain_cross_entropy_by_default_only_where_an_exam_can_choose_or_says_light():
    """``train_on=auto`` (the default): ``ce`` where the exam can choose among the heads' orders
    afterwards or says the noise is light, every member's loss otherwise (and with a ranking the
    exam has no heads for)."""
    everyone = ["ieg", "mlc", "mlnt", "mslg"]
    m, ctx, batch = _context("auto", exam_can_choose=True)
    assert m.trained == []
    for member in m.members.values():
        member.step_loss = lambda *args, _real=member.step_loss: _real(*args) * 0 + 1000.0
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(ctx.model(batch.x), batch.y)
    assert m.training_step(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert sorted(_context("auto")[0].trained) == everyone
    assert sorted(_context("auto", exam_can_choose=True, rank="final")[0].trained) == everyone
    assert sorted(_context("auto", exam_can_choose=True, train_on="all")[0].trained) == everyone
    assert _context("auto", train_on="ce")[0].trained == []
    # An exam that cannot rank but says the noise is light: plain cross-entropy too.
    light = _context("auto", exam_light=True)[0]
    assert light.trained == [] and light.members_step_every == 2
    assert light.trained_because == "the exam cannot rank, and says the noise is light"
    assert sorted(_context("auto", exam_light=True, rank="final")[0].trained) == everyone
    assert sorted(_context("auto", exam_light=True, train_on="mlc")[0].trained) == ["mlc"]
    assert m.trained_because == "the exam can choose the ranking"
    assert _context("auto")[0].trained_because == "no exam that can choose the ranking"
    # Fixed features (vectors, a frozen encoder): no view of the images to protect, so every
    # member trains the head, exam or not; an explicit train_on still wins.
    for exam in ({"exam_can_choose": True}, {"exam_light": True}, {}):
        fixed = _context("auto", features_fixed=True, **exam)[0]
        assert sorted(fixed.trained) == everyone and fixed.members_step_every == 1
        assert fixed.trained_because.startswith("the features are fixed")
    assert _context("auto", features_fixed=True, exam_can_choose=True, train_on="ce")[0].trained == []


def test_auto_refuses_an_unknown_second_view():
    with pytest.raises(UsageError, match=r"auto\.second_view: expected one of teacher, student"):
        _context("auto", second_view="both")


# -- the meta step itself: structured flips that plain CE would learn as the truth --------

def _flip_context(method, monkeypatch=None, n_per_class=24, seed=0):
    """Class 0 with 40% of its rows labelled 1 (flip-to-one); 4 clean verified rows a class.

    Images are separable by colour, so after a CE warm-up the head knows the classes. Returns
    the method after warm-up, its context, the rows that are not verified and the flipped ones.
    """
    torch.manual_seed(seed)
    c, n = 3, 3 * n_per_class
    true = torch.arange(n) // n_per_class
    g = torch.Generator().manual_seed(seed)
    pixels = 0.3 * torch.rand(n, 3, 8, 8, generator=g)
    pixels[torch.arange(n), true] += 0.7
    verified = torch.zeros(n, dtype=torch.bool)
    for k in range(c):
        verified[k * n_per_class: k * n_per_class + 4] = True
    labels = true.clone()
    class0 = torch.where((true == 0) & ~verified)[0]
    flipped = class0[: int(0.4 * n_per_class)]
    labels[flipped] = 1
    model = build_backbone("test_tiny", c)
    config = RunConfig(dataset="unused", method=method, epochs=2, batch_size=16)
    ctx = TrainContext(model=model, num_classes=c, labels=labels, verified=verified,
                       sample_ids=[f"s{i}" for i in range(n)], epochs=2, steps_per_epoch=8,
                       batch_size=16, generator=torch.Generator().manual_seed(seed),
                       device=torch.device("cpu"), config=config,
                       load=lambda rows, aug: pixels[rows], notice=lambda m: None)
    m = METHODS.get(method).build({"warmup": 0.5})
    m.setup(ctx)
    ctx.optimizer = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(60):  # CE warm-up on the noisy labels
        rows = torch.randint(0, n, (16,), generator=g)
        loss = F.cross_entropy(model(pixels[rows]), labels[rows])
        ctx.optimizer.zero_grad()
        loss.backward()
        ctx.optimizer.step()
    ctx.epoch = 1
    m.on_epoch_start(1)
    free = torch.where(~verified)[0]

    def steps(count=24):
        for _k in range(count):
            rows = free[torch.randperm(len(free), generator=g)[:16]]
            batch = Batch(rows, pixels[rows], labels[rows], verified[rows],
                          pixels[rows] if m.num_views > 1 else None)
            _step(m, ctx, batch)

    return m, steps, flipped, free


def _no_meta_step(monkeypatch, module):
    """Switch the meta step off: every meta-gradient and head sensitivity is zero."""
    import labelclean.methods.functional as fn

    def zero_meta_gradient(train_loss, theta, meta_loss, phi, lr, shift=None):
        return [torch.zeros_like(p) for p in phi], torch.tensor(0.0), {}

    def zero_sensitivity(theta, inner_loss, lr, h, h_ref, y_ref, shift=None):
        return torch.zeros(len(h), len(theta["bias"]))

    monkeypatch.setattr(module, "meta_gradient", zero_meta_gradient, raising=False)
    monkeypatch.setattr(module, "head_meta_sensitivity", zero_sensitivity, raising=False)
    monkeypatch.setattr(fn, "head_meta_sensitivity", zero_sensitivity)


@pytest.mark.parametrize("meta_on", [True, False])
def test_mlc_transition_moves_towards_the_injected_flips(monkeypatch, meta_on):
    import labelclean.methods.mlc as mlc

    if not meta_on:
        _no_meta_step(monkeypatch, mlc)
    m, steps, _, _ = _flip_context("mlc")
    before = m.transition().clone()
    steps()
    t = m.transition()
    moved = float(t[0, 1] - before[0, 1])  # true 0, given 1: the injected confusion
    other = float(t[0, 2] - before[0, 2])
    if meta_on:
        assert moved > 0 and moved > other + 1e-3, (moved, other)
    else:
        assert moved == 0 and other == 0


@pytest.mark.parametrize("meta_on", [True, False])
def test_mslg_soft_labels_move_towards_the_true_class_on_flipped_rows(monkeypatch, meta_on):
    import labelclean.methods.mslg as mslg

    if not meta_on:
        _no_meta_step(monkeypatch, mslg)
    m, steps, flipped, free = _flip_context("mslg")
    before = m.soft_labels()[:, 0].clone()
    steps()
    gain = m.soft_labels()[:, 0] - before
    clean = free[~torch.isin(free, flipped) & (m.context.labels[free] == 1)]
    if meta_on:
        assert gain[flipped].mean() > 0 and gain[flipped].mean() > gain[clean].mean(), (
            float(gain[flipped].mean()), float(gain[clean].mean()))
    else:
        assert gain.abs().max() == 0


@pytest.mark.parametrize("meta_on", [True, False])
def test_ieg_relabels_flipped_rows_more_often_than_clean_ones(monkeypatch, meta_on):
    import labelclean.methods.ieg as ieg

    if not meta_on:
        _no_meta_step(monkeypatch, ieg)
    m, steps, flipped, free = _flip_context("ieg")
    steps(32)
    rate = m.relabelled / m.visits.clamp_min(1)
    clean = free[~torch.isin(free, flipped)]
    gap = float(rate[flipped].mean() - rate[clean].mean())
    if meta_on:
        assert gap > 0.1, gap
    else:
        assert abs(gap) < 1e-9, gap


# -- evidence built in place, one dense table at a time, equals the plain formulas ----------

def _reference_belief(name, m):
    """The method's belief by its formula, with dense temporaries (as before it was bounded)."""
    dynamics = m.dynamics.mean()
    labels = m.context.labels
    if name == "mslg":
        return 0.5 * (m.soft_labels() + dynamics)
    if name == "ieg":
        p = m.pseudo.mean(fill=dynamics)
        return p / p.sum(1, keepdim=True)
    if name == "mlnt":
        teacher = m._predict(m.teacher, lambda net, x: net(x).softmax(1)).double()
        return (teacher + m.mentor_probs.double() + dynamics.double()) / 3.0
    t = m.transition().cpu().double()  # mlc, persistent
    joint = dynamics.double() * t[:, labels].T
    return joint / joint.sum(1, keepdim=True)


@pytest.mark.parametrize("name", META)
def test_each_method_builds_its_belief_in_place_as_its_formula_says(name, monkeypatch):
    import labelclean.methods.state as state

    m, steps, _, _ = _flip_context(name)
    steps(6)
    monkeypatch.setattr(state, "CHUNK_CELLS", 15)  # 5 rows of 3 classes: a ragged last chunk
    monkeypatch.setattr(state, "SAVED_TABLE_MAX", 0)  # the soft labels are not kept above it
    expected = _reference_belief(name, m)
    evidence = m.evidence()
    assert evidence.belief.dtype == np.float32
    assert np.allclose(evidence.belief, expected.numpy(), atol=1e-5)
    assert np.allclose(evidence.belief.sum(1), 1.0, atol=1e-4)
    if name == "mslg":
        assert not evidence.arrays and evidence.summary["soft_labels_written"] is False
        assert torch.allclose(m.soft_labels(), m.table.float().softmax(1))  # by chunks


def test_auto_belief_is_the_mean_of_its_members_beliefs():
    m, steps, _, _ = _flip_context("auto")
    steps(6)
    members = [member.evidence().belief for member in m.members.values()]
    evidence = m.evidence()
    assert np.allclose(evidence.belief, np.mean(members, axis=0), atol=1e-6)
    labels = m.context.labels.numpy()
    doubting = np.stack([b.argmax(1) != labels for b in members])
    assert np.allclose(evidence.columns["agreement"], doubting.mean(0))


def test_views_given_averages_the_labels_probability_over_the_image_and_its_shifts():
    n, c = 10, 3
    torch.manual_seed(0)
    pixels = torch.rand(n, 3, 8, 8)
    labels = torch.arange(n) % c
    model = build_backbone("test_tiny", c).eval()
    config = RunConfig(dataset="unused", method="ce", epochs=1, batch_size=4)
    ctx = TrainContext(model=model, num_classes=c, labels=labels, verified=torch.zeros(n, dtype=torch.bool),
                       sample_ids=[f"s{i}" for i in range(n)], epochs=1, steps_per_epoch=1, batch_size=4,
                       generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                       config=config, load=lambda rows, aug: pixels[rows], notice=lambda m: None,
                       load_shifted=lambda rows, dy, dx: shifted(pixels[rows], dy, dx))
    final = ctx.predict()
    got = ctx.views_given(final, ((-1, 1), (1, -1)), batch_size=3)  # chunks of 3 over 10 rows
    with torch.no_grad():
        views = [model(pixels).softmax(1), model(shifted(pixels, -1, 1)).softmax(1),
                 model(shifted(pixels, 1, -1)).softmax(1)]
    want = torch.stack([v[torch.arange(n), labels] for v in views]).mean(0)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, views[0][torch.arange(n), labels], atol=1e-4)  # the shifts count
    assert model.training is False


def test_auto_ranks_by_the_final_views_and_the_cross_fitted_heads_and_says_so(tiny, tmp_path):
    result = audit(_config(tiny, tmp_path, "auto", epochs=4))
    summary = result.summary["method_summary"]
    every = result.scores
    assert every["probe_suspicion"].between(0, 1).all()
    assert every["probe_corrected_suspicion"].between(0, 1).all()
    assert summary["probe_seconds"] >= 0
    assert summary["probe_weighted"] is False  # the run trained these features: no weights
    # The corrected head joins the mean rank only where it fitted the given labels better.
    nll = summary["probe_nll"]
    heads = ["final_views_suspicion", "probe_suspicion"]
    if nll["corrected"] < nll["plain"]:
        heads.append("probe_corrected_suspicion")
        assert summary["ranked_by"] == ("final model, shifted views and two cross-fitted heads, "
                                        "plain and noise-corrected (mean rank)")
    else:
        assert summary["ranked_by"] == ("final model, shifted views and a cross-fitted head (mean "
                                        "rank; the noise-corrected head fitted the labels worse)")
    mean_rank = rank_mean(*(every[h].to_numpy() for h in heads))
    s = every.assign(mean_rank=mean_rank)[~every["verified"]]
    # The audit's order is the mean rank's: falling along it, but for swaps of one place
    # (the columns are stored to 6 decimals, so ties can break differently here).
    along = s.sort_values("rank")["mean_rank"].to_numpy()
    assert np.all(np.diff(along) <= 1.0 / len(every) + 1e-9)
    # On the final views' scale (a --threshold means what it meant): their values, re-ordered.
    assert np.isin(s["suspicion"].round(5), every["final_views_suspicion"].round(5)).all()
    assert not np.allclose(s["suspicion"], s["final_views_suspicion"])  # but re-ordered
    # The heads are their own evidence: they do not order the rows as the final views do.
    for head in ("probe_suspicion", "probe_corrected_suspicion"):
        assert not np.array_equal(np.argsort(s[head].to_numpy()),
                                  np.argsort(s["final_views_suspicion"].to_numpy()))


def test_auto_ranks_by_the_final_models_shifted_views_and_says_so(tiny, tmp_path):
    result = audit(_config(tiny, tmp_path, "auto", epochs=4, method_options={"rank": "final"}))
    assert result.summary["method_summary"]["ranked_by"] == "final model, shifted views"
    assert "probe_suspicion" not in result.scores.columns
    assert "probe_corrected_suspicion" not in result.scores.columns
    s = result.scores[~result.scores["verified"]]
    assert s["final_views_suspicion"].between(0, 1).all()
    by_views = s.sort_values("final_views_suspicion", ascending=False, kind="stable")["sample_id"]
    assert by_views.tolist() == s.sort_values("rank")["sample_id"].tolist()
    # The views are their own evidence, not the single un-augmented view.
    assert not np.allclose(s["final_views_suspicion"], s["final_suspicion"])
    late = audit(_config(tiny, tmp_path, "auto", epochs=4, out="late", method_options={"rank": "late"}))
    assert late.summary["method_summary"]["ranked_by"] == "late-phase belief"
    assert "final_views_suspicion" not in late.scores.columns
    plain = audit(_config(tiny, tmp_path, "auto", epochs=4, out="plain", augment="none"))
    # No shifted views: the late-phase belief, with the heads cross-fitted on the final features.
    assert plain.summary["method_summary"]["ranked_by"].startswith("late-phase belief and ")
    assert "cross-fitted head" in plain.summary["method_summary"]["ranked_by"]
