"""Sound search: nearest-neighbour indexes, queries and a local web page."""
