"""quant.ptq and quant.dynamic: the INT8 artifact runs in its runtime, keeps accuracy and is smaller."""

from __future__ import annotations


import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset

from edgecompress.context import StageContext
from edgecompress.tasks import ClassificationTask, Task
from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.quant.ptq import PTQConfig, cpu_has_vnni, save_program
from edgecompress.registry import get
from edgecompress.settings import ExportSettings

MAX_ACCURACY_DROP = 0.02  # INT8 static PTQ may cost at most 2 accuracy points against the FP32 ONNX model
MIN_ARGMAX_AGREEMENT = 0.95  # INT8 and float predictions agree on at least 95% of the test inputs
PYTORCH = ExportSettings(format="pytorch", runtime="torch")


class SmallCNN(nn.Module):
    """conv+BN+ReLU, max-pool, conv+BN+ReLU, linear: ~58k parameters, so weights dominate the ONNX file;
    the wide conv runs after the pool (4x4) to keep training fast."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.Flatten(),
        )
        self.fc = nn.Linear(128 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class SharedReLU(nn.Module):
    """One ReLU instance used twice: PT2E cannot quantize this."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def trained(digits_task: Task) -> nn.Module:
    """SmallCNN trained on digits for 5 epochs (about 2 s on an idle machine)."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for x, y in digits_task.loader("train", batch_size=64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    assert digits_task.evaluate_model(model)["accuracy"] > 0.9
    return model


def weight_scale_shapes(graph: onnx.GraphProto) -> dict[str, tuple[list[int], list[int]]]:
    """Conv/Gemm node name -> (weight shape, weight scale shape) for weights fed by a DequantizeLinear."""
    producers = {o: n for n in graph.node for o in n.output}
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    found = {}
    for node in graph.node:
        dq = producers.get(node.input[1]) if node.op_type in ("Conv", "Gemm") else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            found[node.name] = (shapes[dq.input[0]], shapes[dq.input[1]])
    return found


def predictions(artifact: Artifact, x: torch.Tensor) -> np.ndarray:
    return artifact.runner(threads=1)(x.numpy()).argmax(axis=1)


def float_predictions(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).argmax(dim=1).numpy()


def test_ptq_onnx_keeps_accuracy_shrinks_file_and_writes_per_channel_qdq(trained, digits_task, tmp_path):
    ctx = StageContext(task=digits_task, workdir=tmp_path / "ptq")
    out = get("quant.ptq")(trained, get("quant.ptq").config(), ctx)
    assert out.model is trained and out.artifact.precision == "int8" and out.artifact.runtime == "onnxruntime"
    fp32 = export_onnx(trained, digits_task.example_inputs(), tmp_path / "fp32.onnx")

    acc_fp32 = digits_task.evaluate(fp32.runner())["accuracy"]
    acc_int8 = digits_task.evaluate(out.artifact.runner())["accuracy"]
    assert acc_int8 >= acc_fp32 - MAX_ACCURACY_DROP, (acc_fp32, acc_int8)
    assert out.artifact.size_bytes < 0.4 * fp32.size_bytes, (fp32.size_bytes, out.artifact.size_bytes)

    graph = onnx.load(str(out.artifact.path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    weights = weight_scale_shapes(graph)
    assert len(weights) == 3  # both convs and the linear layer
    for weight_shape, scale_shape in weights.values():
        assert scale_shape == weight_shape[:1]  # one scale per output channel
    assert ctx.info["calibration_samples"] == 256
    assert ctx.info["float_nodes"] == []


def test_ptq_onnx_exclude_per_tensor_symmetric_percentile(trained, digits_task, tmp_path):
    config = get("quant.ptq").config(per_channel=False, symmetric_activations=True, calibration="percentile",
                                     calib_samples=64, exclude=["features.4"])
    ctx = StageContext(task=digits_task, workdir=tmp_path)
    out = get("quant.ptq")(trained, config, ctx)
    float_convs = [n for n in ctx.info["float_nodes"] if n.endswith("(Conv)")]
    assert float_convs == ["/features/features.4/Conv (Conv)"]
    graph = onnx.load(str(out.artifact.path)).graph
    weights = weight_scale_shapes(graph)
    assert len(weights) == 2 and all(scale == [] for _, scale in weights.values())  # one scale per tensor
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    activation_zero_points = [initializers[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.dtype == np.int8 and z == 0 for z in activation_zero_points)
    agreement = (predictions(out.artifact, digits_task.test.tensors[0])
                 == float_predictions(trained, digits_task.test.tensors[0])).mean()
    assert agreement >= MIN_ARGMAX_AGREEMENT

    with pytest.raises(EdgeCompressError, match="matches no module"):
        get("quant.ptq")(trained, get("quant.ptq").config(exclude=["no_such_layer"]), StageContext(task=digits_task))


def activation_scales(artifact: Artifact) -> dict[str, float]:
    graph = onnx.load(str(artifact.path)).graph
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    return {n.output[0]: float(values[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.slow  # entropy calibration: ~8 s
def test_ptq_entropy_calibration_clips_ranges_and_keeps_accuracy(trained, digits_task, tmp_path):
    """ONNX Runtime's own entropy calibrator (128/128 bins) returns the min/max range; ours searches 2,048 bins."""
    stage = get("quant.ptq")
    minmax = stage(trained, stage.config(calib_samples=64), StageContext(task=digits_task, workdir=tmp_path / "a"))
    entropy = stage(trained, stage.config(calib_samples=64, calibration="entropy"),
                    StageContext(task=digits_task, workdir=tmp_path / "b"))
    wide, clipped = activation_scales(minmax.artifact), activation_scales(entropy.artifact)
    assert wide.keys() == clipped.keys()
    assert all(clipped[k] <= wide[k] * (1 + 1e-6) for k in wide)  # KL thresholds never widen a range
    assert sum(clipped[k] < 0.95 * wide[k] for k in wide) >= 2  # and really clip some
    agreement = (predictions(entropy.artifact, digits_task.test.tensors[0])
                 == float_predictions(trained, digits_task.test.tensors[0])).mean()
    assert agreement >= MIN_ARGMAX_AGREEMENT


def test_ptq_torchao_pt2_tracks_float_model(trained, digits_task, tmp_path):
    ctx = StageContext(task=digits_task, workdir=tmp_path, export=PYTORCH)
    out = get("quant.ptq")(trained, get("quant.ptq").config(), ctx)
    assert out.artifact.path.suffix == ".pt2" and out.artifact.runtime == "torch"
    assert out.artifact.precision == "int8"
    fp32 = save_program(trained, digits_task.example_inputs(2), tmp_path / "fp32.pt2", "fp32")
    assert out.artifact.size_bytes < 0.6 * fp32.size_bytes  # int8 weights only; the graph adds ~50 kB to both
    x = digits_task.test.tensors[0]
    agreement = (predictions(out.artifact, x) == float_predictions(trained, x)).mean()
    assert agreement >= MIN_ARGMAX_AGREEMENT, agreement
    assert ctx.info["quantized_ops"]["conv2d"] == 2 and ctx.info["quantized_ops"]["linear"] == 1


def test_ptq_torchao_rejects_shared_module_instance(digits_task, tmp_path):
    ctx = StageContext(task=digits_task, workdir=tmp_path, export=PYTORCH)
    with pytest.raises(EdgeCompressError, match="'relu' run more than once") as err:
        get("quant.ptq")(SharedReLU().eval(), get("quant.ptq").config(), ctx)
    assert "Input partition has more than one output node" in str(err.value)
    assert "own module instance" in str(err.value)


def test_ptq_needs_at_least_eight_calibration_samples(trained, digits_task):
    with pytest.raises(ValidationError, match="calib_samples"):
        get("quant.ptq").config(calib_samples=4)
    x, y = digits_task.train.tensors
    tiny = digits_task.with_splits("tiny", train=TensorDataset(x[:5], y[:5]))
    with pytest.raises(EdgeCompressError, match="only 5 calibration samples"):
        get("quant.ptq")(trained, get("quant.ptq").config(), StageContext(task=tiny))


@pytest.mark.parametrize("export", [ExportSettings(), PYTORCH], ids=["onnxruntime", "torchao"])
def test_dynamic_artifact_matches_float_model(trained, digits_task, tmp_path, export):
    ctx = StageContext(task=digits_task, workdir=tmp_path, export=export)
    out = get("quant.dynamic")(trained, get("quant.dynamic").config(), ctx)
    assert out.artifact.precision == "int8" and out.artifact.format == export.format
    x = digits_task.test.tensors[0]
    agreement = (predictions(out.artifact, x) == float_predictions(trained, x)).mean()
    assert agreement >= MIN_ARGMAX_AGREEMENT, agreement
    if export.format == "onnx":
        assert ctx.info["quantized_ops"] == {"ConvInteger": 2, "MatMulInteger": 1}
    else:  # torchao's dynamic INT8 covers nn.Linear only
        assert ctx.info["quantized_ops"] == {"linear": 1}
        assert ctx.info["float_nodes"] == ["features.0 (Conv2d)", "features.4 (Conv2d)"]


def test_reduce_range_avoids_u8s8_saturation(tmp_path):
    """Full-scale weights on full-range inputs overflow int16 pair sums in x86 u8s8 kernels without VNNI;
    7-bit weights (reduce_range) keep the INT8 output on the float one."""
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten())
    with torch.no_grad():
        conv[0].weight.fill_(1.0)
    x = torch.rand(64, 1, 6, 6)
    x[:, :, :3] = 1.0  # bright rows: maximal uint8 activations
    data = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    task = ClassificationTask("bright", data, data, data, (1, 6, 6), 4)
    expected = conv(x[:8]).detach().numpy()

    def max_rel_error(reduce_range: str) -> float:
        out = get("quant.ptq")(conv, PTQConfig(calib_samples=64, reduce_range=reduce_range),
                                StageContext(task=task, workdir=tmp_path / reduce_range))
        got = out.artifact.runner(1)(x[:8].numpy())
        return float(np.abs(got - expected).max() / np.abs(expected).max())

    assert max_rel_error("on") < 0.03
    if not cpu_has_vnni():
        assert max_rel_error("off") > 0.1  # the saturation this option exists for
