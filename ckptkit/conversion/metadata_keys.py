"""The keys ckptkit puts in a safetensors file's `__metadata__`, written by the conversion plan
and read back by `restore` (every value a JSON string, as the format requires strings;
"format": "pt" is the Hugging Face convention loaders check)."""
from __future__ import annotations

META_SOURCE_FORMAT = "ckptkit.source_format"   # "torch-zip", "torch-legacy", "safetensors"
META_PROGRESS = "ckptkit.progress"             # Progress.to_json() of the source
META_CONFIG = "ckptkit.config"                 # the source's config section, as JSON
META_METRICS = "ckptkit.metrics"               # the source's scalar metrics {name: value}
META_ALIASES = "ckptkit.aliases"               # {tied name: name written}: same storage, same span
META_DTYPE = "ckptkit.dtype"                   # the dtype floating tensors were cast to, if any
META_LAYOUT = "ckptkit.layout"                 # {"family", "model", "config"}: the source's dict layout
