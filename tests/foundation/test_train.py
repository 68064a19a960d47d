import torch

from poisonguard.attacks import ALL_TO_ALL, badnets_trigger, poison_dataset
from poisonguard.data import per_class_subset
from poisonguard.models import build_model
from poisonguard.train import FitConfig, evaluate, fit, random_crop_flip


def test_backdoor_really_works(mnist, badnets_model, badnets_trigger_3x3):
    ev = evaluate(badnets_model, mnist.test, badnets_trigger_3x3)
    assert ev.clean_accuracy >= 0.95 and ev.attack_success_rate >= 0.95
    assert ev.n_attack == int((mnist.test.y != 0).sum())


def test_clean_model_really_learns_and_ignores_trigger(mnist, clean_model, badnets_trigger_3x3):
    ev = evaluate(clean_model, mnist.test, badnets_trigger_3x3)
    assert ev.clean_accuracy >= 0.95 and ev.attack_success_rate <= 0.05


def test_all_to_all_backdoor(mnist):
    trig = badnets_trigger(mnist.input_shape, target=ALL_TO_ALL, size=4)
    data = poison_dataset(mnist.train, trig, rate=0.2, seed=0).data
    model = fit(build_model("mnist_cnn", num_classes=10, input_shape=mnist.input_shape), data, epochs=8, batch_size=64, device="cpu")
    ev = evaluate(model, mnist.test, trig)
    assert ev.clean_accuracy >= 0.9 and ev.attack_success_rate >= 0.6


def test_same_seed_same_weights(mnist):
    small = per_class_subset(mnist.train, per_class=20)
    weights = []
    for _ in range(2):
        torch.manual_seed(123)  # architecture init is the caller's; fit seeds the rest
        model = build_model("mnist_cnn", num_classes=10, input_shape=mnist.input_shape)
        fit(model, small, FitConfig(epochs=2, batch_size=32, seed=5, device="cpu", augment="crop"))
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_crop_flip_shapes_and_identity():
    x = torch.rand(5, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, g, pad=0, flip=False), x)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape


def test_preact_resnet_learns_a_batch():
    """Smoke test for the CIFAR architecture: SGD memorises a small batch."""
    import torch.nn.functional as F

    from poisonguard.data import ImageData

    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    y = torch.arange(16) % 2
    model = build_model("preact_resnet18", num_classes=2, input_shape=(3, 32, 32))
    with torch.no_grad():
        before = F.cross_entropy(model.train()(x), y)
    fit(model, ImageData(x, y, ("a", "b")), FitConfig(epochs=10, batch_size=16, optimizer="sgd", lr=0.05, augment="none", device="cpu"))
    with torch.no_grad():
        after = F.cross_entropy(model.train()(x), y)
    assert after < 0.5 * before
