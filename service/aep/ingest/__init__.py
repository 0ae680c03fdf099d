"""The gRPC face: server, AdEventService servicer, responses, reflection, security."""
