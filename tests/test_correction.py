"""Label maths, meta tables and hypergradients, checked against autograd and central finite differences (float64)."""


import pytest
import torch
import torch.nn.functional as F

from dreamprm_trl.training.meta_methods import informedness_lower_bound
from dreamprm_trl.training import (
    LabelTable,
    WeightTable,
    adam_preconditioner,
    build_table,
    darts_hypergradient,
    exact_hypergradient,
    implicit_hypergradient,
    neumann_inverse_hvp,
    split_by_task,
    standardise_hypergradient,
    label_loss_grad,
    unrolled_meta_loss,
)
from dreamprm_trl.prm import step_loss


def pointwise_step_loss(logits, labels, loss_type, smoothing):
    return step_loss(logits, labels, torch.ones_like(logits, dtype=torch.bool), loss_type, smoothing, reduction="none")




@pytest.fixture(autouse=True)
def float64():
    """Finite differences need float64; restore the default afterwards so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("loss_type", ["bce", "mse"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_loss_grad_matches_autograd(loss_type, smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, generator=g) * 3
    labels = torch.rand(7, generator=g).requires_grad_()
    loss = pointwise_step_loss(logits, labels, loss_type, smoothing).sum()
    (auto,) = torch.autograd.grad(loss, labels)
    torch.testing.assert_close(label_loss_grad(logits, labels.detach(), loss_type, smoothing), auto)


def test_label_loss_grad_with_mask_and_sum_reduction():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, generator=g)
    labels = torch.rand(3, 4, generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 3] = False
    for loss_type in ("bce", "mse"):
        for s in (0.0, 0.2):
            y = labels.clone().requires_grad_()
            loss = step_loss(logits, y, mask, loss_type=loss_type, label_smoothing=s, reduction="sum")
            (auto,) = torch.autograd.grad(loss, y)
            expected = label_loss_grad(logits, labels, loss_type, s) * mask
            torch.testing.assert_close(auto, expected, msg=f"{loss_type} smoothing={s}")


def test_label_table_layout_fixed_entries_and_stats():
    """Labels are the parameters (no clip); a fixed (clean) entry keeps its label whatever the parameter holds."""
    table = LabelTable([[0.0, 1.0], [0.5, None, 0.25], [1.0]], fixed=[[False, True], [False, False, True], [True]])
    table = table.double()
    row_ids = torch.tensor([2, 0, 1])
    step_labels = torch.tensor([[1.0, -100, -100], [0.0, 1.0, -100], [0.5, -100, 0.25]])
    torch.testing.assert_close(table.labels(row_ids, step_labels), step_labels)  # starts at the noisy labels
    assert table.learnable.tolist() == [True, False, True, False, False, False]
    with torch.no_grad():
        table.y.copy_(torch.tensor([0.9, 0.0, 0.4, 0.7, 0.6, 0.2]))  # moves every entry, fixed ones included
    expected = torch.tensor([[1.0, -100, -100], [0.9, 1.0, -100], [0.4, -100, 0.25]])
    torch.testing.assert_close(table.labels(row_ids, step_labels), expected)
    with torch.no_grad():
        table.y[0] = 1.7  # out of the box
    table.project_()  # back to [0, 1], fixed entries restored
    assert table.y.tolist() == pytest.approx([1.0, 1.0, 0.4, 0.5, 0.25, 1.0])
    stats = table.state_summary()  # over the 2 learnable labels: 0 -> 1 crosses, 0.5 -> 0.4 does not
    assert stats["meta/labels_crossed"] == 1.0
    assert stats["meta/label_shift"] == pytest.approx((1.0 + 0.1) / 2)
    corrected = table.corrected()
    assert corrected[1][1] is None and corrected[0] == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="outside"):
        LabelTable([[1.5]])
    with pytest.raises(ValueError, match="label_fixed"):
        LabelTable([[0.5, 1.0]], fixed=[[True]])


def test_label_table_update_is_clipped_sgd_on_seen_labels_only():
    """SGD on the clipped standardised hypergradient: a seen label moves by lr x its gradient, at most lr per step
    (clip 1); unseen and fixed labels never move."""
    table = LabelTable([[0.9, 1.0], [0.2, 0.0]], fixed=[[False, True], [False, True]])
    opt = table.make_optimizer(lr=0.1)
    for grad in ([0.5, -1.0, 0.0, 0.0], [0.5, -1.0, 0.0, 0.0], [4.0, -1.0, 0.0, 0.0]):  # row 0 seen; its verdict too
        table.y.grad = table.sparse_grad(table.step_direction(torch.tensor(grad, dtype=torch.float32)))
        opt.step()
        table.project_()
    y = table.y.detach().tolist()
    assert y[0] == pytest.approx(0.9 - 0.05 - 0.05 - 0.1, abs=1e-6)  # 4.0 is clipped to one RMS: a step of lr
    assert y[1:] == pytest.approx([1.0, 0.2, 0.0])


def test_informedness_lower_bound_is_agresti_caffo():
    """The Agresti-Caffo lower bound of a difference of two proportions: 8 of 10 against 2 of 10 at z = 1.96 is
    0.5 - 1.96 * sqrt(2 * 0.75 * 0.25 / 12) = 0.1535; an unseen class counts as one success in two trials."""
    assert informedness_lower_bound([2, 8], [10, 10], [10, 10], 1.96) == pytest.approx(0.153518, abs=1e-6)
    assert informedness_lower_bound([0, 0], [3, 0], [3, 0], 0.0) == pytest.approx(0.5 - 1 / 5)


def test_label_table_reliability_is_informedness_on_clean_verdicts():
    """The clean final labels are probes: reliability is the lower bound of P(up | passed) - P(up | failed) of
    their (centred) descent directions, running counts over meta steps (decay 0.9, effective counts from the
    squared weights). A direction that points down at every probe agrees with 3 failing verdicts of 4 and gets
    0 (plain agreement would give 2 * 3/4 - 1 = 0.5); no clean label: 1."""
    labels, fixed = [[0.2, 0.0], [0.7, 0.0], [0.4, 0.0], [0.6, 1.0]], [[False, True]] * 4
    table = LabelTable(labels, fixed=fixed)
    assert table.probes.tolist() == [False, True] * 4
    seen = table.learnable.clone()
    down = torch.tensor([0.1, 0.5, -0.1, 0.5, 0.3, 0.5, 0.1, 0.5])  # learnable mean 0.1: every probe centred > 0
    assert table.reliability(down, seen, centre=True) == 0.0
    # centred on the learnable mean 0.1: the three failing probes above it (down), the passing one below it (up)
    table = LabelTable(labels, fixed=fixed)
    right = torch.tensor([0.1, 0.5, -0.1, 0.3, 0.3, 0.2, 0.1, 0.05])
    assert table.reliability(right, seen, centre=True) == pytest.approx(0.140977, abs=1e-6)  # 1 of 1, 0 of 3 up
    assert table.reliability(right, seen, centre=True) == pytest.approx(0.378005, abs=1e-6)  # a second such step
    assert table.clean_seen.tolist() == pytest.approx([5.7, 1.9]) and table.clean_up.tolist() == pytest.approx([0, 1.9])
    assert table.clean_seen_sq.tolist() == pytest.approx([0.81 * 3 + 3, 1.81])
    assert LabelTable([[0.2, 0.5]]).reliability(down[:2], torch.tensor([True, True]), True) == 1.0  # no clean label
    assert WeightTable([[0.2, 1.0]], fixed=[[False, True]]).probes.tolist() == [False, False]


def test_standardise_hypergradient_centres_and_scales_seen_entries():
    """Centring removes the window's common mode (a shift of every label the same way); both forms are divided by
    the raw RMS over the seen entries (a nearly constant window stays small once centred) and leave unseen entries
    at zero."""
    grad = torch.tensor([3.0, 1.0, 0.0, 2.0])
    seen = torch.tensor([True, True, False, True])
    plain = standardise_hypergradient(grad, seen)
    assert plain.tolist() == pytest.approx([3 / (14 / 3) ** 0.5, 1 / (14 / 3) ** 0.5, 0.0, 2 / (14 / 3) ** 0.5])
    centred = standardise_hypergradient(grad, seen, centre=True)  # [1, -1, ., 0] / sqrt(14/3)
    assert centred.tolist() == pytest.approx([(3 / 14) ** 0.5, -((3 / 14) ** 0.5), 0.0, 0.0])
    window = torch.tensor([1.0, 1.0 + 1e-4, 1.0 - 1e-4])  # nearly all common mode
    near_constant = standardise_hypergradient(window, torch.ones(3, dtype=torch.bool), centre=True)  # residual kept small
    assert near_constant.tolist() == pytest.approx([0.0, 1e-4, -1e-4], abs=1e-6)
    assert standardise_hypergradient(grad, torch.zeros(4, dtype=torch.bool), centre=True).tolist() == [0.0] * 4


def test_weight_table_per_prefix_clamped_and_decay():
    table = WeightTable([[0.1], [0.2, 0.3], [0.4]], fixed=[[False], [False, True], [True]])
    torch.testing.assert_close(table.all_weights(), torch.ones(4, dtype=torch.float32))
    with torch.no_grad():
        table.w.copy_(torch.tensor([3.0, -1.0, 0.5, 0.5]))
    table.project_()
    assert table.all_weights().tolist() == [2.0, 0.0, 1.0, 1.0]  # clamp [0, 2]; fixed entries weigh 1
    w = table.weights(torch.tensor([1, 0]), 2)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float32))
    assert table.decay_grad(0.5).tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    assert build_table("none", [[0.1]]) is None
    with pytest.raises(ValueError, match="meta_method"):
        build_table("bogus", [[0.1]])


def test_split_by_task_is_disjoint_and_seeded():
    ids = ["a", "a", "b", "c", "c", "d", "e"]
    train, meta = split_by_task(ids, meta_fraction=0.4, seed=3)
    assert sorted(train + meta) == list(range(7))
    assert not {ids[i] for i in train} & {ids[i] for i in meta}
    assert len({ids[i] for i in meta}) == 2  # round(0.4 * 5 tasks)
    assert (train, meta) == split_by_task(ids, meta_fraction=0.4, seed=3)
    with pytest.raises(ValueError, match="distinct task"):
        split_by_task(["a", "a"])


# ---------------------------------------------------------------------------------------------------------------
# A tiny bi-level problem: an MLP scores "steps" (feature vectors); programs are groups of steps.
# ---------------------------------------------------------------------------------------------------------------

LR = 0.5


def _mlp_problem(kind: str, loss_type: str = "bce", smoothing: float = 0.0):
    g = torch.Generator().manual_seed(0)
    d, h = 5, 6
    params = {
        "w1": torch.randn(d, h, generator=g) * 0.7, "b1": torch.randn(h, generator=g) * 0.1,
        "w2": torch.randn(h, generator=g) * 0.7, "b2": torch.zeros(()),
    }
    rows = [[0.2, 0.9, 0.5], [1.0, 0.0], [0.3, 0.6, 0.8, 0.1]]
    x_train = torch.randn(3, 4, d, generator=g)
    step_labels = torch.full((3, 4), -100.0)
    for i, r in enumerate(rows):
        step_labels[i, : len(r)] = torch.tensor(r)
    mask = step_labels != -100
    row_ids = torch.arange(3)
    x_meta = torch.randn(4, 3, d, generator=g)
    passed = torch.tensor([1.0, 0.0, 1.0, 0.0])
    table = (LabelTable(rows) if kind == "label" else WeightTable(rows)).double()

    def forward(p, x):
        return torch.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def batch_loss(logits, phi):
        if kind == "label":
            flat, valid = table.index(row_ids, 4)
            y = torch.where(mask, phi[flat], 0.0)
            w = torch.ones(3, 4)
        else:
            y = step_labels.clamp(0, 1)
            flat, _ = table.index(row_ids, 4)
            w = phi[flat]
        per = pointwise_step_loss(logits, y, loss_type, smoothing) * mask
        return (w * per).sum() / mask.sum()

    def inner_loss(p, phi):
        return batch_loss(forward(p, x_train), phi)

    def meta_loss(p):
        score = torch.sigmoid(forward(p, x_meta)).amin(dim=1)
        return F.binary_cross_entropy(score, passed)

    def table_grad(p, phi):
        """d l / d phi from the prediction alone (what the trainer does at theta +- eps v)."""
        with torch.no_grad():
            logits = forward(p, x_train)
        if kind == "label":
            flat, _ = table.index(row_ids, 4)
            y = phi[flat]
            dy = label_loss_grad(logits, y, loss_type, smoothing) * mask / mask.sum()
            return torch.zeros_like(phi).index_put_((flat[mask],), dy[mask], accumulate=True)
        phi = phi.detach().requires_grad_()
        (grad,) = torch.autograd.grad(batch_loss(logits, phi), phi)
        return grad

    return params, table.phi.detach().clone() + 0.05 * torch.randn(table.phi.shape, generator=g), inner_loss, \
        meta_loss, table_grad


def _finite_difference(f, phi, h=1e-5):
    grad = torch.zeros_like(phi)
    for i in range(phi.numel()):
        e = torch.zeros_like(phi)
        e[i] = h
        grad[i] = (f(phi + e) - f(phi - e)) / (2 * h)
    return grad


def _darts_at(live, phi, inner_loss, meta_loss, table_grad, precondition=None):
    """`darts_hypergradient` of the MLP problem at the parameters ``live`` (a dict of leaf tensors)."""
    names = list(live)
    inner_grads = torch.autograd.grad(inner_loss(live, phi), [live[k] for k in names])

    def meta_grad_fn():
        loss = meta_loss(live)
        return torch.autograd.grad(loss, [live[k] for k in names]), loss

    return darts_hypergradient([live[k] for k in names], inner_grads, LR, meta_grad_fn,
                               lambda: table_grad(live, phi), alpha=0.01, precondition=precondition)


@pytest.mark.parametrize("kind,loss_type,smoothing", [("label", "bce", 0.0), ("label", "mse", 0.1),
                                                      ("weight", "bce", 0.0)])
def test_hypergradients_match_finite_difference(kind, loss_type, smoothing):
    params, phi, inner_loss, meta_loss, table_grad = _mlp_problem(kind, loss_type, smoothing)
    f = lambda ph: unrolled_meta_loss(inner_loss, meta_loss, params, ph, LR)  # noqa: E731
    reference = _finite_difference(f, phi)
    assert reference.abs().max() > 1e-4  # a non-trivial problem

    exact, value = exact_hypergradient(inner_loss, meta_loss, params, phi, LR)
    assert value.item() == pytest.approx(f(phi).item(), rel=1e-12)
    assert F.cosine_similarity(exact, reference, dim=0) > 0.999999
    torch.testing.assert_close(exact, reference, rtol=1e-6, atol=1e-9)

    live = {k: v.clone().requires_grad_() for k, v in params.items()}
    before = {k: v.detach().clone() for k, v in live.items()}
    darts, meta_value = _darts_at(live, phi, inner_loss, meta_loss, table_grad)
    for k, b in before.items():
        assert torch.equal(live[k].detach(), b)  # parameters restored bit for bit
    assert meta_value.item() == pytest.approx(value.item(), rel=1e-12)
    assert F.cosine_similarity(darts, reference, dim=0) > 0.999
    torch.testing.assert_close(darts, reference, rtol=1e-3, atol=1e-6)


def test_darts_reduce_fn_sees_meta_gradient():
    params, phi, inner_loss, meta_loss, table_grad = _mlp_problem("label")
    live = [params[k].clone().requires_grad_() for k in params]
    named = dict(zip(params, live))
    grads = torch.autograd.grad(inner_loss(named, phi), live)
    seen = []

    def reduce_fn(v):
        seen.append([t.clone() for t in v])
        return [2 * t for t in v]  # the hypergradient is linear in v: doubling v doubles it

    def meta_grad_fn():
        loss = meta_loss(named)
        return torch.autograd.grad(loss, live), loss

    h1, _ = darts_hypergradient(live, grads, LR, meta_grad_fn, lambda: table_grad(named, phi), reduce_fn=reduce_fn)
    h0, _ = darts_hypergradient(live, grads, LR, meta_grad_fn, lambda: table_grad(named, phi))
    assert len(seen) == 1
    torch.testing.assert_close(h1, 2 * h0, rtol=1e-5, atol=1e-9)


def test_adam_preconditioner_is_the_step_scale_of_torch_adam():
    """With beta1 = 0 and no weight decay Adam's step is exactly ``lr * g * P``, P read from its state after it."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.0, 0.99), eps=1e-3)
    assert adam_preconditioner(opt.state[p], 0.99, 1e-3) is None  # no step yet: nothing to read
    for _ in range(3):
        g = torch.randn(5, dtype=torch.float64) * torch.tensor([1e-3, 1e-2, 1.0, 10.0, 0.0], dtype=torch.float64)
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        scale = adam_preconditioner(opt.state[p], 0.99, 1e-3)
        torch.testing.assert_close((before - p.detach()), 0.1 * g * scale, rtol=1e-12, atol=1e-15)
    assert scale[4] > scale[3]  # a coordinate with small second moments gets the larger step


def test_preconditioned_hypergradients_match_finite_difference():
    """``theta - lr * P g``: DARTS and exact against a finite difference of that unrolled loss, written out here."""
    params, phi, inner_loss, meta_loss, table_grad = _mlp_problem("label", "mse", 0.1)
    gen = torch.Generator().manual_seed(3)
    scale = {k: torch.rand(v.shape, generator=gen, dtype=v.dtype) * 10 for k, v in params.items()}

    def f(ph):
        grads = torch.func.grad(inner_loss)(dict(params), ph)
        return meta_loss({k: params[k] - LR * scale[k] * grads[k] for k in params})

    reference = _finite_difference(f, phi)
    plain, _ = exact_hypergradient(inner_loss, meta_loss, params, phi, LR)
    assert F.cosine_similarity(plain, reference, dim=0) < 0.99  # P changes the direction: the test can tell
    exact, _ = exact_hypergradient(inner_loss, meta_loss, params, phi, LR, scale)
    torch.testing.assert_close(exact, reference, rtol=1e-6, atol=1e-9)

    live = {k: v.clone().requires_grad_() for k, v in params.items()}
    darts, _ = _darts_at(live, phi, inner_loss, meta_loss, table_grad, [scale[k] for k in live])
    torch.testing.assert_close(darts, reference, rtol=1e-3, atol=1e-6)


def test_neumann_inverse_hvp_is_the_truncated_series_and_converges_to_the_inverse():
    """Against matrix powers of a dense positive-definite ``H`` (eigenvalues 0.5..4, so ``eta = 1/8``)."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    h = q @ torch.diag(torch.tensor([0.5, 0.8, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)) @ q.T
    v = torch.randn(6, generator=gen, dtype=torch.float64)
    hvp = lambda u: [h @ u[0]]  # noqa: E731
    eye = torch.eye(6, dtype=torch.float64)

    (k3,), eta = neumann_inverse_hvp([v], hvp, steps=3, eta=0.1)
    series = 0.1 * sum(torch.linalg.matrix_power(eye - 0.1 * h, j) @ v for j in range(4))
    torch.testing.assert_close(k3, series, rtol=1e-12, atol=1e-12)
    (k0,), _ = neumann_inverse_hvp([v], hvp, steps=0, eta=0.1)
    torch.testing.assert_close(k0, 0.1 * v)  # K = 0: the one-step direction

    (_,), eta = neumann_inverse_hvp([v], hvp, steps=1, power_iterations=60)
    assert eta == pytest.approx(0.5 / 4.0, rel=1e-6)
    assert neumann_inverse_hvp([v], hvp, steps=0)[1] == 1.0  # K = 0: no products spent on a scale
    (flat,), eta = neumann_inverse_hvp([v], lambda u: [0 * u[0]], steps=3)  # no curvature: v itself
    assert eta == 1.0 and torch.equal(flat, v)
    with pytest.raises(ValueError, match="steps >= 0"):
        neumann_inverse_hvp([v], hvp, steps=-1)
    (k400,), _ = neumann_inverse_hvp([v], hvp, steps=400, power_iterations=60)
    torch.testing.assert_close(k400, torch.linalg.solve(h, v), rtol=1e-8, atol=1e-10)


def _logistic_bilevel():
    """Logistic regression on soft labels ``phi`` (strictly convex: L2 on the weights), meta loss BCE on verdicts."""
    gen = torch.Generator().manual_seed(1)
    x, x_meta = torch.randn(10, 3, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen,
                                                                                    dtype=torch.float64)
    passed = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    phi = torch.rand(10, generator=gen, dtype=torch.float64) * 0.8 + 0.1

    def inner_loss(p, labels):
        logits = x @ p["w"] + p["b"]
        return F.binary_cross_entropy_with_logits(logits, labels) + 0.1 * p["w"].pow(2).sum()

    def meta_loss(p):
        return F.binary_cross_entropy_with_logits(x_meta @ p["w"] + p["b"], passed)

    def solve(labels):
        """theta*(labels) by Newton's method on the flat (w, b) to machine precision."""
        flat = torch.zeros(4, dtype=torch.float64)
        f = lambda t: inner_loss({"w": t[:3], "b": t[3]}, labels)  # noqa: E731
        for _ in range(30):
            flat = flat - torch.linalg.solve(torch.func.hessian(f)(flat), torch.func.grad(f)(flat))
        return {"w": flat[:3], "b": flat[3]}

    def table_grad(p, labels):  # d l / d phi at p, from the logits alone
        return label_loss_grad(x @ p["w"] + p["b"], labels, "bce") / len(labels)

    return phi, inner_loss, meta_loss, solve, table_grad


def test_implicit_hypergradient_matches_finite_difference_of_the_solved_bilevel_problem():
    """With enough Neumann terms, the hypergradient at theta*(phi) is d L_meta(theta*(phi)) / d phi itself."""
    phi, inner_loss, meta_loss, solve, table_grad = _logistic_bilevel()
    reference = _finite_difference(lambda ph: meta_loss(solve(ph)), phi, h=1e-6)
    live = {k: v.clone().requires_grad_() for k, v in solve(phi).items()}
    before = {k: v.detach().clone() for k, v in live.items()}
    params = list(live.values())

    def meta_grad_fn():
        loss = meta_loss(live)
        return torch.autograd.grad(loss, params), loss

    def run(steps):
        return implicit_hypergradient(params, meta_grad_fn, lambda: table_grad(live, phi),
                                      lambda: torch.autograd.grad(inner_loss(live, phi), params), steps=steps,
                                      alpha=1e-4, power_iterations=30)

    implicit, value = run(300)
    for k, b in before.items():
        assert torch.equal(live[k].detach(), b)  # parameters restored bit for bit
    assert value.item() == pytest.approx(meta_loss(before).item(), rel=1e-12)
    torch.testing.assert_close(implicit, reference, rtol=1e-6, atol=1e-8)
    one_step, _ = run(0)  # the one-step direction at theta*: what the extra terms change
    assert F.cosine_similarity(one_step, reference, dim=0) < 0.99
