"""The Comity node: API, web, services, storage, delivery and CLI."""
