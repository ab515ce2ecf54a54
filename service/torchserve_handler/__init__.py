"""The TorchServe handler shipped in every model folder this service registers."""
