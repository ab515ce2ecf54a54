"""The quantization report and INT8 serving: the diagnosis names a planted outlier layer, the
agreement gate refuses the net it breaks and passes a normal one, and model.int8.onnx is served."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from reparam_core import ConversionError, EquivalenceError, ServingOptions, SpecError, convert
from reparam_core.cli import main
from reparam_core.deploy import ONNX, ONNX_INT8, load_for_serving, parse_serving
from reparam_core.deploy.runtimes import onnx_runner
from reparam_core.quantization import float_nodes, quantization_report, split_calibration
from reparam_core.quantization.report import fake_quant_weight
from tests.helpers import TINY, state_of

INT8 = ServingOptions(runtime="onnxruntime", precision="int8")
SHAPE = (3, 32, 24)  # TINY's input


def inputs(n: int = 64, seed: int = 2) -> Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def planted(seed: int = 2) -> dict[str, Tensor]:
    """TINY with one output channel of its last layer's 3x3 kernel 300 times larger, a channel the
    classifier ignores: its activations widen the layer's 8-bit output range 300-fold, crushing the
    channels the logits depend on."""
    state = state_of(TINY, seed)
    state["stages.1.0.conv_kxk.conv.weight"][0] *= 300
    state["head.fc.weight"][:, 0] = 0
    return state


def test_report_describes_every_fused_layer() -> None:
    result = convert(TINY, state_of(TINY, 2), validate=False)
    before = result.deploy_model.stem.conv.weight.detach().clone()
    report = quantization_report(result.deploy_model, inputs(20))
    assert [layer.name for layer in report.layers] == ["stem", "stages.0.0", "stages.0.1", "stages.1.0"]
    assert report.samples == 20 and report.input_shape == list(SHAPE)
    for layer in report.layers:
        weight = result.deploy_model.get_submodule(layer.name).conv.weight
        assert layer.weight_min == pytest.approx(weight.flatten(1).amin(1).tolist(), abs=1e-6)
        assert layer.weight_max == pytest.approx(weight.flatten(1).amax(1).tolist(), abs=1e-6)
        assert layer.weight_absmax >= layer.weight_p999 > 0 and layer.outlier_ratio >= 1
        assert layer.input_min <= layer.input_max and layer.output_p9999 <= max(
            abs(layer.output_min), layer.output_max
        )
        assert 0 < layer.int8.logits_rel_error < 0.1 and 0 <= layer.int8.top1_agreement <= 1
    stem = report.layer("stem")
    assert stem.input_min == pytest.approx(float(inputs(20).min()), rel=1e-6)
    errors = {layer.name: layer.int8.logits_rel_error for layer in report.layers}
    assert report.worst_layers == sorted(errors, key=errors.__getitem__, reverse=True)[:3]
    assert torch.equal(result.deploy_model.stem.conv.weight, before)  # the net is left as it was


def test_weights_are_quantized_per_output_channel() -> None:
    weight = torch.randn(4, 3, 3, 3)
    weight[1] *= 1000  # a channel of large weights leaves the other channels' steps alone
    error = (fake_quant_weight(weight) - weight).abs().flatten(1).amax(1)
    steps = weight.abs().flatten(1).amax(1) / 127
    assert bool((error <= steps / 2 + 1e-6).all()) and float(error[0]) < 0.02


def test_the_simulation_predicts_onnx_runtime() -> None:
    """Every layer quantized in the simulation and in ONNX Runtime's model.int8.onnx: the logit
    errors agree within a factor of two, for a normal net and for the planted one."""
    for state in (state_of(TINY, 2), planted()):
        result = convert(
            TINY, state, calibration=inputs(), serving=INT8.model_copy(update={"int8_min_agreement": 0.0})
        )
        assert result.onnx_int8 is not None and result.report.quantization is not None
        x = inputs(16, seed=5)
        with torch.no_grad():
            fp32 = result.deploy_model(x)
        ort = onnx_runner("onnxruntime", result.onnx_int8, "int8")(x)
        measured = float((ort - fp32).norm() / fp32.norm())
        simulated = result.report.quantization.all_layers.logits_rel_error
        assert simulated / 2 < measured < simulated * 2


def test_the_gate_refuses_a_net_with_planted_outliers_and_names_the_layer() -> None:
    with pytest.raises(EquivalenceError) as failed:
        convert(TINY, planted(), calibration=inputs(), serving=INT8)
    report = failed.value.report
    assert report is not None and report.int8 is not None and report.quantization is not None
    assert not report.int8.passed and report.int8.top1_agreement < 0.99 and report.int8.held_out_samples == 16
    assert report.quantization.worst_layers[0] == "stages.1.0"
    planted_layer = report.quantization.layer("stages.1.0")
    second = report.quantization.layer(report.quantization.worst_layers[1])
    assert (
        planted_layer.channel_spread > 50
        and planted_layer.int8.logits_rel_error > 3 * second.int8.logits_rel_error
    )
    assert "int8 top-1 agreement" in str(failed.value) and "worst layers: stages.1.0" in str(failed.value)


def test_a_normal_net_passes_and_its_int8_model_is_served(tmp_path: Path) -> None:
    result = convert(TINY, state_of(TINY, 2), calibration=inputs(), serving=INT8)
    int8 = result.report.int8
    assert int8 is not None and int8.passed and int8.top1_agreement >= 0.99
    assert (int8.calibration_samples, int8.held_out_samples) == (48, 16) and result.report.serving is None
    assert {"quantization", "int8"} <= set(result.timings)
    digests = result.save(tmp_path / "out", export=False)
    assert {ONNX, ONNX_INT8} <= set(digests)
    stored = json.loads((tmp_path / "out" / "report.json").read_text())["report"]
    assert stored["int8"]["passed"] and stored["quantization"]["worst_layers"]
    served = load_for_serving(tmp_path / "out", INT8, "cpu", (1,))
    x = inputs(4, seed=7)
    expected = onnx_runner("onnxruntime", result.onnx_int8 or b"", "int8")(x)
    assert torch.equal(served.logits(x), expected)
    assert not torch.equal(expected, onnx_runner("onnxruntime", result.onnx or b"", "fp32")(x))


def test_int8_quantizes_on_the_reference_inputs_without_calibration() -> None:
    state = state_of(TINY, 2)
    plain = convert(TINY, state, validate=False).deploy_model
    x = inputs(32)
    with torch.no_grad():
        reference = {"inputs": x, "outputs": plain(x)}
    result = convert(TINY, state, reference=reference, serving=INT8)
    assert result.report.int8 is not None and result.report.int8.held_out_samples == 8
    assert result.report.quantization is not None and result.report.quantization.samples == 32


def test_int8_needs_inputs_and_runtime_onnxruntime() -> None:
    with pytest.raises(SpecError, match="needs calibration inputs"):
        convert(TINY, state_of(TINY), serving=INT8)
    with pytest.raises(SpecError, match="at least 8 inputs"):
        convert(TINY, state_of(TINY), calibration=inputs(5), serving=INT8)
    with pytest.raises(ValueError, match="runtime torch does not serve precision int8"):
        ServingOptions(precision="int8")
    with pytest.raises(ValueError, match="int8_min_agreement"):
        ServingOptions(runtime="onnxruntime", precision="int8", int8_min_agreement=1.5)


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        (torch.randn(4, 1, 32, 24), r"should be \[N, 3, H, W\]"),
        (torch.full((4, 3, 32, 24), float("nan")), "finite"),
        (torch.zeros(4, 3, 32, 24, dtype=torch.uint8), "floating point"),
        (torch.randn(65, 3, 32, 24), "at most 64 inputs"),
        (torch.randn(2, 3, 65, 24), "at most 64 inputs of at most 64x48"),
    ],
)
def test_bad_calibration_inputs_are_refused(calibration: Tensor, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        convert(TINY, state_of(TINY), calibration=calibration, validate=False)


def test_held_out_inputs_are_every_fourth() -> None:
    x = torch.arange(12.0).reshape(12, 1, 1, 1)
    fit, held_out = split_calibration(x)
    assert held_out.flatten().tolist() == [3.0, 7.0, 11.0] and len(fit) == 9


def test_cli_writes_the_quantization_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, calibration = tmp_path / "tiny.pt", tmp_path / "calibration.safetensors"
    torch.save(state_of(TINY, 2), checkpoint)
    save_file({"inputs": inputs(16)}, str(calibration))
    args = ["convert", "--checkpoint", str(checkpoint), "--spec", json.dumps(TINY), "--no-export"]
    code = main([*args, "--out", str(tmp_path / "out"), "--calibration", str(calibration)])
    assert code == 0
    assert "worst layers alone" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())["report"]
    assert report["quantization"]["samples"] == 16 and len(report["quantization"]["layers"]) == 4
    missing = main(
        [*args, "--out", str(tmp_path / "o2"), "--calibration", str(tmp_path / "none.safetensors")]
    )
    assert missing == 2


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_the_planted_layer_kept_float_passes_the_gate_and_is_served(tmp_path: Path) -> None:
    """int8_float_layers 1: the report's worst layer, the planted one, stays float32 in
    model.int8.onnx (its Conv reads its float32 weights, no QuantizeLinear/DequantizeLinear around
    them, and its output reaches the float classifier unquantized), the rest is INT8, and the net that
    full INT8 breaks passes the gate."""
    options = INT8.model_copy(update={"int8_float_layers": 1})
    result = convert(TINY, planted(), calibration=inputs(), serving=options)
    int8, quantization = result.report.int8, result.report.quantization
    assert int8 is not None and quantization is not None and result.onnx_int8 is not None
    assert int8.passed and int8.float_layers == ["stages.1.0"] == quantization.worst_layers[:1]
    every, mixed = int8.trials
    assert every.float_layers == [] and not every.passed and every.top1_agreement < 0.99
    assert mixed.passed and (mixed.top1_agreement, mixed.logits_rel_error) == (
        int8.top1_agreement,
        int8.logits_rel_error,
    )
    assert mixed.logits_rel_error < every.logits_rel_error / 5

    model = onnx.load_model_from_string(result.onnx_int8)
    producers = _producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    convs = {
        node.input[1].removesuffix("_DequantizeLinear_Output"): node
        for node in model.graph.node
        if node.op_type == "Conv"
    }
    for name in ("stem", "stages.0.0", "stages.0.1"):  # quantized: int8 weights through DequantizeLinear
        weight = convs[f"{name}.conv.weight"].input[1]
        assert producers[weight].op_type == "DequantizeLinear"
        assert initializers[producers[weight].input[0]].data_type == onnx.TensorProto.INT8
    planted_conv = convs["stages.1.0.conv.weight"]
    assert planted_conv.input[1] == "stages.1.0.conv.weight" and planted_conv.input[1] not in producers
    stored = torch.from_numpy(onnx.numpy_helper.to_array(initializers[planted_conv.input[1]]).copy())
    assert torch.equal(stored, result.deploy_model.get_submodule("stages.1.0").conv.weight.detach())
    quantize_inputs = {
        name for node in model.graph.node if node.op_type == "QuantizeLinear" for name in node.input
    }
    assert "stages.1.0.conv.weight" not in quantize_inputs
    relu = next(node for node in model.graph.node if planted_conv.output[0] in node.input)
    assert relu.op_type == "Relu" and not {*planted_conv.output, *relu.output} & quantize_inputs
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert all(
        producers.get(name) is None or producers[name].op_type != "DequantizeLinear" for name in gemm.input
    )

    result.save(tmp_path / "out", export=False)
    stored_report = json.loads((tmp_path / "out" / "report.json").read_text())["report"]["int8"]
    assert stored_report["float_layers"] == ["stages.1.0"] and len(stored_report["trials"]) == 2
    served = load_for_serving(tmp_path / "out", options, "cpu", (1,))
    x = inputs(16, seed=7)
    expected = onnx_runner("onnxruntime", result.onnx_int8, "int8")(x)
    assert torch.equal(served.logits(x), expected)
    with torch.no_grad():
        fp32 = result.deploy_model(x)
    assert float((expected - fp32).norm() / fp32.norm()) < every.logits_rel_error / 5


def test_auto_keeps_the_fewest_worst_layers_that_pass() -> None:
    auto = INT8.model_copy(update={"int8_float_layers": "auto"})
    planted_net = convert(TINY, planted(), calibration=inputs(), serving=auto).report.int8
    assert planted_net is not None and planted_net.passed and planted_net.float_layers_option == "auto"
    assert [trial.float_layers for trial in planted_net.trials] == [[], ["stages.1.0"]]
    assert planted_net.float_layers == ["stages.1.0"]
    normal = convert(TINY, state_of(TINY, 2), calibration=inputs(), serving=auto).report.int8
    assert normal is not None and normal.passed and normal.float_layers == [] and len(normal.trials) == 1


def test_float_nodes_are_the_layer_up_to_the_next_conv() -> None:
    onnx_model = convert(TINY, state_of(TINY, 2), validate=False, onnx=True).onnx
    assert onnx_model is not None
    nodes = {node.name: node.op_type for node in onnx.load_model_from_string(onnx_model).graph.node}
    assert [nodes[n] for n in float_nodes(onnx_model, ["stages.0.1"])] == ["Conv", "Relu"]
    assert [nodes[n] for n in float_nodes(onnx_model, ["stages.1.0"])] == [
        "Conv",
        "Relu",
        "ReduceMean",
        "Gemm",
    ]
    assert len(float_nodes(onnx_model, ["stem", "stages.0.0"])) == 4
    with pytest.raises(ConversionError, match=r"no Conv node of layer stages\.9\.9"):
        float_nodes(onnx_model, ["stages.9.9"])


@pytest.mark.parametrize(
    "value", [-1, 9, "all", True, 1.5, None, [], ["stem", "stem"], ["stages.x"], [1], ["stem"] * 9]
)
def test_int8_float_layers_is_bounded(value: object) -> None:
    message = r"serving.int8_float_layers: an integer 0-8 .*, \"auto\", or a list of 1-8 distinct layer names"
    with pytest.raises(SpecError, match=message):
        parse_serving({"runtime": "onnxruntime", "precision": "int8", "int8_float_layers": value})


def test_int8_float_layers_needs_int8_and_a_layer_left_to_quantize() -> None:
    with pytest.raises(SpecError, match=r"int8_float_layers 2 .* needs precision int8"):
        parse_serving({"runtime": "onnxruntime", "int8_float_layers": 2})
    assert (
        parse_serving(
            {"runtime": "onnxruntime", "precision": "int8", "int8_float_layers": 8}
        ).int8_float_layers
        == 8
    )
    steps: list[str] = []
    with pytest.raises(SpecError, match="this net has 4 fused layers, so at most 3 can stay float32"):
        convert(
            TINY,
            state_of(TINY),
            calibration=inputs(),
            serving=INT8.model_copy(update={"int8_float_layers": 4}),
            progress=steps.append,
        )
    assert "quantization" not in steps  # refused before the report's forward passes
    with pytest.raises(
        SpecError, match=r"this net has no layer stages\.2\.0; its fused layers: stem, stages\.0\.0"
    ):
        convert(
            TINY,
            state_of(TINY),
            calibration=inputs(),
            serving=INT8.model_copy(update={"int8_float_layers": ["stages.1.0", "stages.2.0"]}),
        )


def test_named_layers_kept_float() -> None:
    named = INT8.model_copy(update={"int8_float_layers": ["stages.0.0", "stages.1.0"]})
    int8 = convert(TINY, planted(), calibration=inputs(), serving=named).report.int8
    assert int8 is not None and int8.passed and int8.float_layers == ["stages.0.0", "stages.1.0"]
    assert [trial.float_layers for trial in int8.trials] == [[], ["stages.0.0", "stages.1.0"]]
    assert not int8.trials[0].passed
    other = INT8.model_copy(update={"int8_float_layers": ["stages.0.0"]})
    with pytest.raises(
        EquivalenceError, match=r"with stages\.0\.0 kept float32 \(int8_float_layers \['stages\.0\.0'\]"
    ):
        convert(TINY, planted(), calibration=inputs(), serving=other)


def test_cli_names_the_layers_kept_float(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, calibration = tmp_path / "planted.pt", tmp_path / "calibration.safetensors"
    torch.save(planted(), checkpoint)
    save_file({"inputs": inputs()}, str(calibration))
    serving = json.dumps({"runtime": "onnxruntime", "precision": "int8", "int8_float_layers": "auto"})
    args = ["convert", "--checkpoint", str(checkpoint), "--spec", json.dumps(TINY), "--no-export"]
    code = main(
        [*args, "--out", str(tmp_path / "out"), "--calibration", str(calibration), "--serving", serving]
    )
    assert code == 0
    assert re.search(
        r"with stages\.1\.0 kept float32 \(every layer int8: 0\.\d{3}\)", capsys.readouterr().out
    )
    int8 = json.loads((tmp_path / "out" / "report.json").read_text())["report"]["int8"]
    assert int8["float_layers"] == ["stages.1.0"] and int8["float_layers_option"] == "auto"
