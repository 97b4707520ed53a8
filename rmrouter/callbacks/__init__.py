"""Lightning callbacks: the glue between training runs and the artifacts and reports they leave."""

from rmrouter.callbacks.offline_report import OfflineRouterReport
from rmrouter.callbacks.prior_writer import RouterPriorWriter

__all__ = ["OfflineRouterReport", "RouterPriorWriter"]
