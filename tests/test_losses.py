"""Losses: every supported name trains, the numbers match the formulas, bad values explain."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.optim.losses import REFUSED, build_loss, check_loss, supported_losses
from cifarlab.params import LossParams

C = 3
LOGITS = torch.tensor([[1.5, -0.3, 0.2], [0.1, 2.0, -1.0], [-0.5, 0.4, 0.9], [0.0, 0.0, 0.0]])
TARGET = torch.tensor([0, 1, 2, 1])
ONEHOT = F.one_hot(TARGET, C).float()


def _loss(name, num_classes=C, **kwargs):
    """The loss with torch's defaults unless `kwargs` say otherwise: the schema's own defaults
    (cross-entropy's label smoothing 0.1) are set back to torch's, to compare with the formulas."""
    torch_defaults = {k: 0.0 for k in LossParams.DEFAULT_KWARGS.get(name, {}) if k == "label_smoothing"}
    return build_loss(LossParams(name=name, **{name: {**torch_defaults, **kwargs}}), num_classes)


def _lsm(x):
    return x - x.exp().sum(1, keepdim=True).log()


def _softmax(x):
    return x.exp() / x.exp().sum(1, keepdim=True)


def _sig(x):
    return 1 / (1 + (-x).exp())


def _margin_terms(x, y, margin=1.0, p=1):
    picked = x.gather(1, y[:, None])
    terms = (margin - picked + x).clamp(min=0) ** p
    return terms.masked_fill(F.one_hot(y, x.shape[1]).bool(), 0)


# Each supported loss against its formula, written out by hand (not through torch's loss).
FORMULAS = {
    "CrossEntropyLoss": lambda x, y, t: -_lsm(x).gather(1, y[:, None]).mean(),
    "NLLLoss": lambda x, y, t: -_lsm(x).gather(1, y[:, None]).mean(),
    "KLDivLoss": lambda x, y, t: (t * (t.clamp(min=1e-30).log() - _lsm(x))).sum() / len(x),
    "MultiMarginLoss": lambda x, y, t: (_margin_terms(x, y).sum(1) / x.shape[1]).mean(),
    "MultiLabelMarginLoss": lambda x, y, t: (_margin_terms(x, y).sum(1) / x.shape[1]).mean(),
    "BCELoss": lambda x, y, t: -(t * _sig(x).log() + (1 - t) * (1 - _sig(x)).log()).mean(),
    "BCEWithLogitsLoss": lambda x, y, t: -(t * _sig(x).log() + (1 - t) * (1 - _sig(x)).log()).mean(),
    "MultiLabelSoftMarginLoss": lambda x, y, t: -(t * _sig(x).log() + (1 - t) * (1 - _sig(x)).log()).mean(),
    "SoftMarginLoss": lambda x, y, t: (1 + (-(2 * t - 1) * x).exp()).log().mean(),
    "PoissonNLLLoss": lambda x, y, t: (x.exp() - t * x).mean(),
    "MSELoss": lambda x, y, t: ((_softmax(x) - t) ** 2).mean(),
    "L1Loss": lambda x, y, t: (_softmax(x) - t).abs().mean(),
    # |p - t| < 1 for probabilities, so both are in their quadratic part (beta = delta = 1)
    "SmoothL1Loss": lambda x, y, t: (0.5 * (_softmax(x) - t) ** 2).mean(),
    "HuberLoss": lambda x, y, t: (0.5 * (_softmax(x) - t) ** 2).mean(),
}


def test_every_supported_loss_has_a_formula_here():
    assert set(supported_losses()) == set(FORMULAS)


@pytest.mark.parametrize("name", supported_losses())
def test_loss_matches_formula(name):
    value = _loss(name)(LOGITS, TARGET)
    expected = FORMULAS[name](LOGITS, TARGET, ONEHOT)
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", supported_losses())
def test_loss_trains_a_tiny_model(name):
    check_loss(LossParams(name=name), num_classes=C)
    torch.manual_seed(0)
    model = nn.Linear(4, C)
    loss_fn = build_loss(LossParams(name=name), C)
    x = torch.randn(8, 4)
    y = torch.arange(8) % C
    loss = loss_fn(model(x), y)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


def test_tutorial_weighted_nll_with_torch_directly():
    # The tutorial passes already-log-probabilities straight to NLLLoss:
    # -(0.6 * 0.6 + 0.2 * 1.2) / (0.6 + 0.2) = -0.75
    x = torch.tensor([[0.6, 0.2, 0.2], [0.4, 1.2, 0.4]])
    y = torch.tensor([0, 1])
    loss = nn.NLLLoss(weight=torch.tensor([0.6, 0.2, 0.2]))(x, y)
    assert loss.item() == pytest.approx(-0.75)


def test_tutorial_weighted_nll_through_the_adapter():
    # The adapter takes logits, so it applies log_softmax first; the weighting is the same.
    x = torch.tensor([[0.6, 0.2, 0.2], [0.4, 1.2, 0.4]])
    y = torch.tensor([0, 1])
    loss = _loss("NLLLoss", weight=[0.6, 0.2, 0.2])(x, y)
    lp0 = 0.6 - math.log(math.exp(0.6) + 2 * math.exp(0.2))
    lp1 = 1.2 - math.log(2 * math.exp(0.4) + math.exp(1.2))
    expected = -(0.6 * lp0 + 0.2 * lp1) / (0.6 + 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_weight_and_label_smoothing():
    w = torch.tensor([1.0, 2.0, 0.5])
    s = 0.1
    value = _loss("CrossEntropyLoss", weight=w.tolist(), label_smoothing=s)(LOGITS, TARGET)
    lp = _lsm(LOGITS)
    # torch: (1 - s) * weighted NLL + s * mean over classes of the weighted -log p, each
    # normalised by the sum of the targets' weights
    wy = w[TARGET]
    nll = -(wy * lp.gather(1, TARGET[:, None])[:, 0]).sum() / wy.sum()
    smooth = -(lp * w).sum(1).sum() / C / wy.sum()
    assert value.item() == pytest.approx(((1 - s) * nll + s * smooth).item(), rel=1e-5)


def test_cross_entropy_ignore_index_and_sum():
    value = _loss("CrossEntropyLoss", ignore_index=1, reduction="sum")(LOGITS, TARGET)
    keep = TARGET != 1
    expected = -_lsm(LOGITS)[keep].gather(1, TARGET[keep][:, None]).sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_margin_p2_margin_weight():
    w = [1.0, 3.0, 0.5]
    value = _loss("MultiMarginLoss", p=2, margin=0.5, weight=w)(LOGITS, TARGET)
    terms = _margin_terms(LOGITS, TARGET, margin=0.5, p=2) * torch.tensor(w)[TARGET][:, None]
    assert value.item() == pytest.approx((terms.sum(1) / C).mean().item(), rel=1e-5)


def test_multilabel_margin_target_is_padded_with_minus_one():
    loss = _loss("MultiLabelMarginLoss")
    _, padded = loss.prepare(LOGITS, TARGET)
    assert padded[:, 0].tolist() == TARGET.tolist()
    assert (padded[:, 1:] == -1).all()


def test_bce_with_logits_pos_weight():
    pw = torch.tensor([2.0, 1.0, 0.5])
    value = _loss("BCEWithLogitsLoss", pos_weight=pw.tolist())(LOGITS, TARGET)
    t = ONEHOT
    expected = -(pw * t * _sig(LOGITS).log() + (1 - t) * (1 - _sig(LOGITS)).log()).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_div_label_smoothing_and_log_target():
    s = 0.2
    t = ONEHOT * (1 - s) + s / C
    expected = (t * (t.log() - _lsm(LOGITS))).sum() / len(LOGITS)
    for log_target in (False, True):
        value = _loss("KLDivLoss", label_smoothing=s, log_target=log_target)(LOGITS, TARGET)
        assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_follow_the_module_to_a_dtype():
    loss = _loss("CrossEntropyLoss", weight=[1.0, 2.0, 3.0]).to(torch.float64)
    assert loss.loss.weight.dtype == torch.float64
    assert loss(LOGITS.double(), TARGET).dtype == torch.float64


# ------------------------------------------------------------------------ refusals


def test_unknown_name_lists_choices():
    with pytest.raises(ParamsError) as err:
        check_loss(LossParams(name="CrossEntropy"))
    msg = str(err.value)
    assert "loss.name" in msg and "'CrossEntropy'" in msg and "unknown loss" in msg
    assert all(n in msg for n in supported_losses())


@pytest.mark.parametrize(
    "name, why",
    [
        ("MarginRankingLoss", "pairs or triplets"),
        ("HingeEmbeddingLoss", "pairs or triplets"),
        ("CosineEmbeddingLoss", "pairs or triplets"),
        ("TripletMarginLoss", "pairs or triplets"),
        ("TripletMarginWithDistanceLoss", "pairs or triplets"),
        ("CTCLoss", "sequences"),
        ("GaussianNLLLoss", "variance"),
        ("AdaptiveLogSoftmaxWithLoss", "features, not logits"),
    ],
)
def test_refused_losses_say_why(name, why):
    with pytest.raises(ParamsError) as err:
        check_loss(LossParams(name=name))
    msg = str(err.value)
    assert "cannot train this classifier" in msg and why in msg
    assert "CrossEntropyLoss" in msg  # the supported ones are listed


def test_every_torch_loss_is_supported_or_refused_with_a_reason():
    names = [n for n in dir(nn) if n.endswith("Loss") and isinstance(getattr(nn, n), type)]
    assert len(names) > 15
    for name in names:
        if name in supported_losses():
            check_loss(LossParams(name=name))
        else:
            with pytest.raises(ParamsError, match="cannot train this classifier"):
                check_loss(LossParams(name=name))
    assert set(REFUSED) >= {"CTCLoss", "GaussianNLLLoss", "TripletMarginLoss"}


def test_unknown_kwarg_is_named_with_the_accepted_ones():
    with pytest.raises(ParamsError) as err:
        check_loss(LossParams(name="CrossEntropyLoss", CrossEntropyLoss={"label_smothing": 0.1}))
    msg = str(err.value)
    assert "loss.CrossEntropyLoss.label_smothing" in msg
    assert "label_smoothing" in msg and "ignore_index" in msg and "weight" in msg


def test_switching_by_name_ignores_other_losses_kwargs():
    params = LossParams(name="NLLLoss", CrossEntropyLoss={"label_smoothing": 0.1})
    check_loss(params)
    assert isinstance(build_loss(params).loss, nn.NLLLoss)


@pytest.mark.parametrize(
    "name, kwargs, key, text",
    [
        ("CrossEntropyLoss", {"weight": [1.0, 2.0]}, "loss.CrossEntropyLoss.weight", "one number per class (3), got 2"),
        ("BCEWithLogitsLoss", {"pos_weight": [1, 2, 3, 4]}, "loss.BCEWithLogitsLoss.pos_weight", "got 4"),
        ("NLLLoss", {"weight": 2.0}, "loss.NLLLoss.weight", "got a single number"),
        ("NLLLoss", {"weight": [1, -1, 1]}, "loss.NLLLoss.weight", ">= 0"),
        ("NLLLoss", {"weight": [0, 0, 0]}, "loss.NLLLoss.weight", "at least one"),
        ("NLLLoss", {"weight": ["a", 1, 1]}, "loss.NLLLoss.weight", "a list of numbers"),
        ("CrossEntropyLoss", {"reduction": "none"}, "loss.CrossEntropyLoss.reduction", "one number"),
        ("KLDivLoss", {"reduction": "max"}, "loss.KLDivLoss.reduction", "batchmean"),
        ("CrossEntropyLoss", {"label_smoothing": "lots"}, "loss.CrossEntropyLoss.label_smoothing", "a finite number"),
        ("CrossEntropyLoss", {"label_smoothing": 1.5}, "loss.CrossEntropyLoss.label_smoothing", "from 0 to 1"),
        ("CrossEntropyLoss", {"label_smoothing": -0.1}, "loss.CrossEntropyLoss.label_smoothing", "from 0 to 1"),
        ("CrossEntropyLoss", {"ignore_index": 0.5}, "loss.CrossEntropyLoss.ignore_index", "an integer"),
        ("MultiMarginLoss", {"p": 3}, "loss.MultiMarginLoss", "p == 1 and p == 2"),
        ("NLLLoss", {"size_average": False}, "loss.NLLLoss.size_average", "use reduction"),
        ("PoissonNLLLoss", {"log_input": False}, "loss.PoissonNLLLoss.log_input", "log-rates"),
        ("KLDivLoss", {"log_target": True}, "loss.KLDivLoss.log_target", "label_smoothing > 0"),
        ("KLDivLoss", {"label_smoothing": 2}, "loss.KLDivLoss.label_smoothing", "from 0 to 1"),
        ("HuberLoss", {"delta": [1]}, "loss.HuberLoss.delta", "a finite number"),
    ],
)
def test_bad_values_name_the_key(name, kwargs, key, text):
    with pytest.raises(ParamsError) as err:
        check_loss(LossParams(name=name, **{name: kwargs}), num_classes=C)
    assert err.value.key == key
    assert text in str(err.value)


def test_poisson_log_input_true_is_accepted():
    check_loss(LossParams(name="PoissonNLLLoss", PoissonNLLLoss={"log_input": True}))
