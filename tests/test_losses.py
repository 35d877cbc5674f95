"""Position-free losses: they must ignore where an object is and see what it is."""

import torch

from t2i_core.data import shapes
from t2i_core.data.loading import Pair, images_to_tensor
from t2i_core.training.loss import color_distribution_loss, spectrum_loss


def _image(shape: str, color: str = "red", x: int = 20, y: int = 20):  # centre in pixels of 64
    obj = {"color": color, "shape": shape, "size": "large", "x": x / 64, "y": y / 64}
    return images_to_tensor([Pair(shapes.render([obj], 64), "", "")])


def test_spectrum_loss_ignores_position_and_sees_shape():
    square, moved = _image("square", x=20, y=20), _image("square", x=44, y=40)
    circle, triangle = _image("circle", x=20, y=20), _image("triangle", x=20, y=20)
    same_place_other_shape = min(spectrum_loss(circle, square).item(), spectrum_loss(triangle, square).item())
    moved_same_shape = spectrum_loss(moved, square).item()
    assert moved_same_shape < 1e-4
    assert same_place_other_shape > 100 * max(moved_same_shape, 1e-6)
    assert spectrum_loss(square, square).item() == 0.0


def test_spectrum_loss_has_gradients_per_sample():
    fake = torch.cat([_image("circle"), _image("triangle")]).requires_grad_(True)
    real = torch.cat([_image("square"), _image("triangle", x=40)])
    loss = spectrum_loss(fake, real)
    assert loss.shape == (2,)
    assert loss[0] > loss[1]
    loss.sum().backward()
    assert fake.grad[0].abs().sum() > 0


def test_color_loss_ignores_position_and_sees_colour():
    directions = torch.nn.functional.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    red, moved_red, green = _image("square"), _image("square", x=44, y=40), _image("square", color="green")
    assert color_distribution_loss(moved_red, red, directions).item() < 1e-6
    assert color_distribution_loss(green, red, directions).item() > 0.05
