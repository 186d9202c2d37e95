"""Ingest: transport messages -> decode -> batch -> one transaction -> acknowledge."""

from fieldhub.ingest.metrics import IngestMetrics
from fieldhub.ingest.pipeline import Ingest, IngestOutcome

__all__ = ["Ingest", "IngestMetrics", "IngestOutcome"]
