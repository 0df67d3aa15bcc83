"""Gatehouse HTTP tier: Starlette app, auth replica pool and balancing."""

SERVICE_NAME = "gatehouse-http"
