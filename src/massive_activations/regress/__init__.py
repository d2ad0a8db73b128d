"""From architecture to emergence: features, regressors, validation, prediction."""
