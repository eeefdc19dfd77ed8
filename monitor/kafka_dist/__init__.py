"""Templates for the local Apache Kafka broker: the Maven pom that fetches its jars and its config files."""
