"""A few more functions to try against the demo tenant."""

import datetime


def greet(name="world"):
    """Say hello, and print something to the call's logs."""
    print(f"greeting {name}")
    return f"hello, {name}"


def word_count(text):
    """Count words: returns a dict of word -> count."""
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def today():
    """Today's date, as an ISO-8601 string."""
    return datetime.date.today()
