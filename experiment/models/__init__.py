"""Models: the project's own `nn.Module`s (`nets`) and timm backbones (`pretrained`), each
built by `_target_` like a user's own model."""
