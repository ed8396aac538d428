"""Data: sources and datasets, their splits, the device-resident fast path and the
DataLoader path, sharding across ranks, the image cache."""
