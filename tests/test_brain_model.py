"""The brain-sex model: the committed ONNX graph, torch/ONNX parity, and a short training run."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from clinical_support import import_source

KO_DIR = Path(__file__).resolve().parents[1] / "knowledge_objects" / "brain-sex-dann" / "1.0.0"
MODEL = KO_DIR / "model.onnx"
ACCURACY_FLOOR = 0.80


def _ko_module(name: str) -> ModuleType:
    # The KO's source files import each other under these names.
    return import_source(KO_DIR / "src" / f"{name}.py", name=f"brain_sex_dann_{name}")


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_graph_is_the_classifier_only() -> None:
    graph = onnx.load(str(MODEL)).graph
    (image,) = graph.input
    (probabilities,) = graph.output
    assert image.name == "image" and probabilities.name == "probabilities"
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 32, 40, 32]
    assert [d.dim_param or d.dim_value for d in probabilities.type.tensor_type.shape.dim] == [
        "batch",
        2,
    ]
    ops = [node.op_type for node in graph.node]
    # encoder Linear + classifier; a discriminator would add two more.
    assert ops.count("Gemm") == 2 and ops.count("Conv") == 3
    assert ops[-1] == "Softmax"
    parameters = sum(int(np.prod(t.dims)) for t in graph.initializer)
    print(f"ONNX parameters: {parameters} (BatchNorm folded into the convolutions)")
    assert 480_000 < parameters < 500_000


def test_committed_model_is_accurate_on_fresh_target_subjects() -> None:
    pytest.importorskip("nilearn", reason="the phantom generator needs nilearn")
    from kgrid_py.training.brain_phantoms import generate_subjects

    fresh = generate_subjects("target", 90210, 200)
    probabilities = _session(MODEL).run(None, {"image": fresh.images})[0]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((probabilities.argmax(axis=1) == fresh.labels).mean())
    print(f"committed model, 200 fresh target subjects: accuracy {accuracy:.3f}")
    assert accuracy >= ACCURACY_FLOOR


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, object, np.ndarray, Path]:
    """A 20-step DANN run on a small data set, exported: a trained network to compare."""
    torch = pytest.importorskip("torch", reason="training and parity need torch")
    pytest.importorskip("nilearn", reason="the phantom generator needs nilearn")
    from kgrid_py.training.brain_phantoms import generate

    torch.set_num_threads(1)
    train = _ko_module("train")
    data = train.BrainData(
        source=generate("source_train", 48),
        target_labelled=generate("target_labelled"),
        target_unlabelled=generate("target_unlabelled", 48),
        target_test=generate("target_test", 64),
    )
    net = train.train("dann", data, seed=3, config=train.TrainConfig(steps=20))
    path = tmp_path_factory.mktemp("brain") / "model.onnx"
    _ko_module("model").export_onnx(net, path)
    return train, net, data.target_test.images, path


def test_short_training_is_seeded_and_finite(smoke: tuple) -> None:
    import torch

    train, net, images, _ = smoke
    from kgrid_py.training.brain_phantoms import generate

    tiny = train.BrainData(
        source=generate("source_train", 16),
        target_labelled=generate("target_labelled", 8),
        target_unlabelled=generate("target_unlabelled", 16),
        target_test=generate("target_test", 1),
    )
    config = train.TrainConfig(steps=3, source_batch=8, target_batch=4, unlabelled_batch=8)
    first, second = (train.train("dann", tiny, seed=5, config=config) for _ in range(2))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    probabilities = train.predict(net, images)
    assert probabilities.shape == (64, 2) and np.isfinite(probabilities).all()


def test_unknown_method_is_refused(smoke: tuple) -> None:
    train, *_ = smoke
    with pytest.raises(ValueError, match="unknown method 'gan'"):
        train._labelled_pools("gan", None, train.TrainConfig())


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_torch(smoke: tuple, batch: int) -> None:
    import torch

    _, net, images, path = smoke
    model = _ko_module("model")
    x = images[:batch]
    with torch.no_grad():
        expected = model.ExportedClassifier(net).eval()(torch.from_numpy(x)).numpy()
    actual = _session(path).run(None, {"image": x})[0]
    difference = float(np.abs(actual - expected).max())
    print(f"batch {batch}: max |ONNX Runtime - torch| = {difference:.2e}")
    assert actual.shape == (batch, 2)
    assert difference < 1e-4
    np.testing.assert_array_equal(actual.argmax(axis=1), expected.argmax(axis=1))
