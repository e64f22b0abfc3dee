"""`converters.verification`, the documented path of the comparison with timm: `convnext_hub.convert.verification`."""

from convnext_hub.convert.verification import *  # noqa: F401,F403
