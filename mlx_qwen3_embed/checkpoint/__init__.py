"""Model folders: a folder or hub id resolved once, its config, kind and tensors read from there."""
