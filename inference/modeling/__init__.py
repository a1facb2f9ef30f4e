"""One scoring definition per family, imported by both training and inference."""
