"""The TorchServe handler shipped inside every .mar this service builds."""
