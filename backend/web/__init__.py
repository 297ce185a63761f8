"""The HTTP face: the Flask app (``app.create_app``), its request checks and the routes as blueprints."""
