"""Version of the conversion rules; part of every converted-weights cache key.

Bump it whenever a change to `converters` changes the weights a conversion
produces, so that caches built by older code are not reused.
"""

CONVERTER_VERSION = "3"  # 2: cache entries are Keras weights files; 3: safetensors keyed by variable path
