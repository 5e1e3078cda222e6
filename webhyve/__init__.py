"""webhyve's front ends over the engine's public API: the vmmctl CLI now, the Flask app later."""
