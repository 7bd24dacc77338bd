"""The seed's first example: add two numbers."""


def add(int_a, int_b):
    """Return int_a + int_b."""
    return int_a + int_b
