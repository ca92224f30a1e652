"""The Hydra-free API meets bad input with a clear error before any work (NaN/inf, empty data,
impossible T, labels, settings that would be ignored, a model of the wrong kind for a method),
and runs every method of the table that needs no training split: the ReLU-ANN conversions,
``lowlat-cn`` and, with ``fine_tune_snn``, ``lowlat-ft``."""

import copy

import pytest
import torch
from torch import nn

from lowlat import api
from lowlat.activations import QCActivation
from lowlat.convert import ConversionError
from lowlat.neurons import spiking_layers


def relu_net(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 10)).eval()


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    x, y = torch.rand(48, 3, 8, 8), torch.randint(0, 10, (48,))
    return x, y, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]


@pytest.fixture(scope="module")
def qc(data):
    return api.prepare(relu_net(), data[2])


def _nan(x):
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x


@pytest.mark.parametrize("kw,match", [
    ({"shift": 2.0}, "shift must be in"), ({"init": -1.0}, "numeric init"),
    ({"levels": 0}, "levels must be"), ({"percentile": 0}, "percentile must be"),
    ({"pool": "max"}, "pool must be"),
])
def test_prepare_refuses_bad_settings(data, kw, match):
    with pytest.raises(ValueError, match=match):
        api.prepare(relu_net(), data[2], **kw)


def test_prepare_refuses_what_the_converter_would_refuse_before_any_statistics(data):
    calls = []
    loader = [(x, y) for x, y in data[2] if not calls.append(1)]
    calls.clear()
    with pytest.raises(ConversionError, match="GELU"):  # named, with what is supported
        api.prepare(relu_net(nn.GELU), (b for b in loader if not calls.append(1)))
    assert calls == []  # refused before the data were read
    with pytest.raises(ValueError, match="no ReLU or clip-ReLU"):
        api.prepare(nn.Sequential(nn.Flatten(), nn.Linear(192, 10)), data[2])


def test_non_finite_images_are_refused_by_every_step(data, qc):
    x, y, _ = data
    with pytest.raises(ValueError, match="NaN or inf"):
        api.prepare(relu_net(), _nan(x))
    with pytest.raises(ValueError, match="NaN or inf"):
        api.calibrate(api.convert(qc, "lowlat", T=2), qc, _nan(x), n_images=16)
    with pytest.raises(ValueError, match="NaN or inf"):
        api.evaluate(api.convert(qc, "opti", T=2), [(_nan(x), y)], [2])


@pytest.mark.parametrize("T", [0, -1, 2.5, True])
def test_impossible_time_steps_are_refused(qc, data, T):
    with pytest.raises(ValueError, match="whole numbers >= 1"):
        api.convert(qc, "opti", T=T)
    snn = api.convert(qc, "opti", T=2)
    with pytest.raises(ValueError, match="whole numbers >= 1"):
        snn(data[0], T=T)
    with pytest.raises(ValueError, match="whole numbers >= 1"):
        api.evaluate(snn, data[2], [T])


def test_empty_data_labels_and_image_counts(qc, data):
    x, y, loader = data
    snn = api.convert(qc, "opti", T=2)
    with pytest.raises(ValueError, match="no batches"):
        api.evaluate(snn, [], [2])
    with pytest.raises(ValueError, match="label 99, outside the network's 10 classes"):
        api.evaluate(snn, [(x[:4], torch.tensor([0, 1, 2, 99]))], [2])
    with pytest.raises(ValueError, match="class indices"):
        api.evaluate(snn, [(x[:4], torch.rand(4, 10))], [2])
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_images must be"):
            api.calibrate(api.convert(qc, "lowlat", T=2), qc, loader, n_images=n)


def test_a_method_refuses_a_model_of_the_wrong_kind(qc, data):
    loader = data[2]
    with pytest.raises(ValueError, match="pass the original ReLU model"):
        api.convert(qc, "maxnorm", T=2, data=loader)  # would keep λ as θ, ignoring statistics
    with pytest.raises(ValueError, match="converts a QC-ANN"):
        api.convert(relu_net(), "opti", T=2)
    with pytest.raises(ValueError, match="Rate Norm"):
        api.convert(qc, "ratenorm", T=2)


def test_converter_runs_relu_ann_methods_and_refuses_ignored_settings(data):
    x, y, loader = data
    for method in ("maxnorm", "robustnorm", "channelnorm"):
        snn = api.Converter(loader, T=2, method=method)(relu_net())
        assert snn.method == method and len(spiking_layers(snn.net)) == 1
    with pytest.raises(ValueError, match="would be ignored"):
        api.Converter(loader, T=2, method="opti", iterations=5)
    with pytest.raises(ValueError, match="would be ignored"):
        api.Converter(loader, T=2, method="maxnorm", fine_tune=lambda m: m)(relu_net())
    with pytest.raises(ValueError, match="fine_tune_snn"):
        api.Converter(loader, T=2, method="lowlat-ft")(relu_net())


def test_lowlat_cn_through_the_api_is_the_stages_calibration(data):
    """lowlat-cn (SpikingJelly's per-channel thresholds, then signed LMPC per channel) on a
    user's ReLU ANN: the same start and target (the ANN clipped at each neuron's θ) as stage
    phase2's, so the same v(0)."""
    from lowlat.calibrate import CalibConfig, calibrate
    from lowlat.convert import activation_stats, trace
    from lowlat.methods import calibration_pair

    x, y, loader = data
    ann = relu_net()
    snn = api.convert(ann, "lowlat-cn", T=4, data=loader)
    reports = api.calibrate(snn, ann, loader, n_images=32)
    assert snn.method == "lowlat-cn" and reports[0]["mse_after_lmpc"] != reports[0]["mse_start"]
    stats = activation_stats(ann, (xb for xb, _ in loader))
    ref, target = calibration_pair("channelnorm", trace(ann), stats)
    calibrate(ref, target, x[:32], CalibConfig(T=4, lmpc=True, lwc=False, formula="signed",
                                               granularity="channel"), progress=False)
    (_, a), (_, b) = spiking_layers(snn.net)[0], spiking_layers(ref)[0]
    assert torch.equal(a.theta, b.theta) and a.v0.abs().sum() > 0
    torch.testing.assert_close(a.v0, b.v0)
    with pytest.raises(ValueError, match="fine_tune_snn"):
        api.calibrate(api.convert(ann, "lowlat-cn", T=4, data=loader), ann, loader,
                      method="lowlat-ft")


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16  # [N, 1, 8, 8]
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    p = torch.randperm(len(x), generator=g)
    return x[p], y[p]


def test_fine_tune_snn_learns_where_the_printed_surrogate_diverges():
    """lowlat-ft on a user's model: LMPC, then ``fine_tune_snn``. The digits CNN's λ are 3-5
    (unnormalised inputs), so the printed triangle's gain γ·θ per neuron makes the BPTT through
    the resets grow: training loss rises and validation falls (the best state, the start, is
    kept); the scaled triangle's is at most γ and the fine-tune learns."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _digits()
    tr, va = TensorDataset(x[:1000], y[:1000]), TensorDataset(x[1000:1400], y[1000:1400])
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32),
                        nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.SGD(ann.parameters(), lr=0.05, momentum=0.9)
    for _ in range(8):
        for xb, yb in DataLoader(tr, batch_size=64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(ann(xb), yb).backward()
            opt.step()
    ann.eval()
    qc = api.prepare(ann, x[:1000], levels=2, shift=0.5)
    assert min(float(m.lam) for m in qc.modules() if isinstance(m, QCActivation)) > 1.5
    start = api.convert(qc, "lowlat-lmpc", T=2)
    api.calibrate(start, qc, x[:1000], n_images=256)
    val = DataLoader(va, batch_size=200)
    reps = {}
    for surrogate in ("scaled", "eq15"):
        snn = copy.deepcopy(start)
        reps[surrogate] = api.fine_tune_snn(
            snn, DataLoader(tr, batch_size=64, shuffle=True), val, teacher=ann,
            iterations=120, eval_every=40, surrogate=surrogate, fused=False)
        assert snn.method == "lowlat-ft"
        assert api.evaluate(snn, val, [2])[2] == pytest.approx(reps[surrogate]["ft_val_best"])
    sc, eq = reps["scaled"], reps["eq15"]
    assert sc["ft_loss_last"] < sc["ft_loss_first"], sc  # it learns
    assert eq["ft_loss_last"] > 10 * sc["ft_loss_last"], (sc, eq)
    assert eq["ft_val_curve"]["120"] < eq["ft_val_start"] - 0.03, eq  # it fell
    assert eq["ft_diverged"] and not sc["ft_diverged"]  # said, not hidden by the kept start
    assert sc["ft_val_curve"]["120"] > eq["ft_val_curve"]["120"] + 0.03, (sc, eq)
    with pytest.raises(ValueError, match="teacher"):
        api.fine_tune_snn(start, DataLoader(tr, batch_size=64), val)
    with pytest.raises(ValueError, match="would be ignored"):
        api.fine_tune_snn(start, DataLoader(tr, batch_size=64), val, teacher=ann,
                          batch_size=32)


def test_dict_batches_and_integer_images_are_refused_raw_pixels_with_mean_std_accepted(qc, data):
    x, y, loader = data
    dicts = [{"image": xb, "label": yb} for xb, yb in loader]
    snn = api.convert(qc, "opti", T=2)
    with pytest.raises(ValueError, match=r"prepare: a batch must be .* a dict with keys \['image'"):
        api.prepare(relu_net(), dicts)
    with pytest.raises(ValueError, match="evaluate: the data must yield .* dict with keys"):
        api.evaluate(snn, dicts, [2])
    with pytest.raises(ValueError, match="fine_tune_snn: train: the data must yield"):
        api.fine_tune_snn(snn, dicts, loader, kd=0, iterations=1)
    pixels = (x * 255).to(torch.uint8)
    with pytest.raises(ValueError, match="prepare: the images are torch.uint8.*mean=/std="):
        api.prepare(relu_net(), pixels)
    with pytest.raises(ValueError, match="evaluate: the images are torch.uint8"):
        api.evaluate(snn, [(pixels, y)], [2])
    # raw uint8 pixels with the normalisation that maps them to the model's inputs: accepted
    conv = api.Converter([(pixels, y)], T=2, method="lowlat-lmpc", n_images=16,
                         mean=[0.0] * 3, std=[255.0] * 3)
    raw = conv(relu_net())
    assert torch.allclose(raw(pixels[:4]), api.Converter(
        [(pixels.float() / 255, y)], T=2, method="lowlat-lmpc", n_images=16)(relu_net())(
        pixels[:4].float() / 255), atol=1e-5)
