"""pca_rgb against hand-computed projections."""

import torch

from dreamteacher.reporting import pca_rgb


def test_a_ramp_along_one_direction_becomes_a_red_ramp():
    # 5 pixels whose features are a * (0, 3, 4) / 5: one direction, variance along it only
    a = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    e = torch.tensor([0.0, 3.0, 4.0]) / 5
    f = (a[:, None] * e).T.reshape(1, 3, 1, 5)  # B, C, h, w
    (rgb,) = pca_rgb(f, quantiles=(0.0, 1.0))
    assert rgb.shape == (1, 1, 5, 3) and rgb.dtype == torch.uint8
    # the first component is +-e; its sign is fixed so that the larger weight (4/5) is positive,
    # so the projection grows with a: 0, 63.75, 127.5, 191.25, 255 -> rounded
    assert rgb[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255]
    assert rgb[..., 1:].max() <= 1  # no variance left for green and blue (0 up to rounding)


def test_others_share_the_fitted_projection():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 8, 4, 5, generator=g)
    t_rgb, same, swapped, noisy = pca_rgb(teacher, teacher, teacher.flip(0), teacher * 3)
    assert torch.equal(same, t_rgb)  # one colour means one feature direction in every map
    assert torch.equal(swapped, t_rgb.flip(0))
    assert not torch.equal(noisy, t_rgb)  # scaled features leave the fitted range


def test_fewer_than_three_channels_leave_the_rest_black():
    f = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    (rgb,) = pca_rgb(f)
    assert rgb[..., 2].eq(0).all() and rgb[..., 0].max() > 0
