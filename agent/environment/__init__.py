"""The training process's environment: heap, AMP loss scale, DDP gradients."""
