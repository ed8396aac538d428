"""The device a run uses (CUDA or CPU, precision, seeding) and the ranks of a
`torch.distributed` run."""
