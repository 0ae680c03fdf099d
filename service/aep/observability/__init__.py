"""What the service tells about itself: metrics, traces, HTTP endpoints, health, logs."""
