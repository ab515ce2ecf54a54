"""The .mar handler, unit-tested with a fake TorchServe context (no Java needed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from reparam_core.arch import build_train_model
from reparam_core.conversion import convert
from reparam_core.deploy import ONNX, ONNX_INT8, SERVING_FILE, WEIGHTS, PixelNormaliser, ServingOptions
from reparam_core.deploy import SPEC as SPEC_FILE
from reparam_core.deploy.runtimes import onnx_runner
from service.backends.archive import MANIFEST, build_model_dir
from service.torchserve_handler.handler import ReparamHandler
from service.torchserve_handler.wire import pack, unpack
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import randomize_


class FakeContext:
    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}


def test_batched_requests_get_their_own_rows_in_order(tmp_path: Path) -> None:
    result = convert(SPEC, randomize_(build_train_model(SPEC)).state_dict())
    result.save(tmp_path / "model", export=False)
    handler = ReparamHandler()
    handler.initialize(FakeContext(tmp_path / "model"))
    first, second = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    requests = [{"body": pack(first)}, {"data": bytearray(pack(second))}]
    outputs = handler.postprocess(handler.inference(handler.preprocess(requests)))
    assert len(outputs) == 2
    with torch.no_grad():
        expected = torch.softmax(result.deploy_model(torch.cat([first, second])), dim=1)
    got = torch.cat([unpack(o) for o in outputs])
    assert [unpack(o).shape[0] for o in outputs] == [2, 3]
    assert torch.allclose(got, expected, atol=1e-6)


def test_serving_json_in_the_archive_is_applied(tmp_path: Path) -> None:
    result = convert(SPEC, randomize_(build_train_model(SPEC)).state_dict())
    result.save(tmp_path / "model", export=False)
    (tmp_path / "model" / SERVING_FILE).write_text('{"precision": "bf16", "channels_last": true}')
    handler = ReparamHandler()
    handler.initialize(FakeContext(tmp_path / "model"))
    assert handler.served.options == ServingOptions(precision="bf16", channels_last=True)
    weight = next(p for p in handler.served.eager.parameters() if p.ndim == 4)
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous(memory_format=torch.channels_last)
    outputs = handler.postprocess(
        handler.inference(handler.preprocess([{"body": pack(torch.randn(2, 3, 32, 32))}]))
    )
    assert unpack(outputs[0]).dtype == torch.float32 and unpack(outputs[0]).shape == (2, 4)


def test_pixels_floats_and_other_sizes_in_one_batch(tmp_path: Path) -> None:
    result = convert(SPEC, randomize_(build_train_model(SPEC)).state_dict())
    result.save(tmp_path / "model", export=False)
    handler = ReparamHandler()
    handler.initialize(FakeContext(tmp_path / "model"))
    pixels = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8)
    floats, larger = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 40, 36)
    requests = [{"body": pack(t)} for t in (pixels, floats, larger)]
    outputs = [unpack(o) for o in handler.postprocess(handler.inference(handler.preprocess(requests)))]
    assert [o.shape for o in outputs] == [(1, 4), (2, 4), (1, 4)]
    normalised = PixelNormaliser(SPEC["preprocess"], 3)(pixels)
    with torch.no_grad():
        for got, x in zip(outputs, (normalised, floats, larger), strict=True):
            assert torch.allclose(got, torch.softmax(result.deploy_model(x), dim=1), atol=1e-6)


def test_an_onnx_runtime_archive_serves_model_onnx_without_the_pytorch_weights(tmp_path: Path) -> None:
    """What the model folder of an onnxruntime version holds (model.onnx, spec, options; no safetensors)
    is all the worker needs, and it answers like the deploy net."""
    result = convert(SPEC, randomize_(build_train_model(SPEC)).state_dict(), onnx=True)
    result.save(tmp_path / "model", export=False)
    (tmp_path / "model" / WEIGHTS).unlink()
    (tmp_path / "model" / SERVING_FILE).write_text('{"runtime": "onnxruntime"}')
    handler = ReparamHandler()
    handler.initialize(FakeContext(tmp_path / "model"))
    assert handler.served.options.runtime == "onnxruntime" and handler.served.eager is None
    first, second = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 40, 36)
    outputs = handler.postprocess(
        handler.inference(handler.preprocess([{"body": pack(first)}, {"body": pack(second)}]))
    )
    with torch.no_grad():
        for got, x in zip(outputs, (first, second), strict=True):
            assert torch.allclose(unpack(got), torch.softmax(result.deploy_model(x), dim=1), atol=1e-6)


def test_the_model_folder_carries_the_net_its_runtime_serves(tmp_path: Path) -> None:
    """TorchServe's no-archive format: the net hard-linked from the artifacts (no copy, no zip), the
    manifest naming it, rebuilt whole over an earlier folder; the handler loads from it."""
    result = convert(SPEC, randomize_(build_train_model(SPEC)).state_dict(), onnx=True)
    result.save(tmp_path / "model", export=False)
    store = tmp_path / "store"
    for runtime, net, absent in (("torch", WEIGHTS, ONNX), ("openvino", ONNX, WEIGHTS)):
        serving = ServingOptions(runtime=runtime)  # type: ignore[arg-type]
        folder = build_model_dir("tiny", 1, tmp_path / "model", serving, store)
        assert folder == store / "tiny-v1" and sorted(p.name for p in store.iterdir()) == ["tiny-v1"]
        names = {p.name for p in folder.iterdir()}
        assert names == {net, SPEC_FILE, SERVING_FILE, "handler.py", "MAR-INF"} and absent not in names
        assert (folder / net).stat().st_ino == (tmp_path / "model" / net).stat().st_ino
        manifest = json.loads((folder / MANIFEST).read_text())["model"]
        assert manifest == {
            "modelName": "tiny-v1",
            "modelVersion": "1",
            "handler": "handler.py",
            "serializedFile": net,
        }
        assert ServingOptions.model_validate_json((folder / SERVING_FILE).read_text()) == serving
        handler = ReparamHandler()
        handler.initialize(FakeContext(folder))
        assert handler.served.options.runtime == runtime


def test_an_int8_model_folder_carries_and_serves_model_int8_onnx(tmp_path: Path) -> None:
    """Precision int8: the folder holds model.int8.onnx alone (no model.onnx, no weights) and the
    worker answers with what ONNX Runtime computes from it."""
    calibration = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    serving = ServingOptions(runtime="onnxruntime", precision="int8", int8_min_agreement=0.0)
    state = randomize_(build_train_model(SPEC)).state_dict()
    result = convert(SPEC, state, serving=serving, calibration=calibration)
    result.save(tmp_path / "model", export=False)
    folder = build_model_dir("tiny", 1, tmp_path / "model", serving, tmp_path / "store")
    names = {p.name for p in folder.iterdir()}
    assert names == {ONNX_INT8, SPEC_FILE, SERVING_FILE, "handler.py", "MAR-INF"}
    assert json.loads((folder / MANIFEST).read_text())["model"]["serializedFile"] == ONNX_INT8
    handler = ReparamHandler()
    handler.initialize(FakeContext(folder))
    x = torch.randn(2, 3, 32, 32)
    (output,) = handler.postprocess(handler.inference(handler.preprocess([{"body": pack(x)}])))
    expected = torch.softmax(onnx_runner("onnxruntime", result.onnx_int8 or b"", "int8")(x), dim=1)
    assert torch.allclose(unpack(output), expected, atol=1e-6)
