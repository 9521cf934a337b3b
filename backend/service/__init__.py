"""The HTTP service: the Flask app factory (the composition root) and the model class behind the routes."""
