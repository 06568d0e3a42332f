"""The client side: the Python client, inspection, audit views, the CLI and its terminal views."""
