"""The OpenAPI 3.1 document of the JSON API, served at /openapi.json.

Each handler declares its operations beside it (`declare.documented`); the builder
(`document.py`) walks the app's routes and adds what the edge can answer any call
(`edge.py`), so the document cannot drift from the routes it describes.
"""
