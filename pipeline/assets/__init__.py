"""The pipeline's assets, one module per concern, each with its checks."""
