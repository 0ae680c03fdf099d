"""ad-event-processor: high-throughput ad event ingestion over gRPC."""

__version__ = "0.1.0"
