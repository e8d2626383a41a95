"""core.optim: Muon with a choice of orthogonalisation dtype, checked against torch.optim.Muon."""

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newtonschulz

from core.config import TrainConfig, preset
from core.model import GPT
from core.optim import Muon, build_optimizers, zeropower_gram, zeropower_newtonschulz

COEFFS = (3.4445, -4.7750, 2.0315)
SHAPES = [(96, 32), (32, 32), (32, 128)]  # tall, square, wide: the transposed branch both ways


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02) for s in SHAPES]


def _run(make_opt, steps=4, seed=1):
    params = _params()
    opt = make_opt(params)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params], opt


KW = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")


def test_bf16_orthogonalisation_is_torchs_muon_bit_for_bit():
    ours, _ = _run(lambda p: Muon(p, ortho_dtype="bfloat16", **KW))
    theirs, _ = _run(lambda p: torch.optim.Muon(p, **KW))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_newtonschulz_is_torchs_iteration_without_the_bf16_rounding(shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    ours = zeropower_newtonschulz(grad, COEFFS, 5, 1e-7, torch.float32)
    theirs = torch_newtonschulz(grad, COEFFS, 5, 1e-7).float()
    exact = zeropower_newtonschulz(grad.double(), COEFFS, 5, 1e-7, torch.float64)
    assert ours.dtype == torch.float32 and ours.shape == grad.shape
    # torch's answer differs from the exact iteration by bf16 rounding (~2% here), ours by fp32's
    assert float((ours.double() - exact).norm() / exact.norm()) < 1e-5
    assert float((theirs.double() - exact).norm() / exact.norm()) < 0.05
    assert float((ours - theirs).norm() / ours.norm()) < 0.05


@pytest.mark.parametrize("shape", [*SHAPES, (7, 300), (300, 7)])
def test_gram_form_gives_the_fp32_iteration_to_float_rounding(shape):
    grad = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    gram = zeropower_gram(grad, COEFFS, 5, 1e-7)
    exact = zeropower_newtonschulz(grad.double(), COEFFS, 5, 1e-7, torch.float64)
    assert gram.dtype == torch.float32 and gram.shape == grad.shape
    assert float((gram.double() - exact).norm() / exact.norm()) < 1e-5
    assert torch.equal(grad, torch.randn(*shape, generator=torch.Generator().manual_seed(4)))  # input untouched


def test_gram_form_handles_a_zero_and_a_rank_one_gradient():
    zero = zeropower_gram(torch.zeros(8, 32), COEFFS, 5, 1e-7)
    assert torch.equal(zero, torch.zeros(8, 32))
    u, v = torch.randn(8, 1), torch.randn(1, 32)
    rank1 = zeropower_gram(u @ v, COEFFS, 5, 1e-7)
    exact = zeropower_newtonschulz((u @ v).double(), COEFFS, 5, 1e-7, torch.float64)
    fp32 = zeropower_newtonschulz(u @ v, COEFFS, 5, 1e-7, torch.float32)
    # a rank-one matrix's one singular value is amplified by every step: both fp32 forms lose a little
    assert torch.isfinite(rank1).all() and float((rank1.double() - exact).norm() / exact.norm()) < 1e-4
    assert float((fp32.double() - exact).norm() / exact.norm()) < 1e-4


def test_gram_muon_steps_equal_fp32_muon_steps_to_float_rounding():
    gram, _ = _run(lambda p: Muon(p, ortho_dtype="gram", **KW))
    fp32, _ = _run(lambda p: Muon(p, ortho_dtype="float32", **KW))
    start = [p.detach() for p in _params()]
    for a, b, p0 in zip(gram, fp32, start):
        assert float(((a - p0) - (b - p0)).norm() / (b - p0).norm()) < 1e-4


def test_fp32_muon_steps_follow_torchs_muon():
    ours, _ = _run(lambda p: Muon(p, ortho_dtype="float32", **KW))
    theirs, _ = _run(lambda p: torch.optim.Muon(p, **KW))
    start = [p.detach() for p in _params()]
    for a, b, p0 in zip(ours, theirs, start):
        da, db = a - p0, b - p0  # the accumulated updates
        assert float((da - db).norm() / db.norm()) < 0.05


def test_newtonschulz_leaves_its_input_alone():
    grad = torch.randn(32, 64)
    before = grad.clone()
    zeropower_newtonschulz(grad, COEFFS, 5, 1e-7, torch.float32)
    assert torch.equal(grad, before)


def test_state_is_torchs_so_checkpoints_move_both_ways():
    _, theirs = _run(lambda p: torch.optim.Muon(p, **KW), steps=2)
    params = _params()
    ours = Muon(params, ortho_dtype="bfloat16", **KW)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
    assert ours.ortho_dtype == "bfloat16"  # an attribute, not part of the saved state


def test_bad_ortho_dtype_is_refused():
    with pytest.raises(ValueError, match="ortho_dtype='float16'"):
        Muon(_params(), ortho_dtype="float16")


def test_build_optimizers_passes_the_orthogonalisation_dtype():
    model = GPT(preset("micro", vocab_size=40, block_size=16))
    adamw, muon = build_optimizers(model, TrainConfig(optimizer="muon"), ortho="bfloat16")
    assert isinstance(muon, Muon) and isinstance(muon, torch.optim.Muon) and muon.ortho_dtype == "bfloat16"
    (only,) = build_optimizers(model, TrainConfig(optimizer="adamw"), ortho="bfloat16")
    assert isinstance(only, torch.optim.AdamW)
