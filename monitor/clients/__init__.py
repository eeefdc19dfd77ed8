"""Libraries for the services around the models, importable without the daemon: the gateway client,
the prediction reporter and the API client."""
