"""The engines the city stack runs as child processes: nats-server (a cluster) and postgres."""
