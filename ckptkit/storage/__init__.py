"""Layer 1, bytes on disk: CRC-32, atomic writes, manifests, tensor bytes, pickle reading and writing."""
