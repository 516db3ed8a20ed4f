"""A module that cannot be imported (it imports a module that does not exist)."""

import does_not_exist_pronghorn_test  # noqa: F401

app = None
