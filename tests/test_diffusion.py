import math

import pytest
import torch

from dlsr_core.diffusion import (
    LFDN,
    ConfigError,
    LFDNConfig,
    NoiseSchedule,
    ddim_reconstruct,
    ddim_timesteps,
    linear_betas,
)

CONFIG = LFDNConfig(feature_dim=12, width=16, depth=2)


def test_linear_betas_match_latent_diffusion_schedule():
    betas = linear_betas(100, 0.0015, 0.0195)
    assert betas.shape == (100,)
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.0195, rel=1e-12)
    # sqrt(beta) is evenly spaced, beta itself is not
    steps = betas.sqrt().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-12)
    assert not torch.allclose(betas.diff(), betas.diff()[0].expand(99))


def test_alpha_bar_is_cumulative_product():
    schedule = NoiseSchedule(LFDNConfig(feature_dim=4))
    betas = linear_betas(100, 0.0015, 0.0195)
    assert schedule.alpha_bar[0].item() == 1.0
    expected_t10 = math.prod(1 - b for b in betas[:10].tolist())
    assert schedule.alpha_bar[10].item() == pytest.approx(expected_t10, rel=1e-6)


def test_q_sample_mean_and_variance_match_closed_form():
    schedule = NoiseSchedule(LFDNConfig(feature_dim=4))
    t = 40
    z0 = torch.full((200_000, 1), 2.0)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    z_t = schedule.q_sample(z0, torch.full((len(z0),), t), noise)
    alpha_bar = schedule.alpha_bar[t].item()
    assert z_t.mean().item() == pytest.approx(2.0 * math.sqrt(alpha_bar), abs=0.01)
    assert z_t.var().item() == pytest.approx(1.0 - alpha_bar, rel=0.02)


class PerfectPredictor(torch.nn.Module):
    """Always returns the true z0: DDIM must then give z0 back exactly, whatever the noise."""

    def __init__(self, z0):
        super().__init__()
        self.z0 = z0
        self.calls = []

    def forward(self, z_t, timesteps):
        self.calls.append(int(timesteps[0]))
        return self.z0[: len(z_t)]


@pytest.mark.parametrize("start,steps", [(1, None), (5, None), (10, 3), (100, 10)])
def test_ddim_with_perfect_x0_predictor_returns_z0(start, steps):
    schedule = NoiseSchedule(LFDNConfig(feature_dim=6))
    z0 = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    predictor = PerfectPredictor(z0)
    reconstruction = ddim_reconstruct(predictor, schedule, z0, start, steps, eta=1.0, seed=3, batch_size=100)
    assert torch.allclose(reconstruction, z0, atol=1e-5)
    assert predictor.calls[0] == start
    assert len(predictor.calls) == (steps or start)


def test_ddim_timesteps_descend_to_zero():
    assert ddim_timesteps(5, 5) == [5, 4, 3, 2, 1, 0]
    assert ddim_timesteps(10, 2) == [10, 5, 0]
    assert ddim_timesteps(3, 50) == [3, 2, 1, 0]
    with pytest.raises(ConfigError):
        ddim_timesteps(3, 0)


def _random_lfdn(config: LFDNConfig = CONFIG) -> LFDN:
    torch.manual_seed(0)
    model = LFDN(config).eval()
    for parameter in model.parameters():  # zero-initialised outputs would hide any dependence on the input
        torch.nn.init.normal_(parameter, std=0.2)
    return model


def test_reconstruction_is_seeded_and_independent_of_batch_size():
    model, schedule = _random_lfdn(), NoiseSchedule(CONFIG)
    z0 = torch.randn(9, 12)
    first = ddim_reconstruct(model, schedule, z0, 6, seed=11, batch_size=2)
    again = ddim_reconstruct(model, schedule, z0, 6, seed=11, batch_size=9)
    other_seed = ddim_reconstruct(model, schedule, z0, 6, seed=12, batch_size=9)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other_seed, atol=1e-3)


def test_a_row_reconstructs_the_same_whatever_else_is_in_the_batch():
    model, schedule = _random_lfdn(), NoiseSchedule(CONFIG)
    z0 = torch.randn(30, 12)
    together = ddim_reconstruct(model, schedule, z0, 5, steps=3, seed=4)
    permutation = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    shuffled = ddim_reconstruct(model, schedule, z0[permutation], 5, steps=3, seed=4)
    assert torch.equal(shuffled, together[permutation])
    for size in (1, 7):
        pieces = torch.cat([ddim_reconstruct(model, schedule, part, 5, steps=3, seed=4) for part in z0.split(size)])
        assert torch.equal(pieces, together)
    # repeated draws are independent of each other and reproducible
    draw_1 = ddim_reconstruct(model, schedule, z0, 5, steps=3, seed=4, draw=1)
    assert not torch.allclose(draw_1, together, atol=1e-3)
    assert torch.equal(draw_1, ddim_reconstruct(model, schedule, z0, 5, steps=3, seed=4, draw=1))


def test_lfdn_starts_at_zero_output_and_shapes():
    model = LFDN(CONFIG)
    out = model(torch.randn(5, 12), torch.randint(1, 101, (5,)))
    assert out.shape == (5, 12)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    assert len(model.blocks) == 2
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 1 for m in model.modules()) == 2 * 2 + 1


@pytest.mark.parametrize("bad", [dict(width=0), dict(depth=0), dict(beta_start=0.1, beta_end=0.01)])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ConfigError):
        LFDN(LFDNConfig(feature_dim=4, **bad))


def test_start_timestep_out_of_range():
    schedule = NoiseSchedule(CONFIG)
    with pytest.raises(ConfigError, match="1..100"):
        ddim_reconstruct(LFDN(CONFIG), schedule, torch.zeros(2, 12), 0)
    with pytest.raises(ConfigError):
        ddim_reconstruct(LFDN(CONFIG), schedule, torch.zeros(2, 12), 101)
