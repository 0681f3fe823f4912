"""Sample files for the extraction tests and the demo (see ``make_samples``)."""
