"""The HTTP service: POST /convert -> versioned registry -> TorchServe -> /predict, with metrics."""
