"""HTTP routes; each module is thin and calls one domain object."""
