"""The emergence function fitted per model and layer, and forecasts from it."""
