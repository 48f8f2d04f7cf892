"""Antenna: the SSF 1.0 transmitter that turns every agent decision into a Security Event Token
and revokes sessions (CAEP) when an anomaly rule trips."""

from __future__ import annotations

from iia.antenna.anomaly import AnomalyDetector, AnomalyRules
from iia.antenna.app import antenna_app
from iia.antenna.event_types import AGENT, CAEP, SUPPORTED, VERIFICATION
from iia.antenna.management import MANAGE_SCOPE, OAuthManagement
from iia.antenna.transmitter import POLL, PUSH, Antenna, StreamError

__all__ = [
           "AGENT",
           "CAEP",
           "MANAGE_SCOPE",
           "POLL",
           "PUSH",
           "SUPPORTED",
           "VERIFICATION",
           "AnomalyDetector",
           "AnomalyRules",
           "Antenna",
           "OAuthManagement",
           "StreamError",
           "antenna_app",
]
