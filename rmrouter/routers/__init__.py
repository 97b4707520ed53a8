"""Routers: what picks the RM that labels each pair (the offline prior, and the online routers that consume it)."""

from rmrouter.routers.prior import FORMAT_VERSION, RouterPrior, RouterPriorError

__all__ = ["FORMAT_VERSION", "RouterPrior", "RouterPriorError"]
