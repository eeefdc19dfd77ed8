"""Development tooling: the local Kafka broker and Redis, the demo, drills and synthetic traffic."""
