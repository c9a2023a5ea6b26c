"""The web layer: the app factory, request parsing, error handlers and the blueprints that translate HTTP into calls."""
