"""Incidents: the record and its transitions, evidence, notifications and their delivery, storage,
people's commands."""
